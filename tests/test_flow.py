"""Flow control in the core (issue 9): max_queue, write_limit, send_timeout, send_async.

The in-memory engine never pushes back, so what the core holds back is visible: messages the
core has not taken stay in the peer's pipe.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import polysocket
from polysocket import SendTimeoutError
from polysocket.dispatch import MESSAGE_OVERHEAD
from polysocket.runtime import background
from polysocket.testing import MemoryEngine, MemoryPeer, install

URI = "ws://memory.test/"


class GatedEngine(MemoryEngine):
    """A memory engine whose client transport sends nothing until ``gate`` is set: a peer
    that does not read."""

    def __init__(self, peer: Any) -> None:
        super().__init__(peer)
        self.gate = asyncio.Event()

    async def connect(self, uri: str, options: Any) -> Any:
        transport = await super().connect(uri, options)
        send, gate = transport.send, self.gate

        async def gated_send(message: Any) -> None:
            await gate.wait()
            await send(message)

        transport.send = gated_send
        return transport

    def open_gate(self) -> None:
        background.loop.call_soon_threadsafe(self.gate.set)


def pushing(messages: list[Any], ends: list[MemoryPeer], pushed: threading.Event) -> Any:
    async def peer(end: MemoryPeer) -> None:
        ends.append(end)
        for message in messages:
            await end.send(message)
        pushed.set()
        async for _ in end:
            pass

    return peer


def held_back(recorder: Any, release: threading.Event) -> Any:
    """A handler like ``recorder`` whose onMessage waits for ``release`` first."""

    class Slow(type(recorder)):  # type: ignore[misc]
        def onMessage(self, message: Any) -> None:
            release.wait(10)
            super().onMessage(message)

    return Slow()


@pytest.mark.parametrize(
    ("size", "count", "max_queue"),
    [(65536, 100, 256 * 1024), (0, 20000, 64 * 1024)],
    ids=["64KiB-messages", "empty-messages"],
)
def test_a_slow_handler_stops_the_reader_at_max_queue_bytes(recorder, size, count, max_queue):
    """The core stops taking messages from the engine once max_queue bytes wait for the
    handler (each message counted with its overhead, so empty ones are bounded too); what it
    holds back is delivered, in order, once the handler catches up."""
    release = threading.Event()
    messages = [bytes([i % 256]) * size for i in range(count)]
    ends: list[MemoryPeer] = []
    pushed = threading.Event()

    slow = held_back(recorder, release)
    with install(MemoryEngine(pushing(messages, ends, pushed))):
        client = polysocket.createWebsocket(URI, slow, engine="memory", max_queue=max_queue)
        assert pushed.wait(10)
        time.sleep(0.3)  # the reader would have taken more by now, if it were going to
        held_by_core = client.backlog
        left_in_pipe = ends[0]._out.queue.qsize()
        release.set()
        got = slow.wait_messages(count)
        client.close()
    each = size + MESSAGE_OVERHEAD
    assert held_by_core <= max_queue + each, f"{held_by_core} bytes queued for the handler"
    assert left_in_pipe >= count - (max_queue // each + 2), f"the core read {count - left_in_pipe}"
    assert got == messages
    assert client.backlog == 0


def test_messages_arriving_while_closing_stay_bounded_by_max_queue(recorder):
    """After close() the reader no longer waits for the handler (it must reach the peer's
    close frame), so a peer that keeps pushing must not grow the backlog past max_queue: what
    arrives beyond it while closing is dropped."""
    release = threading.Event()
    count, size, max_queue = 400, 65536, 256 * 1024
    messages = [bytes([i % 256]) * size for i in range(count)]
    ends: list[MemoryPeer] = []
    pushed = threading.Event()

    slow = held_back(recorder, release)
    with install(MemoryEngine(pushing(messages, ends, pushed))):
        client = polysocket.createWebsocket(URI, slow, engine="memory", max_queue=max_queue)
        assert pushed.wait(10)
        closer = threading.Thread(target=client.close)
        closer.start()
        time.sleep(0.5)  # the reader, released by close(), takes what the peer pushed
        held_while_closing = client.backlog
        left_in_pipe = ends[0]._out.queue.qsize()
        release.set()
        closer.join(10)
    assert left_in_pipe < count // 2, "the reader did not go on reading after close()"
    each = size + MESSAGE_OVERHEAD
    assert held_while_closing <= max_queue + each, f"{held_while_closing} bytes queued"


def test_send_off_the_loop_times_out_and_the_connection_stays_open(recorder):
    sink: list[Any] = []

    async def peer(end: MemoryPeer) -> None:
        async for message in end:
            sink.append(message)

    engine = GatedEngine(peer)
    with install(engine):
        client = polysocket.createWebsocket(
            URI, recorder, engine="memory", write_limit=1000, send_timeout=0.4
        )
        client.send("a" * 600)  # the writer takes it and waits in the engine's send()
        client.send("b" * 400)  # 1000 queued: at the limit, not over it
        assert client.buffered_amount == 1000
        start = time.monotonic()
        with pytest.raises(SendTimeoutError) as info:
            client.send("c")
        waited = time.monotonic() - start
        assert 0.3 <= waited < 3, waited
        assert info.value.queued == 1000 and info.value.write_limit == 1000
        assert isinstance(info.value, TimeoutError)
        assert "send_timeout=0.4" in str(info.value) and "reads too slowly" in str(info.value)
        assert not client.closed
        engine.open_gate()
        client.send("d")
        client.close()
    assert sink == ["a" * 600, "b" * 400, "d"]
    assert client.close_code == 1000


def test_a_message_over_write_limit_goes_alone(recorder):
    sink: list[Any] = []

    async def peer(end: MemoryPeer) -> None:
        async for message in end:
            sink.append(message)

    with install(MemoryEngine(peer)):
        client = polysocket.createWebsocket(URI, recorder, engine="memory", write_limit=10)
        client.send(b"x" * 1000)  # an empty queue takes any message max_size allows
        client.close()
    assert sink == [b"x" * 1000]


def test_on_the_loop_send_raises_at_once_and_send_async_awaits_room(recorder):
    sink: list[Any] = []
    seen: dict[str, Any] = {}
    done = threading.Event()

    async def peer(end: MemoryPeer) -> None:
        await end.send("go")
        async for message in end:
            sink.append(message)

    class AsyncHandler:
        async def onMessage(self, message: Any) -> None:
            ws = polysocket.getSession()
            ws.send("x" * 1000)
            start = time.monotonic()
            try:
                ws.send("y")
            except SendTimeoutError as exc:
                seen["error"], seen["raised_after"] = str(exc), time.monotonic() - start
            gate_opener.start()
            start = time.monotonic()
            await ws.send_async("z")
            seen["awaited"] = time.monotonic() - start
            done.set()

    engine = GatedEngine(peer)
    gate_opener = threading.Timer(0.3, engine.open_gate)
    with install(engine):
        client = polysocket.createWebsocket(
            URI, AsyncHandler(), engine="memory", write_limit=1000, send_timeout=5
        )
        assert done.wait(10), seen
        client.close()
    assert seen["raised_after"] < 0.1
    assert "send_async" in seen["error"] and "write_limit=1000" in seen["error"]
    assert 0.2 <= seen["awaited"] < 4
    assert sink == ["x" * 1000, "z"]


def test_send_async_from_another_event_loop_and_after_close(recorder):
    sink: list[Any] = []

    async def peer(end: MemoryPeer) -> None:
        async for message in end:
            sink.append(message)

    with install(MemoryEngine(peer)):
        client = polysocket.createWebsocket(URI, recorder, engine="memory")
        asyncio.run(client.send_async("from my loop"))
        client.close()
        with pytest.raises(polysocket.ConnectionClosedError):
            asyncio.run(client.send_async("too late"))
    assert sink == ["from my loop"]


@pytest.mark.parametrize(
    "options",
    [{"max_queue": 0}, {"write_limit": "1"}, {"send_timeout": None}, {"send_timeout": -1}],
)
def test_flow_options_are_checked(options):
    with install(MemoryEngine()), pytest.raises(TypeError, match=next(iter(options))):
        polysocket.createWebsocket(URI, object(), engine="memory", **options)


def test_close_aborts_after_close_timeout_when_the_close_frame_cannot_get_out(recorder):
    """close() queues the close frame after what was sent; a peer that reads nothing keeps
    it from going out, so close_timeout later the connection is dropped (1006)."""
    engine = GatedEngine(pushing([], [], threading.Event()))
    with install(engine):
        client = polysocket.createWebsocket(URI, recorder, engine="memory", close_timeout=0.5)
        client.send("never delivered")
        start = time.monotonic()
        client.close()
        assert client.wait_closed(5), "the connection never ended"
        assert time.monotonic() - start < 3
    assert client.close_code == 1006
