"""SPEC 1 (``connect``): the asyncio API on the caller's own loop, on every engine."""

from __future__ import annotations

import os

import pytest

import polysocket
from polysocket_conformance.peer_processes import Peer
from polysocket_conformance.support import ClosedPort, require_capability, run_async


def test_send_and_recv_text_and_binary(engine: str, peer: Peer) -> None:
    async def main() -> polysocket.AsyncConnection:
        async with polysocket.connect(peer.uri, engine=engine) as ws:
            assert ws.close_code is None
            await ws.send("hello")
            assert await ws.recv() == "hello"
            payload = os.urandom(1000)
            await ws.send(payload)
            got = await ws.recv()
            assert type(got) is bytes and got == payload
            await ws.send(bytearray(b"array"))
            assert await ws.recv() == b"array"
            await ws.send(memoryview(b"view"))
            assert await ws.recv() == b"view"
            with pytest.raises(TypeError):
                await ws.send(123)  # type: ignore[arg-type]  # the wrong type, on purpose
            await ws.send("after a TypeError")
            assert await ws.recv() == "after a TypeError"
        assert ws.close_code == 1000
        return ws

    run_async(main())
    seen = peer.last_close()
    assert (seen["code"], seen["reason"]) == (1000, "")


def test_await_connect_and_close_with_code(engine: str, peer: Peer) -> None:
    async def main() -> None:
        ws = await polysocket.connect(peer.uri, engine=engine)
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(4001, "done")
        await ws.close()  # idempotent
        assert (ws.close_code, ws.close_reason) == (4001, "done")
        with pytest.raises(polysocket.ConnectionClosedError):
            await ws.send("late")

    run_async(main())
    seen = peer.last_close()
    assert (seen["code"], seen["reason"]) == (4001, "done")


def test_async_for_ends_quietly_on_normal_close(engine: str, peer: Peer) -> None:
    async def main() -> None:
        got = []
        async with polysocket.connect(peer.uri, engine=engine) as ws:
            for text in ("a", "b", "cmd:close:1000:normal"):
                await ws.send(text)
            async for message in ws:
                got.append(message)
            assert got == ["a", "b"]
            assert (ws.close_code, ws.close_reason) == (1000, "normal")
            with pytest.raises(polysocket.ConnectionClosedError):
                await ws.recv()

    run_async(main())


def test_async_for_raises_on_application_close(engine: str, peer: Peer) -> None:
    async def main() -> None:
        async with polysocket.connect(peer.uri, engine=engine) as ws:
            await ws.send("first")
            await ws.send("cmd:close:4000:x")
            got = []
            with pytest.raises(polysocket.ConnectionClosedError) as caught:
                async for message in ws:
                    got.append(message)
            assert got == ["first"]
            assert (caught.value.code, caught.value.reason) == (4000, "x")
            assert (ws.close_code, ws.close_reason) == (4000, "x")

    run_async(main())


def test_burst_in_order(engine: str, peer: Peer) -> None:
    async def main() -> None:
        async with polysocket.connect(peer.uri, engine=engine) as ws:
            await ws.send("cmd:burst:5000")
            got = [await ws.recv() for _ in range(5000)]
            assert got == [str(i) for i in range(5000)]

    run_async(main())


def test_max_size(engine: str, peer: Peer) -> None:
    async def main() -> None:
        async with polysocket.connect(peer.uri, engine=engine, max_size=1024) as ws:
            await ws.send("cmd:big:4096")
            with pytest.raises(polysocket.ConnectionClosedError) as caught:
                await ws.recv()
            assert caught.value.code == 1009
            assert ws.close_code == 1009

    run_async(main())


def test_connection_lost(engine: str, peer: Peer) -> None:
    async def main() -> None:
        async with polysocket.connect(peer.uri, engine=engine) as ws:
            await ws.send("cmd:kill")
            with pytest.raises(polysocket.ConnectionClosedError) as caught:
                async for _ in ws:
                    pass
            assert caught.value.code == 1006
            assert ws.close_code == 1006

    run_async(main())


def test_connect_failures(engine: str, peer: Peer) -> None:
    refused = ClosedPort()

    async def main() -> None:
        with pytest.raises(polysocket.ConnectError):
            await polysocket.connect(refused.uri, engine=engine, open_timeout=5)
        with pytest.raises(polysocket.ConnectError) as caught:
            async with polysocket.connect(peer.url("/reject"), engine=engine):
                pass
        assert caught.value.status == 404

    try:
        run_async(main())
    finally:
        refused.close()


def test_subprotocol(engine: str, peer: Peer) -> None:
    require_capability(engine, "subprotocols")

    async def main() -> None:
        async with polysocket.connect(peer.uri, engine=engine, subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"
            await ws.send("cmd:subprotocol")
            assert await ws.recv() == "chat"

    run_async(main())


def test_headers(engine: str, peer: Peer) -> None:
    require_capability(engine, "headers")

    async def main() -> None:
        import json

        async with polysocket.connect(
            peer.uri, engine=engine, headers={"X-Polysocket-Test": "1"}
        ) as ws:
            await ws.send("cmd:headers")
            headers = json.loads(await ws.recv())
            assert headers.get("x-polysocket-test") == "1", headers

    run_async(main())
