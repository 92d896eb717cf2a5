from __future__ import annotations

import threading
from typing import Any

import pytest

import polysocket
from polysocket.client import clients
from polysocket.testing import MemoryEngine, MemoryPeer, install


class Recorder:
    """A handler that records each callback with what the context functions said."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.opened = threading.Event()
        self.closed = threading.Event()
        self.errors: list[str] = []
        self.messages: list[Any] = []
        self.threads: set[str] = set()
        self.got_message = threading.Condition()

    def onOpen(self) -> None:
        self.calls.append(("onopen", polysocket.getMethod()))
        self.threads.add(threading.current_thread().name)
        self.opened.set()

    def onMessage(self, message: Any) -> None:
        self.calls.append(("onmessage", message))
        with self.got_message:
            self.messages.append(message)
            self.got_message.notify_all()

    def onError(self, error: str) -> None:
        self.calls.append(("onerror", error))
        self.errors.append(error)

    def onClose(self) -> None:
        self.calls.append(("onclose", (polysocket.getCloseCode(), polysocket.getCloseReason())))
        self.closed.set()

    def wait_messages(self, count: int, timeout: float = 10.0) -> list[Any]:
        with self.got_message:
            assert self.got_message.wait_for(lambda: len(self.messages) >= count, timeout), (
                f"got {len(self.messages)} of {count} messages"
            )
            return list(self.messages)

    @property
    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]


async def echo_peer(end: MemoryPeer) -> None:
    async for message in end:
        if message == "close-4000":
            await end.close(4000, "bye")
            return
        if message == "drop":
            end.abort()
            return
        await end.send(message)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def memory() -> Any:
    engine = MemoryEngine(echo_peer)
    with install(engine):
        yield engine


@pytest.fixture(autouse=True)
def no_leftover_clients() -> Any:
    yield
    leftovers = clients.all()
    for client in leftovers:
        client.close()
    assert not leftovers, f"test left clients open: {leftovers}"
