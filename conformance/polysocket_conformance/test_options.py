"""Option parity (issue 4): TLS, subprotocols, compression and keepalive, on every engine
that declares the capability, against peers that are not polysocket."""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import polysocket

from .peer_processes import Peer
from .rawframes import LatePongs, RawClient, RawServer, close_frame
from .server_support import ServerThread, events
from .support import (
    WAIT,
    Recorder,
    TlsContexts,
    client_engine,
    require_capability,
    run_async,
    tls_contexts,
)


@pytest.fixture(scope="module")
def tls() -> TlsContexts:
    return tls_contexts("127.0.0.1", "localhost")


class RawWebsocketsServer:
    """The ``websockets`` library's own echo server, on a thread, with any server options."""

    def __init__(self, **options: Any) -> None:
        from websockets.asyncio.server import serve

        self.requests: list[Any] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def echo(ws: Any) -> None:
            self.requests.append(ws.request)
            async for message in ws:
                await ws.send(message)

        async def start() -> Any:
            return await serve(echo, "127.0.0.1", 0, max_size=None, **options)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(WAIT)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(WAIT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)


@pytest.fixture
def raw_server_with() -> Iterator[Callable[..., RawWebsocketsServer]]:
    started: list[RawWebsocketsServer] = []

    def start(**options: Any) -> RawWebsocketsServer:
        started.append(RawWebsocketsServer(**options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def echo_once(uri: str, engine: str, message: Any = "hello", **options: Any) -> Any:
    recorder = Recorder()
    client = polysocket.createWebsocket(uri, recorder, engine, **options)
    try:
        client.send(message)
        return recorder.wait_messages(1)[0]
    finally:
        client.close()


# -- TLS ----------------------------------------------------------------------------------


def test_wss_client_with_a_private_ca(
    engine: str, tls: TlsContexts, raw_server_with: Callable[..., RawWebsocketsServer]
) -> None:
    require_capability(engine, "tls")
    server_context, client_context = tls
    # 127.0.0.1, not localhost: the servers listen on IPv4 only, and "localhost" may first
    # reach whatever else listens on [::1] at that port
    peer = raw_server_with(ssl=server_context)
    uri = f"wss://127.0.0.1:{peer.port}/"
    assert echo_once(uri, engine, "over TLS", ssl=client_context) == "over TLS"
    with pytest.raises(polysocket.ConnectError):
        polysocket.createWebsocket(uri, Recorder(), engine)  # the CA is not trusted by default
    assert polysocket.getClients() == []


def test_wss_server_with_a_private_ca(
    engine: str, tls: TlsContexts, serve_registry: Callable[..., ServerThread]
) -> None:
    require_capability(engine, "tls")
    server_context, client_context = tls
    server = serve_registry(ssl=server_context)
    uri = f"wss://127.0.0.1:{server.port}/websockets/v4/service/echo"

    async def raw_client_echo() -> Any:
        # websockets' asyncio client: its threading one (14.x-16.x) stalls in about one TLS
        # handshake in 25, against any server.
        from websockets.asyncio.client import connect

        async with connect(uri, ssl=client_context) as ws:
            await ws.send("raw client over TLS")
            return await ws.recv()

    assert run_async(raw_client_echo(), WAIT) == "raw client over TLS"
    assert echo_once(uri, client_engine(engine), "polysocket over TLS", ssl=client_context) == (
        "polysocket over TLS"
    )


def test_wss_server_fails_a_broken_frame_promptly(
    engine: str, tls: TlsContexts, serve_registry: Callable[..., ServerThread]
) -> None:
    """Over TLS (no half-close), failing the connection still ends it within close_timeout."""
    require_capability(engine, "tls")
    server_context, client_context = tls
    server = serve_registry(ssl=server_context, close_timeout=2)
    started = time.monotonic()
    with RawClient(server.port, "/websockets/v4/service/echo", ssl=client_context) as client:
        client.send(close_frame(5000))
        answer, _, _ = client.until_close()
    assert answer == 1002
    assert events.wait("onclose", "echo").close_code == 1002
    assert time.monotonic() - started < 2, "the failed connection lingered"


# -- subprotocols -------------------------------------------------------------------------


def test_server_selects_a_subprotocol_it_supports(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    require_capability(engine, "subprotocols")
    server = serve_registry(subprotocols=["chat", "superchat"])
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    uri = f"ws://127.0.0.1:{server.port}/websockets/v4/service/echo"
    with connect(uri, subprotocols=[Subprotocol("other"), Subprotocol("superchat")]) as ws:
        assert ws.subprotocol == "superchat"

    async def polysocket_client() -> str | None:
        async with polysocket.connect(
            uri, engine=client_engine(engine), subprotocols=["chat"]
        ) as ws:
            return ws.subprotocol

    assert asyncio.run(polysocket_client()) == "chat"


# -- compression --------------------------------------------------------------------------


def test_deflate_client_negotiates_and_round_trips(
    engine: str, raw_server_with: Callable[..., RawWebsocketsServer]
) -> None:
    require_capability(engine, "deflate")
    peer = raw_server_with(compression="deflate")
    big = "compressible " * 80_000
    uri = f"ws://127.0.0.1:{peer.port}/"
    assert echo_once(uri, engine, big, compression="deflate") == big
    offered = peer.requests[-1].headers.get("Sec-WebSocket-Extensions", "")
    assert "permessage-deflate" in offered
    assert echo_once(uri, engine, "plain") == "plain"
    assert "Sec-WebSocket-Extensions" not in peer.requests[-1].headers, (
        "compression is off by default, on every engine"
    )


def test_deflate_server_accepts_only_when_enabled(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    require_capability(engine, "deflate")
    from websockets.sync.client import connect

    for compression in ("deflate", None):
        server = serve_registry(compression=compression)
        uri = f"ws://127.0.0.1:{server.port}/websockets/v4/service/echo"
        with connect(uri, compression="deflate") as ws:
            assert ws.response is not None  # set once the handshake is complete
            accepted = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            big = os.urandom(8).hex() + "z" * 500_000
            ws.send(big)
            assert ws.recv(timeout=WAIT) == big
        assert ("permessage-deflate" in accepted) is (compression == "deflate"), accepted


# -- keepalive ----------------------------------------------------------------------------


def test_keepalive_detects_a_peer_that_stopped_answering(engine: str) -> None:
    require_capability(engine, "keepalive")
    silent = RawServer(answer_close=False)
    try:
        recorder = Recorder()
        polysocket.createWebsocket(
            silent.uri, recorder, engine, ping_interval=0.2, ping_timeout=0.3
        )
        assert recorder.wait_closed(timeout=5), "no onClose although no pong ever came"
        assert recorder.of("onclose")[0].close_code == 1011
        assert any("keepalive" in error for error in recorder.errors), recorder.errors
    finally:
        silent.close()


def test_keepalive_keeps_a_live_connection_open(engine: str, peer: Peer) -> None:
    require_capability(engine, "keepalive")
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine, ping_interval=0.1)
    try:
        assert not recorder.wait_closed(timeout=1.0), "keepalive closed a healthy connection"
        client.send("still here")
        assert recorder.wait_messages(1) == ["still here"]
    finally:
        client.close()


def test_server_keepalive_drops_a_silent_client(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=0.2, ping_timeout=0.3)
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as raw:
        raw.sendall(
            (
                "GET /websockets/v4/service/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 101")
        # never read again, never answer a ping
        closed = events.wait("onclose", "echo", timeout=5)
    assert closed.close_code == 1011
    assert "keepalive" in events.wait("onerror", "echo").payload


#: How late the peer answers each ping, with pings every PING_INTERVAL seconds: longer
#: than aiohttp's own pong wait (half the interval) and tornado's (at most the interval).
PONG_DELAY = 0.5
PING_INTERVAL = 0.2
LATE_PONGS = pytest.mark.parametrize(
    ("ping_timeout", "dropped"), [(2, False), (0.2, True)], ids=["waits-long-enough", "too-late"]
)


@LATE_PONGS
def test_keepalive_waits_ping_timeout_for_the_pong(
    engine: str, raw_server: Callable[..., RawServer], ping_timeout: float, dropped: bool
) -> None:
    """ping_timeout is the pong wait, not the library's own: pongs 0.5 s late keep the
    connection over three pings with ping_timeout=2, and lose it (onError, then onClose
    1011) with 0.2."""
    require_capability(engine, "keepalive")
    pongers: queue.Queue[LatePongs] = queue.Queue()

    def conversation(sock: socket.socket, reader: Any) -> None:
        ponger = LatePongs(sock, reader, PONG_DELAY, mask=False)
        pongers.put(ponger)
        ponger.run()

    server = raw_server(conversation=conversation)
    recorder = Recorder()
    client = polysocket.createWebsocket(
        server.uri, recorder, engine, ping_interval=PING_INTERVAL, ping_timeout=ping_timeout
    )
    ponger = pongers.get(timeout=WAIT)
    if dropped:
        assert recorder.wait_closed(), "no onClose although every pong came too late"
        assert ponger.pings >= 1
        assert recorder.names == ["onopen", "onerror", "onclose"]
        assert "keepalive" in recorder.errors[0], recorder.errors
        assert recorder.of("onclose")[0].close_code == 1011
    else:
        assert ponger.wait_pings(3), f"the connection ended after {ponger.pings} ping(s)"
        assert not recorder.closed.is_set(), f"dropped although pongs came: {recorder.errors}"
        client.close()
        assert recorder.names == ["onopen", "onclose"]
        assert recorder.of("onclose")[0].close_code == 1000
    recorder.assert_well_formed()


@LATE_PONGS
def test_server_keepalive_waits_ping_timeout_for_the_pong(
    engine: str, serve_registry: Callable[..., ServerThread], ping_timeout: float, dropped: bool
) -> None:
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=PING_INTERVAL, ping_timeout=ping_timeout)
    with RawClient(server.port, "/websockets/v4/service/echo") as client:
        ponger = LatePongs(client.sock, client.reader, PONG_DELAY, mask=True).start()
        opened = events.wait("onopen", "echo")
        if dropped:
            closed = events.wait("onclose", "echo")
            assert ponger.pings >= 1
            assert events.of(opened.session_id) == ["onopen", "onerror", "onclose"]
            assert "keepalive" in events.wait("onerror", "echo").payload
            assert closed.close_code == 1011
        else:
            assert ponger.wait_pings(3), f"the connection ended after {ponger.pings} ping(s)"
            assert events.of(opened.session_id) == ["onopen"], "dropped although pongs came"
            ponger.close(1000)
            assert ponger.ended.wait(WAIT)
            assert ponger.close_code == 1000
            client.close()
            assert events.wait("onclose", "echo").close_code == 1000
