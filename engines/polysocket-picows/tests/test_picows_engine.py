"""What is particular to the picows engine: its HTTP front, the handover to picows, and the
receive queue's flow control. These talk to ``PicowsEngine`` directly, its client transports
wrapped in the core's ``ManagedTransport`` as the core does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import socketserver
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import polysocket
import pytest
from polysocket.managed import ManagedTransport
from polysocket.transport import (
    Accept,
    ClientOptions,
    HttpRequest,
    HttpResponse,
    ServerOptions,
    Transport,
    TransportClosed,
)
from polysocket_conformance.peer_processes import Peer
from polysocket_conformance.support import WAIT, Recorder

from polysocket_picows import PicowsEngine
from polysocket_picows._transport import QUEUE_HIGH, PicowsTransport

T = TypeVar("T")


class EchoApp:
    """A ServerApp that records what it routes and echoes on every accepted session."""

    def __init__(self) -> None:
        self.routed: list[HttpRequest] = []

    def route(self, request: HttpRequest) -> HttpResponse | Accept:
        self.routed.append(request)
        if request.path == "/ws" and request.upgrade:
            chosen = next((p for p in request.subprotocols if p == "chat"), None)
            return Accept(chosen)
        return HttpResponse(418, b"short and stout\n", headers={"X-Seen": request.method})

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        try:
            while True:
                await transport.send(await transport.receive())
        except TransportClosed:
            pass


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    return data


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def connect(uri: str, options: ClientOptions) -> ManagedTransport:
    return ManagedTransport(await PicowsEngine().connect(uri, options), options.close_timeout)


def test_every_request_reaches_the_core_whatever_its_method() -> None:
    async def main() -> None:
        app = EchoApp()
        server = await PicowsEngine().serve("127.0.0.1", 0, app, ServerOptions())
        try:
            post = await raw_exchange(
                server.port,
                b"POST /form?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            )
            assert post.startswith(b"HTTP/1.1 418 I'm a Teapot\r\n"), post
            assert b"X-Seen: POST\r\n" in post and post.endswith(b"short and stout\n")
            head = await raw_exchange(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 418") and head.endswith(b"\r\n\r\n"), head
            assert b"Content-Length: 16\r\n" in head
            old = await raw_exchange(server.port, b"GET /page HTTP/1.0\r\n\r\n")
            assert old.startswith(b"HTTP/1.1 418"), old
            assert [(r.method, r.path, r.query) for r in app.routed] == [
                ("POST", "/form", "a=1"),
                ("HEAD", "/", ""),
                ("GET", "/page", ""),
            ]
        finally:
            await server.close()

    run(main())


def test_handshake_with_a_subprotocol() -> None:
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    async def main() -> None:
        app = EchoApp()
        server = await PicowsEngine().serve("127.0.0.1", 0, app, ServerOptions())
        try:
            uri = f"ws://127.0.0.1:{server.port}/ws"
            async with connect(uri, subprotocols=[Subprotocol("other"), Subprotocol("chat")]) as ws:
                assert ws.subprotocol == "chat"
                await ws.send("hello")
                assert await ws.recv() == "hello"
            assert app.routed[0].subprotocols == ("other", "chat")
            address = app.routed[0].remote_address
            assert address is not None and address[0] == "127.0.0.1"
        finally:
            await server.close()

    run(main())


def test_connection_header_is_a_token_list() -> None:
    """Firefox sends ``Connection: keep-alive, Upgrade``; picows alone wants ``Upgrade``."""

    async def main() -> None:
        server = await PicowsEngine().serve("127.0.0.1", 0, EchoApp(), ServerOptions())
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                (
                    "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
                    f"Upgrade: websocket\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            status = await asyncio.wait_for(reader.readline(), WAIT)
            assert status.startswith(b"HTTP/1.1 101"), status
            writer.close()
        finally:
            await server.close()

    run(main())


def test_a_request_that_never_ends_is_refused() -> None:
    async def main() -> None:
        server = await PicowsEngine().serve("127.0.0.1", 0, EchoApp(), ServerOptions())
        try:
            answer = await raw_exchange(
                server.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
            answer = await raw_exchange(server.port, b"\x16\x03\x01garbage\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        finally:
            await server.close()

    run(main())


def test_server_close_drops_a_client_that_never_finishes_its_request() -> None:
    async def main() -> None:
        server = await PicowsEngine().serve("127.0.0.1", 0, EchoApp(), ServerOptions())
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET / HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        await asyncio.wait_for(server.close(), 5)
        sock.settimeout(WAIT)
        assert await asyncio.to_thread(sock.recv, 100) == b""
        sock.close()

    run(main())


# -- receive queue ------------------------------------------------------------------------


def test_unread_messages_stop_reading_and_keep_their_order(peer: Peer) -> None:
    async def main() -> None:
        transport = await connect(peer.uri, ClientOptions())
        # PicowsEngine.connect declares the Transport protocol; what it returns is its own
        # PicowsTransport, whose queue and flow control this test looks into
        raw = cast(PicowsTransport, transport.raw)
        try:
            await transport.send("cmd:burst:20000")
            await asyncio.sleep(0.5)  # nobody reads
            assert raw._reading_paused, "the socket was read on although nobody reads"
            # frames already read into picows' buffer are still delivered: a few more
            assert raw._queue is not None and QUEUE_HIGH <= len(raw._queue) < 4 * QUEUE_HIGH
            got = [await transport.receive() for _ in range(20000)]
            assert got == [str(i) for i in range(20000)]
            assert not raw._reading_paused
        finally:
            await transport.close()

    run(main())


def test_close_keeps_delivering_to_a_pending_receive(peer: Peer) -> None:
    async def main() -> None:
        transport = await connect(peer.uri, ClientOptions())
        await transport.send("cmd:burst:500")
        pending = asyncio.ensure_future(transport.receive())
        await asyncio.sleep(0)
        await transport.close(4001, "enough")
        got: list[Any] = []
        with pytest.raises(TransportClosed) as caught:
            got.append(await pending)
            while True:
                got.append(await transport.receive())
        # whatever of the burst came before the peer's answer to our close frame, in order
        # (the websockets peer answers after the burst, the Node.js one at once)
        assert got == [str(i) for i in range(len(got))]
        assert (caught.value.code, caught.value.reason) == (4001, "enough")
        with pytest.raises(TransportClosed):
            await transport.receive()  # and keeps raising
        await transport.close()  # idempotent

    run(main())


def test_close_with_nobody_reading_discards_and_finishes(peer: Peer) -> None:
    async def main() -> None:
        transport = await connect(peer.uri, ClientOptions(close_timeout=5))
        await transport.send("cmd:burst:20000")
        await asyncio.sleep(0.3)  # the queue fills up, reading stops
        loop = asyncio.get_running_loop()
        started = loop.time()
        await transport.close(4002, "bye")
        assert loop.time() - started < 3, "close() waited for the unread burst"
        with pytest.raises(TransportClosed) as caught:
            await transport.receive()
        assert caught.value.code == 4002

    run(main())


# -- refused handshakes -------------------------------------------------------------------


class Refuser(socketserver.ThreadingTCPServer):
    """Answers every connection with one fixed HTTP response."""

    daemon_threads = True

    def __init__(self, response: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.response = response
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Answer(socketserver.BaseRequestHandler):
    server: Refuser  # typeshed declares the BaseServer; _Answer serves only a Refuser

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.request.recv(65536)
            self.request.sendall(self.server.response)


@pytest.mark.polysocket_conformance
@pytest.mark.parametrize(
    ("status_line", "status"),
    [
        (b"HTTP/1.1 403 Forbidden", 403),
        (b"HTTP/1.1 499 Client Closed Request", 499),  # not in http.HTTPStatus
    ],
    ids=["403", "unknown-status"],
)
def test_refused_handshake_reports_its_status(engine: str, status_line: bytes, status: int) -> None:
    refuser = Refuser(status_line + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        with pytest.raises(polysocket.ConnectError) as caught:
            polysocket.createWebsocket(f"ws://127.0.0.1:{refuser.port}/", Recorder(), engine)
        assert caught.value.status == status
        assert str(status) in str(caught.value)
    finally:
        refuser.close()


def test_redirect_is_followed(peer: Peer) -> None:
    """picows follows a 3xx to a ws:// Location, as websockets does. Not in polysocket's
    contract: aiohttp follows only http(s):// Locations, tornado none."""
    refuser = Refuser(
        b"HTTP/1.1 302 Found\r\nLocation: " + peer.uri.encode() + b"\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    recorder = Recorder()
    try:
        client = polysocket.createWebsocket(
            f"ws://127.0.0.1:{refuser.port}/moved", recorder, "picows"
        )
        try:
            client.send("followed")
            assert recorder.wait_messages(1) == ["followed"]
        finally:
            client.close()
        assert recorder.wait_closed()
    finally:
        refuser.close()
