"""ManagedTransport: the duties the core takes off every engine (polysocket.managed)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import polysocket
from polysocket import managed
from polysocket.managed import ManagedTransport, close_bound
from polysocket.runtime import background
from polysocket.testing import MemoryEngine, install
from polysocket.transport import Message, TransportClosed


class Raw:
    """A raw transport the test drives: ``feed()`` what ``receive()`` returns or raises.

    ``answer``: ``close()`` queues the peer's answer (its close frame) after what was fed.
    ``deaf_to_abort``: ``abort()`` does not end a pending ``receive()`` (an engine bug).
    """

    subprotocol = "chat"

    def __init__(self, *, answer: bool = True, deaf_to_abort: bool = False) -> None:
        self.inbox: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self.answer = answer
        self.deaf_to_abort = deaf_to_abort
        self.sent: list[Message] = []
        self.closes: list[tuple[int, str]] = []
        self.aborts = 0
        self.receives = 0
        self.receiving = 0
        self.most_receiving = 0
        self.ended = False
        self.close_error: BaseException | None = None

    def feed(self, *items: Message | BaseException) -> None:
        for item in items:
            self.inbox.put_nowait(item)

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def receive(self) -> Message:
        assert not self.ended, "receive() called again after it raised TransportClosed"
        self.receives += 1
        self.receiving += 1
        self.most_receiving = max(self.most_receiving, self.receiving)
        try:
            item = await self.inbox.get()
        finally:
            self.receiving -= 1
        if isinstance(item, TransportClosed):
            self.ended = True
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self, code: int, reason: str) -> None:
        assert not self.ended, "close() called after receive() raised"
        self.closes.append((code, reason))
        if self.close_error is not None:
            raise self.close_error
        if self.answer:
            self.feed(TransportClosed(code, reason))

    def abort(self) -> None:
        self.aborts += 1
        if not self.deaf_to_abort:
            self.feed(TransportClosed(None))


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario, 10)

    return asyncio.run(bounded())


def test_the_end_is_sticky_for_receive_and_send():
    async def scenario():
        raw = Raw()
        transport = ManagedTransport(raw, close_timeout=5)
        assert (transport.raw, transport.subprotocol) == (raw, "chat")
        raw.feed("one", TransportClosed(4000, "bye"))
        assert await transport.receive() == "one"
        with pytest.raises(TransportClosed) as first:
            await transport.receive()
        with pytest.raises(TransportClosed) as again:
            await transport.receive()
        with pytest.raises(TransportClosed) as on_send:
            await transport.send("late")
        assert first.value is again.value is on_send.value
        assert (first.value.code, first.value.reason) == (4000, "bye")
        await transport.close()  # ended already: no close frame
        assert (raw.receives, raw.sent, raw.closes, raw.aborts) == (2, [], [], 0)
        transport.abort()  # always passed on: dropping TCP is harmless at any time
        assert raw.aborts == 1

    run(scenario())


def test_send_after_close_raises_at_once():
    async def scenario():
        raw = Raw()
        transport = ManagedTransport(raw, close_timeout=5)
        await transport.send("before")
        await transport.close(4001, "done")
        with pytest.raises(TransportClosed) as closed:
            await transport.send("after")
        assert closed.value.code == 4001  # the peer's answer
        assert raw.sent == ["before"]

    run(scenario())


def test_close_is_one_handshake_however_many_tasks_call_it():
    async def scenario():
        raw = Raw()
        transport = ManagedTransport(raw, close_timeout=5)
        await asyncio.gather(transport.close(4001, "first"), transport.close(4002, "second"))
        await transport.close()
        assert raw.closes == [(4001, "first")]
        with pytest.raises(TransportClosed) as closed:
            await transport.receive()
        assert closed.value.code == 4001

    run(scenario())


def test_a_cancelled_close_still_completes_the_handshake():
    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=5)
        first = asyncio.ensure_future(transport.close())
        await asyncio.sleep(0)
        first.cancel()
        raw.feed("late", TransportClosed(1000, ""))
        await transport.close()  # the same handshake, not a second one
        assert raw.closes == [(1000, "")]
        assert first.cancelled()

    run(scenario())


def test_close_drains_what_arrives_when_nobody_reads():
    async def scenario():
        raw = Raw()
        transport = ManagedTransport(raw, close_timeout=5)
        raw.feed("a", b"b")  # queued before the answer
        await transport.close()
        assert raw.receives == 3 and raw.aborts == 0  # a, b, then the close frame
        with pytest.raises(TransportClosed) as closed:
            await transport.receive()
        assert closed.value.code == 1000

    run(scenario())


def test_messages_after_our_close_frame_reach_a_reader_that_keeps_reading():
    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=5)
        got = []

        async def reader():
            try:
                while True:
                    got.append(await transport.receive())
            except TransportClosed as closed:
                return closed.code

        reading = asyncio.ensure_future(reader())
        await asyncio.sleep(0)  # the reader is waiting in receive()
        closing = asyncio.ensure_future(transport.close(4000, "bye"))
        await asyncio.sleep(0)
        raw.feed("late 1", "late 2", TransportClosed(4000, "bye"))
        assert await reading == 4000
        await closing
        assert got == ["late 1", "late 2"]
        assert raw.most_receiving == 1  # close() never read beside the reader

    run(scenario())


def test_close_takes_over_reading_when_the_reader_stops():
    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=5)
        first = asyncio.ensure_future(transport.receive())
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(transport.close())
        await asyncio.sleep(0)
        raw.feed("taken by the reader", "discarded", TransportClosed(1000, ""))
        assert await first == "taken by the reader"
        await closing  # nobody reads any more: close() drains the rest itself
        assert raw.receives == 3 and raw.most_receiving == 1

    run(scenario())


def test_a_reader_arriving_while_close_drains_gets_the_end():
    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=5)
        closing = asyncio.ensure_future(transport.close(4000, ""))
        await asyncio.sleep(0)  # close() is draining
        late_reader = asyncio.ensure_future(transport.receive())
        await asyncio.sleep(0)
        raw.feed("discarded", TransportClosed(4000, ""))
        with pytest.raises(TransportClosed) as closed:
            await late_reader
        assert closed.value.code == 4000
        await closing
        assert raw.most_receiving == 1

    run(scenario())


def test_close_aborts_after_close_timeout_when_the_peer_never_answers():
    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=0.05)
        started = time.monotonic()
        await transport.close()
        assert time.monotonic() - started < close_bound(0.05)
        assert (raw.closes, raw.aborts) == ([(1000, "")], 1)
        with pytest.raises(TransportClosed) as closed:
            await transport.receive()
        assert closed.value.code is None  # lost: no close frame came back

    run(scenario())


def test_close_aborts_when_the_engine_fails_to_send_the_close_frame(caplog):
    caplog.set_level(logging.INFO, "polysocket.transport")

    async def scenario():
        raw = Raw()
        raw.close_error = RuntimeError("socket exploded")
        transport = ManagedTransport(raw, close_timeout=5)
        await transport.close()
        assert raw.aborts == 1
        with pytest.raises(TransportClosed) as closed:
            await transport.receive()
        assert closed.value.code is None

    run(scenario())
    assert "closing handshake failed (socket exploded); aborting" in caplog.text


def test_a_close_frame_that_cannot_be_sent_lets_receive_say_how_it_ended():
    async def scenario():
        raw = Raw(answer=False)
        raw.close_error = TransportClosed(None)
        transport = ManagedTransport(raw, close_timeout=5)
        raw.feed(TransportClosed(1001, "going"))  # the peer had closed first
        await transport.close()
        assert raw.aborts == 0
        with pytest.raises(TransportClosed) as closed:
            await transport.receive()
        assert (closed.value.code, closed.value.reason) == (1001, "going")

    run(scenario())


def test_an_engine_whose_receive_fails_while_draining_is_aborted(caplog):
    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=5)
        raw.feed(RuntimeError("engine bug"))
        await transport.close()
        assert raw.aborts == 1
        with pytest.raises(TransportClosed) as closed:
            await transport.receive()
        assert closed.value.code is None and isinstance(closed.value.error, RuntimeError)

    run(scenario())
    assert "engine receive() failed" in caplog.text


def test_read_forever_delivers_in_order_and_keeps_the_messages_while_paused():
    """The core's reader: a paused reader still counts as reading, so close() leaves what
    arrives after our close frame to it instead of discarding it."""

    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=5)
        delivered = []
        resume = asyncio.get_running_loop().create_future()

        def deliver(message):
            delivered.append(message)
            return resume if message == "pause" else None

        raw.feed("a", "pause")
        reading = asyncio.ensure_future(transport.read_forever(deliver))
        while delivered != ["a", "pause"]:
            await asyncio.sleep(0)
        closing = asyncio.ensure_future(transport.close(4000, "bye"))
        raw.feed("late", TransportClosed(4000, "bye"))
        await asyncio.sleep(0)
        resume.set_result(None)
        with pytest.raises(TransportClosed) as closed:
            await reading
        await closing
        assert delivered == ["a", "pause", "late"] and closed.value.code == 4000
        assert raw.most_receiving == 1
        with pytest.raises(TransportClosed) as again:  # the end is sticky here too
            await transport.read_forever(deliver)
        assert again.value is closed.value

    run(scenario())


def test_cancelling_read_forever_is_a_cancellation():
    async def scenario():
        raw = Raw()
        transport = ManagedTransport(raw, close_timeout=5)
        reading = asyncio.ensure_future(transport.read_forever(lambda message: None))
        await asyncio.sleep(0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert transport.ended is None

    run(scenario())


@pytest.fixture
def short_grace(monkeypatch):
    monkeypatch.setattr(managed, "ABORT_GRACE", 0.05)


def test_an_aborted_connection_counts_as_ended_after_the_grace(short_grace, caplog):
    """An engine whose receive() never ends after abort(): close() returns all the same."""

    async def scenario():
        raw = Raw(answer=False, deaf_to_abort=True)
        transport = ManagedTransport(raw, close_timeout=0.05)
        await transport.close()
        assert raw.aborts == 1
        for operation in (transport.receive(), transport.send("x")):
            with pytest.raises(TransportClosed) as closed:
                await operation
            assert closed.value.code is None

    run(scenario())
    assert "engine did not end an aborted connection" in caplog.text


def test_a_reader_stuck_in_an_aborted_receive_gets_the_end_after_the_grace(short_grace):
    async def scenario():
        raw = Raw(answer=False, deaf_to_abort=True)
        transport = ManagedTransport(raw, close_timeout=0.05)
        reader = asyncio.ensure_future(transport.receive())
        await asyncio.sleep(0)
        await transport.close()
        with pytest.raises(TransportClosed) as closed:
            await reader
        assert closed.value.code is None

    run(scenario())


def test_a_reader_waiting_on_the_drain_gets_the_end_after_the_grace(short_grace):
    async def scenario():
        raw = Raw(answer=False, deaf_to_abort=True)
        transport = ManagedTransport(raw, close_timeout=0.05)
        closing = asyncio.ensure_future(transport.close())
        await asyncio.sleep(0)  # close() is draining
        reader = asyncio.ensure_future(transport.receive())
        await closing
        with pytest.raises(TransportClosed) as closed:
            await reader
        assert closed.value.code is None

    run(scenario())


def test_cancelling_a_reader_is_still_a_cancellation(short_grace):
    async def scenario():
        raw = Raw(answer=False)
        transport = ManagedTransport(raw, close_timeout=5)
        reader = asyncio.ensure_future(transport.receive())
        await asyncio.sleep(0)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        raw.feed("next")
        assert await transport.receive() == "next"

    run(scenario())


def test_close_bound_is_close_timeout_plus_the_grace():
    assert close_bound(2.0) == 2.0 + managed.ABORT_GRACE


def test_a_client_on_an_engine_that_ignores_abort_still_gets_on_close(short_grace, recorder):
    """The core's reader is always in receive(): released after the grace, it ends the
    connection, so onClose runs (1006: no close frame came back)."""
    released = asyncio.Event()

    class IgnoresAbort(MemoryEngine):
        async def connect(self, uri, options):
            transport = await super().connect(uri, options)
            transport.abort = lambda: None  # the engine bug under test
            return transport

    async def never_answers(end):
        await released.wait()

    with install(IgnoresAbort(never_answers)):
        client = polysocket.createWebsocket(
            "ws://test/", recorder, engine="memory", close_timeout=0.05
        )
        client.close()
        assert client.wait_closed(5)
        background.loop.call_soon_threadsafe(released.set)
    assert recorder.calls[-1] == ("onclose", (1006, ""))


@pytest.mark.parametrize("reader", ["receive", "read_forever"])
def test_an_engine_whose_receive_fails_costs_only_its_connection(reader, caplog):
    async def scenario():
        raw = Raw()
        transport = ManagedTransport(raw, close_timeout=5)
        raw.feed("first", RuntimeError("engine bug"))
        got: list[Message] = []
        with pytest.raises(TransportClosed) as closed:
            if reader == "receive":
                while True:
                    got.append(await transport.receive())
            else:
                await transport.read_forever(got.append)
        assert got == ["first"]
        assert closed.value.code is None and isinstance(closed.value.error, RuntimeError)
        assert raw.aborts == 1
        with pytest.raises(TransportClosed):  # the end is sticky
            await transport.receive()

    run(scenario())
    assert "engine receive() failed" in caplog.text
