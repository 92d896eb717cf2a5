"""The asyncio API (polysocket.connect), against the in-memory engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import polysocket
from polysocket import ConnectError, ConnectionClosedError, UnsupportedOptionError
from polysocket.testing import MemoryEngine, MemoryPeer, install
from polysocket.transport import MessageTooBigError, TransportClosed

URI = "ws://memory.test/"


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario, 10)

    return asyncio.run(bounded())


def connect(**options: Any) -> polysocket.connect:
    return polysocket.connect(URI, engine="memory", **options)


async def collect(ws: polysocket.AsyncConnection) -> list[Any]:
    return [message async for message in ws]


def closes_with(code: int, reason: str = "", then: list[Any] | None = None) -> Any:
    """A peer that sends ``then``, closes with ``code``, and reads up to the answer."""

    async def peer(end: MemoryPeer) -> None:
        for message in then or []:
            await end.send(message)
        await end.close(code, reason)

    return peer


def test_send_and_recv_text_and_binary(memory):
    async def scenario():
        async with connect() as ws:
            assert (ws.uri, ws.engine, ws.subprotocol) == (URI, "memory", None)
            for message in ["text", b"\x00bin", bytearray(b"array"), memoryview(b"view"), ""]:
                await ws.send(message)
            got = [await ws.recv() for _ in range(5)]
            assert got == ["text", b"\x00bin", b"array", b"view", ""]
            assert [type(m) for m in got] == [str, bytes, bytes, bytes, str]
            with pytest.raises(TypeError, match="not int"):
                await ws.send(1)
            with pytest.raises(ValueError, match="cannot be sent"):
                await ws.send("\ud800")
            await ws.send("still open")
            assert await ws.recv() == "still open"
        assert (ws.close_code, ws.close_reason) == (1000, "")

    run(scenario())


def test_await_connect_then_close_with_a_code(memory):
    async def scenario():
        ws = await connect()
        await ws.close(4001, "done")
        assert (ws.close_code, ws.close_reason) == (4001, "done")
        [end] = memory.peers
        assert (end.close_code, end.close_reason) == (4001, "done")  # what the peer got

        async with await connect() as ws:  # an awaited connection is a context manager too
            await ws.send("x")
            assert await ws.recv() == "x"
        assert ws.close_code == 1000 and memory.peers[1].close_code == 1000

    run(scenario())


@pytest.mark.parametrize("code", [1000, 1001])
def test_async_for_ends_quietly_on_a_normal_close(code):
    async def scenario():
        async with connect() as ws:
            assert await collect(ws) == ["a", b"b"]
        return ws

    with install(MemoryEngine(closes_with(code, "over", ["a", b"b"]))):
        ws = run(scenario())
    assert (ws.close_code, ws.close_reason) == (code, "over")


@pytest.mark.parametrize(
    ("peer", "code"),
    [
        (closes_with(4000, "app", ["a"]), 4000),
        (lambda end: _drops(end, ["a"]), 1006),
    ],
    ids=["application-close", "connection-lost"],
)
def test_async_for_raises_on_any_other_end(peer, code):
    async def scenario():
        async with connect() as ws:
            got = []
            with pytest.raises(ConnectionClosedError) as info:
                async for message in ws:
                    got.append(message)
            assert got == ["a"]
            assert info.value.code == ws.close_code == code
            with pytest.raises(ConnectionClosedError) as again:
                await ws.recv()
            assert again.value.code == code
            await ws.close()  # after the end: returns at once, the code stays
            assert ws.close_code == code

    with install(MemoryEngine(peer)):
        run(scenario())


async def _drops(end: MemoryPeer, messages: list[Any]) -> None:
    for message in messages:
        await end.send(message)
    end.abort()


def test_the_peer_closing_first_sets_the_code_and_refuses_send():
    async def scenario():
        async with connect() as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert (info.value.code, info.value.reason) == (4000, "bye")
            with pytest.raises(ConnectionClosedError, match="code 4000") as refused:
                await ws.send("late")
            assert refused.value.code == 4000
        assert (ws.close_code, ws.close_reason) == (4000, "bye")

    with install(MemoryEngine(closes_with(4000, "bye"))):
        run(scenario())


def test_send_after_close_raises_and_close_is_idempotent(memory):
    async def scenario():
        ws = await connect()
        await asyncio.gather(ws.close(4001, "first"), ws.close(4002, "second"))
        await ws.close(4003, "third")
        assert (ws.close_code, ws.close_reason) == (4001, "first")
        with pytest.raises(ConnectionClosedError) as info:
            await ws.send("late")
        assert info.value.code == 4001
        [end] = memory.peers
        assert (end.close_code, end.close_reason) == (4001, "first")  # one close frame

    run(scenario())


def test_close_checks_its_code_and_reason_before_sending_anything(memory):
    async def scenario():
        async with connect() as ws:
            for code in (1005, 1006, 999, 5000):
                with pytest.raises(ValueError, match="close code"):
                    await ws.close(code)
            with pytest.raises(ValueError, match="123 bytes"):
                await ws.close(1000, "é" * 62)
            await ws.send("still open")
            assert await ws.recv() == "still open"

    run(scenario())


def test_messages_after_our_close_frame_are_still_received():
    async def answers_late(end: MemoryPeer) -> None:
        end.answer_close = False
        with pytest.raises(TransportClosed):
            await end.receive()  # our close frame
        await end.send("late 1")
        await end.send(b"late 2")
        await end.close(1000)  # the answer, at last

    async def scenario():
        ws = await connect()
        reading = asyncio.ensure_future(collect(ws))
        await asyncio.sleep(0)  # the reader waits in recv()
        await ws.close()
        assert await reading == ["late 1", b"late 2"]
        assert ws.close_code == 1000

    with install(MemoryEngine(answers_late)):
        run(scenario())


def test_close_timeout_bounds_close_when_the_peer_never_answers():
    released = asyncio.Event()

    async def deaf(end: MemoryPeer) -> None:
        await released.wait()

    async def scenario():
        ws = await connect(close_timeout=0.05)
        await ws.close()  # would wait forever without close_timeout
        released.set()
        assert ws.close_code == 1006  # no close frame came back, as the sync API says
        with pytest.raises(ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.code == 1006

    with install(MemoryEngine(deaf)):
        run(scenario())


def test_a_message_over_max_size_ends_the_connection_with_1009():
    async def big(end: MemoryPeer) -> None:
        await end.send(b"x" * 2048)
        async for _ in end:
            pass

    async def scenario():
        async with connect(max_size=1024) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.code == ws.close_code == 1009
            assert isinstance(info.value.__cause__, MessageTooBigError)
            assert "max_size=1024" in ws.close_reason

    with install(MemoryEngine(big)) as engine:
        run(scenario())
    assert engine.peers[0].close_code == 1009


class SendGone(MemoryEngine):
    """Its transport's send() finds the connection gone, whatever the peer does."""

    async def connect(self, uri, options):
        transport = await super().connect(uri, options)

        async def send(message):
            raise TransportClosed(None)

        transport.send = send
        return transport


def test_send_on_a_connection_gone_underneath_raises_with_1006():
    async def silent(end: MemoryPeer) -> None:
        await asyncio.sleep(5)  # no close frame: nothing tells how the connection ended

    async def scenario():
        async with connect(close_timeout=0.05) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await ws.send("x")
            assert info.value.code == ws.close_code == 1006

    with install(SendGone(silent)):
        run(scenario())


def test_send_on_a_connection_gone_underneath_reports_the_peers_close():
    """The reader saw the peer's close frame: send() reports its code, not 1006, as the
    callback API does (the reader, not the writer, knows how a connection ended)."""

    async def scenario():
        async with connect() as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await ws.send("x")
            assert info.value.code == ws.close_code == 1000

    with install(SendGone(closes_with(1000))):
        run(scenario())


def test_headers_reach_the_peer(memory):
    async def scenario():
        async with connect(headers={"X-Token": "t"}, subprotocols=["chat"]):
            pass
        [end] = memory.peers
        assert dict(end.options.headers) == {"X-Token": "t"}
        assert end.options.subprotocols == ("chat",)

    run(scenario())


def test_connect_failures_are_connect_errors():
    class Hangs(MemoryEngine):
        async def connect(self, uri, options):
            await asyncio.Event().wait()

    class Breaks(MemoryEngine):
        async def connect(self, uri, options):
            raise RuntimeError("engine bug")

    async def scenario():
        with install(MemoryEngine(refuse=403)), pytest.raises(ConnectError) as refused:
            await connect()
        assert refused.value.status == 403
        with install(MemoryEngine()), pytest.raises(ConnectError, match="cannot connect"):
            await connect()  # no peer, no server: refused
        with install(Hangs()), pytest.raises(ConnectError, match="open_timeout"):
            await connect(open_timeout=0.05)
        with install(Breaks()), pytest.raises(ConnectError, match="RuntimeError: engine bug"):
            async with connect():
                pass

    run(scenario())


def test_arguments_are_checked_before_connecting(memory):
    with pytest.raises(ConnectError, match="ws://"):
        polysocket.connect("http://memory.test/", engine="memory")
    with pytest.raises(UnsupportedOptionError, match="'tls'"):
        polysocket.connect("wss://memory.test/", engine="memory")
    with pytest.raises(UnsupportedOptionError, match="unknown option"):
        connect(timeout=1)
    assert memory.peers == []


def test_leaving_the_block_with_an_exception_still_closes(memory):
    async def scenario():
        with pytest.raises(KeyError):
            async with connect() as ws:
                raise KeyError("boom")
        assert ws.close_code == 1000
        assert memory.peers[0].close_code == 1000

    run(scenario())
