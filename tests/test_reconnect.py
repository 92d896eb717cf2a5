"""ReconnectPolicy (delays, jitter bounds, attempts), the reconnect= option, and the
reconnecting client's corners on the in-memory engine (the conformance suite's
test_reconnect.py kills real server processes on every engine)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time

import pytest
from websockets import client as websockets_client

import polysocket
from polysocket import ConnectionClosedError, ReconnectPolicy, UnsupportedOptionError
from polysocket.options import client_options, server_options
from polysocket.reconnect import retryable
from polysocket.runtime import background
from polysocket.testing import MemoryEngine, install

URI = "ws://memory.test/"
FAST = ReconnectPolicy(initial_delay=0.02, factor=2.0, max_delay=0.1, jitter=0.02)


# -- the policy -----------------------------------------------------------------------------


def test_defaults_are_websockets_backoff() -> None:
    policy = ReconnectPolicy()
    assert policy.initial_delay == websockets_client.BACKOFF_MIN_DELAY == 3.1
    assert policy.factor == websockets_client.BACKOFF_FACTOR == 1.618
    assert policy.max_delay == websockets_client.BACKOFF_MAX_DELAY == 90.0
    assert policy.jitter == websockets_client.BACKOFF_INITIAL_DELAY == 5.0
    assert policy.max_attempts is None and policy.retry_normal_close is False


def test_delays_grow_by_factor_up_to_max_delay() -> None:
    policy = ReconnectPolicy(initial_delay=1.0, factor=2.0, max_delay=10.0, jitter=0.5)
    assert [policy.base(n) for n in range(1, 8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [policy.delay(n, lambda: 0.0) for n in (1, 2, 5)] == [0.0, 1.0, 8.0]
    assert [policy.delay(n, lambda: 1.0) for n in (1, 2, 5, 6)] == [0.5, 1.5, 8.5, 10.5]
    assert [policy.bound(n) for n in (1, 2, 5, 6)] == [0.5, 1.5, 8.5, 10.5]
    assert policy.longest == 10.5
    with pytest.raises(ValueError, match="from 1"):
        policy.base(0)


def test_jitter_stays_within_its_bounds_and_varies() -> None:
    policy = ReconnectPolicy()
    rand = random.Random(11).random
    for attempt in (1, 2, 3, 10):
        delays = [policy.delay(attempt, rand) for _ in range(500)]
        assert min(delays) >= policy.base(attempt)
        assert max(delays) <= policy.bound(attempt)
        # spread over most of the jitter, at the cap too (attempt 10): no lockstep there
        assert max(delays) - min(delays) > 0.8 * policy.jitter
    assert policy.bound(1) == 5.0  # the first retry: 0-5 s, as websockets' and RFC 6455 7.2.3


def test_a_client_retrying_for_weeks_does_not_overflow() -> None:
    policy = ReconnectPolicy()
    assert policy.base(100_000) == policy.max_delay
    assert policy.delay(100_000) <= policy.longest


def test_max_attempts() -> None:
    assert not any(ReconnectPolicy().gives_up_after(n) for n in (1, 10, 10_000))
    policy = ReconnectPolicy(max_attempts=3)
    assert [policy.gives_up_after(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_normal_closes_and_statuses() -> None:
    policy = ReconnectPolicy()
    assert [policy.retries_close(c) for c in (1000, 1001, 1006, 1011, 4000)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert ReconnectPolicy(retry_normal_close=True).retries_close(1000)
    assert retryable(None) and retryable(503) and not retryable(403) and not retryable(301)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("initial_delay", -1),
        ("max_delay", "5"),
        ("jitter", True),
        ("factor", 0.5),
        ("max_attempts", 0),
        ("max_attempts", 2.5),
        ("retry_normal_close", "yes"),
    ],
)
def test_bad_policies_are_refused(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        ReconnectPolicy(**{field: value})  # type: ignore[arg-type]


def test_the_reconnect_option() -> None:
    engine = MemoryEngine()
    assert client_options(engine, {}).reconnect is None
    assert client_options(engine, {"reconnect": False}).reconnect is None
    assert client_options(engine, {"reconnect": True}).reconnect == ReconnectPolicy()
    assert client_options(engine, {"reconnect": FAST}).reconnect is FAST
    with pytest.raises(TypeError, match=r"reconnect= must be True .*ReconnectPolicy"):
        client_options(engine, {"reconnect": "yes"})
    with pytest.raises(TypeError, match="reconnect="):
        client_options(engine, {"reconnect": 3})
    with pytest.raises(UnsupportedOptionError, match="'reconnect'"):
        server_options(engine, {"reconnect": True})


# -- the client, in memory ------------------------------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.cond = threading.Condition()
        self.active = 0
        self.overlapped = False

    def record(self, name: str, value: object) -> None:
        with self.cond:
            self.active += 1
            self.overlapped |= self.active > 1
            self.calls.append((name, value))
            self.cond.notify_all()
        time.sleep(0.001)  # give an overlap a chance to show
        with self.cond:
            self.active -= 1

    def onOpen(self) -> None:
        self.record("onopen", polysocket.getSession().reconnects)

    def onMessage(self, message: str) -> None:
        self.record("onmessage", message)

    def onError(self, error: str) -> None:
        self.record("onerror", error)

    def onClose(self) -> None:
        self.record("onclose", polysocket.getCloseCode())

    def names(self) -> list[str]:
        with self.cond:
            return [name for name, _ in self.calls]

    def wait(self, predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.names()), timeout)


async def dropping_peer(end) -> None:  # type: ignore[no-untyped-def]
    async for message in end:
        if message == "drop":
            end.abort()
            return
        if message.startswith("close-"):
            await end.close(int(message[6:]), "bye")
            return
        await end.send(message)


@pytest.fixture
def memory():  # type: ignore[no-untyped-def]
    engine = MemoryEngine(dropping_peer)
    with install(engine):
        yield engine


def test_messages_stay_in_order_across_reconnects(memory) -> None:  # type: ignore[no-untyped-def]
    handler = Handler()
    client = polysocket.createWebsocket(URI, handler, engine="memory", reconnect=FAST)
    for round_ in range(3):
        for i in range(20):
            client.send(f"{round_}-{i}")
        client.send("drop")
        assert handler.wait(lambda names, r=round_: names.count("onopen") == r + 2), handler.calls
    client.close()
    assert handler.wait(lambda names: "onclose" in names)
    messages = [value for name, value in handler.calls if name == "onmessage"]
    assert messages == [f"{r}-{i}" for r in range(3) for i in range(20)]
    assert [value for name, value in handler.calls if name == "onopen"] == [0, 1, 2, 3]
    assert handler.names().count("onclose") == 1 and handler.names()[-1] == "onclose"
    assert not handler.overlapped
    assert len(memory.peers) == 4


def test_async_callbacks_stay_in_order_across_reconnects(memory) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[str, object]] = []
    done = threading.Event()

    class AsyncHandler:
        async def onOpen(self) -> None:
            calls.append(("onopen", polysocket.getSession().reconnects))
            await asyncio.sleep(0.01)

        async def onMessage(self, message: str) -> None:
            calls.append(("onmessage", message))

        async def onError(self, error: str) -> None:
            calls.append(("onerror", error))

        async def onClose(self) -> None:
            calls.append(("onclose", polysocket.getCloseCode()))
            done.set()

    client = polysocket.createWebsocket(URI, AsyncHandler(), engine="memory", reconnect=FAST)
    client.send("a")
    client.send("drop")
    deadline = time.monotonic() + 5
    while [c[0] for c in calls].count("onopen") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.send("b")
    deadline = time.monotonic() + 5
    while ("onmessage", "b") not in calls and time.monotonic() < deadline:
        time.sleep(0.01)
    client.close()
    assert done.wait(5)
    assert [c[0] for c in calls] == [
        "onopen",
        "onmessage",
        "onerror",
        "onopen",
        "onmessage",
        "onclose",
    ]
    assert calls[0] == ("onopen", 0) and calls[3] == ("onopen", 1)


def test_send_on_the_loop_while_reconnecting_raises_at_once_send_async_waits(memory) -> None:  # type: ignore[no-untyped-def]
    client = polysocket.createWebsocket(
        URI, Handler(), engine="memory", reconnect=FAST, send_timeout=3
    )
    memory._refuse = 503  # every reconnection attempt is refused until the test allows it
    client.send("drop")
    deadline = time.monotonic() + 5
    while not client.reconnecting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.reconnecting
    assert client.buffered_amount == 0 and not client.closed

    async def on_loop() -> str:
        try:
            client.send("x")
        except ConnectionClosedError as exc:
            return str(exc)
        return "sent"

    said = background.run(on_loop(), "test")
    assert "cannot wait on the event loop" in said and "send_async" in said

    async def from_another_loop() -> float:
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.3, setattr, memory, "_refuse", None)
        await client.send_async("after")
        return time.monotonic() - started

    took = asyncio.run(from_another_loop())
    assert 0.3 <= took < 3, f"send_async waited {took:.2f} s"
    assert not client.reconnecting
    client.close()


def test_a_refusal_that_retrying_will_not_cure_gives_up_at_once(memory) -> None:  # type: ignore[no-untyped-def]
    handler = Handler()
    client = polysocket.createWebsocket(URI, handler, engine="memory", reconnect=FAST)
    memory._refuse = 403
    client.send("drop")
    assert handler.wait(lambda names: "onclose" in names)
    assert handler.names() == ["onopen", "onerror", "onerror", "onclose"]
    gave_up = handler.calls[2][1]
    assert "refused the reconnection" in str(gave_up) and "403" in str(gave_up)
    assert polysocket.getClient(client.id) is None


def test_one_reconnect_task_at_most_and_none_left(memory) -> None:  # type: ignore[no-untyped-def]
    handler = Handler()
    client = polysocket.createWebsocket(URI, handler, engine="memory", reconnect=FAST)
    memory._refuse = 503
    client.send("drop")
    assert handler.wait(lambda names: names.count("onerror") >= 5)

    async def reconnect_tasks() -> int:
        ours = {"ReconnectingClient._reconnect", "open_transport"}
        return sum(
            getattr(task.get_coro(), "__qualname__", "") in ours for task in asyncio.all_tasks()
        )

    counts = [background.run(reconnect_tasks(), "test") for _ in range(20)]
    assert max(counts) <= 2  # the reconnection, and its attempt while one runs
    assert min(counts) >= 1
    client.close()
    assert handler.wait(lambda names: "onclose" in names)
    assert background.run(reconnect_tasks(), "test") == 0
    assert handler.names().count("onclose") == 1


def test_close_from_a_callback_while_reconnecting(memory) -> None:  # type: ignore[no-untyped-def]
    class Closer(Handler):
        def onError(self, error: str) -> None:
            super().onError(error)
            polysocket.getSession().close()  # inside a callback: does not wait for onClose

    handler = Closer()
    client = polysocket.createWebsocket(URI, handler, engine="memory", reconnect=FAST)
    memory._refuse = 503  # else the client may be back before onError runs
    client.send("drop")
    assert handler.wait(lambda names: "onclose" in names)
    time.sleep(0.2)
    names = handler.names()
    # a failed attempt may be reported before the close reaches the loop
    assert names[0] == "onopen" and names[-1] == "onclose", names
    assert set(names[1:-1]) == {"onerror"} and len(names) <= 4, names
    assert client.closed and polysocket.getClients() == []


def test_a_connection_made_as_close_comes_is_closed_not_kept() -> None:
    """close() while an attempt connects: the client ends at once (onClose once), and a
    connection the attempt makes anyway (an engine that ignores the cancellation) is closed
    with a closing handshake, not left open."""
    ends: list[object] = []

    async def peer(end) -> None:  # type: ignore[no-untyped-def]
        ends.append(end)
        await dropping_peer(end)

    class GatedEngine(MemoryEngine):
        gate: asyncio.Event | None = None
        waiting = threading.Event()

        async def connect(self, uri, options):  # type: ignore[no-untyped-def]
            if self.gate is not None:
                self.waiting.set()
                with contextlib.suppress(asyncio.CancelledError):  # connects anyway
                    await self.gate.wait()
            return await super().connect(uri, options)

    engine = GatedEngine(peer)
    with install(engine):
        handler = Handler()
        policy = ReconnectPolicy(initial_delay=0.01, jitter=0.0)  # attempt 1 at once
        client = polysocket.createWebsocket(URI, handler, engine="memory", reconnect=policy)

        async def make_gate() -> None:
            engine.gate = asyncio.Event()

        background.run(make_gate(), "test")
        client.send("drop")
        assert engine.waiting.wait(5), "no attempt reached the engine"
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 1, "close() waited for the attempt"
        assert handler.wait(lambda names: "onclose" in names)
        deadline = time.monotonic() + 5
        while len(ends) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ends) == 2, "the attempt did not connect after all"
        late = ends[1]
        while late.close_code is None and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert late.close_code == 1000  # type: ignore[attr-defined]
        time.sleep(0.1)
        assert handler.names() == ["onopen", "onerror", "onclose"]
        assert polysocket.getClients() == []
