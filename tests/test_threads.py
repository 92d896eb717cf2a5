"""The bounded handler pool: slow callbacks beyond the bound wait their turn, in order."""

from __future__ import annotations

import threading
import time

import pytest

import polysocket
from polysocket import dispatch
from polysocket.threads import DEFAULT_MAX_THREADS, HandlerThreads

URI = "ws://memory.test/"
K = 3


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("polysocket-handler")]


def test_default_bound_is_documented_value():
    assert DEFAULT_MAX_THREADS >= 32
    assert HandlerThreads().max_threads >= 1
    with pytest.raises(ValueError):
        HandlerThreads(max_threads=0)


def test_env_sets_the_bound(monkeypatch):
    monkeypatch.setenv("POLYSOCKET_HANDLER_THREADS", "7")
    assert HandlerThreads().max_threads == 7
    monkeypatch.setenv("POLYSOCKET_HANDLER_THREADS", "nope")
    assert HandlerThreads().max_threads == DEFAULT_MAX_THREADS


def test_pool_runs_at_most_k_at_once_and_queues_the_rest_in_order():
    pool = HandlerThreads(max_threads=K)
    release = threading.Event()
    lock = threading.Lock()
    running = 0
    most = 0
    started: list[int] = []
    done: list[int] = []

    def task(i: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            started.append(i)
        release.wait(10)
        with lock:
            running -= 1
            done.append(i)

    for i in range(K + 3):
        pool.submit(lambda i=i: task(i))
    deadline = time.monotonic() + 5
    while len(started) < K and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # had the pool gone past K, a fourth task would have started by now
    assert sorted(started) == list(range(K)), started
    assert pool.thread_count == K
    release.set()
    deadline = time.monotonic() + 5
    while len(done) < K + 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(done) == list(range(K + 3))
    assert started[K:] == [K, K + 1, K + 2]  # the queued ones in submission order
    assert most == K
    assert pool.thread_count <= K


def test_idle_workers_end_and_the_pool_grows_again():
    pool = HandlerThreads(max_threads=2, idle_seconds=0.05)
    ran = threading.Event()
    pool.submit(ran.set)
    assert ran.wait(5)
    deadline = time.monotonic() + 5
    while pool.thread_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.thread_count == 0
    again = threading.Event()
    pool.submit(again.set)
    assert again.wait(5)


def test_k_plus_3_slow_connections_complete_in_order_with_at_most_k_threads(memory, monkeypatch):
    """K+3 clients whose onMessage sleeps: every message arrives, in order per connection,
    never two callbacks of one connection at once, and never more than K handler threads."""
    pool = HandlerThreads(max_threads=K)
    monkeypatch.setattr(dispatch, "handler_threads", pool)
    before = {t.ident for t in _handler_threads()}
    per_client = 4
    most_threads = 0
    sampling = True

    def sample() -> None:
        nonlocal most_threads
        while sampling:
            ours = [t for t in _handler_threads() if t.ident not in before]
            most_threads = max(most_threads, len(ours), pool.thread_count)
            time.sleep(0.002)

    class Slow:
        def __init__(self) -> None:
            self.got: list[str] = []
            self.active = 0
            self.overlapped = False
            self.lock = threading.Lock()
            self.all_in = threading.Event()

        def onMessage(self, message: str) -> None:
            with self.lock:
                self.active += 1
                self.overlapped |= self.active > 1
            time.sleep(0.02)  # slow: holds its worker
            with self.lock:
                self.active -= 1
                self.got.append(message)
                if len(self.got) == per_client:
                    self.all_in.set()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    handlers = [Slow() for _ in range(K + 3)]
    clients = [polysocket.createWebsocket(URI, h, engine="memory") for h in handlers]
    try:
        for n in range(per_client):
            for i, client in enumerate(clients):
                client.send(f"{i}-{n}")
        for handler in handlers:
            assert handler.all_in.wait(10), handler.got
    finally:
        sampling = False
        sampler.join(5)
        for client in clients:
            client.close()
    for i, handler in enumerate(handlers):
        assert handler.got == [f"{i}-{n}" for n in range(per_client)]
        assert not handler.overlapped
    assert 1 <= most_threads <= K
