"""The aiohttp engine: polysocket's default."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from polysocket import ConnectError, hookimpl
from polysocket.enginekit import CloseCode, answer_headers, http_request, valid_close_code
from polysocket.transport import (
    Accept,
    ClientOptions,
    Engine,
    HttpRequest,
    HttpResponse,
    Message,
    MessageTooBigError,
    ProtocolViolation,
    ServerApp,
    ServerOptions,
    TransportClosed,
)


def _limit(max_size: int | None) -> int:
    # aiohttp refuses a message of exactly max_msg_size bytes; max_size allows it. 0 = none.
    return max_size + 1 if max_size else 0


def _close_after_peer(tcp: Any, ws: Any, timeout: float) -> None:
    """Make aiohttp's way of failing a connection wait for the peer before closing.

    aiohttp fails a connection (a message over max_size, a protocol error) with its close
    frame and then closes the socket at once. A peer still sending then gets a TCP reset,
    and a reset can destroy our close frame before the peer reads it: it sees 1006 instead
    of 1009. So while the peer's close frame has not arrived, closing half-closes the
    socket (the peer reads the close frame, then EOF) and the socket closes at the peer's
    EOF (asyncio does that when the protocol's ``eof_received`` returns None; aiohttp's do)
    or after ``close_timeout``. Incoming data meanwhile is dropped by aiohttp's parser.
    """
    close = tcp.close

    def close_after_peer() -> None:
        # asyncio itself calls close() at the peer's EOF: then it closes at once.
        if ws._closing or tcp.is_closing() or not tcp.can_write_eof() or _at_eof(tcp):
            close()  # the peer has finished (or TLS, which cannot half-close)
            return
        tcp.write_eof()
        asyncio.get_running_loop().call_later(timeout, tcp.abort)

    tcp.close = close_after_peer


def _at_eof(tcp: Any) -> bool:
    """Whether the peer has closed its side and everything it sent has been read."""
    sock = tcp.get_extra_info("socket")
    if sock is None:
        return True
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # nothing to read: the peer's side is still open
    except OSError:
        return True


class AiohttpTransport:
    """aiohttp with ``autoclose=False``: aiohttp's own ``close()`` discards messages that
    arrive between our close frame and the peer's, so ``close()`` only sends the close frame
    and ``receive()`` keeps delivering those messages up to the peer's answer. The same class
    serves both sides: ``drop`` closes the TCP connection, ``release`` frees what the
    connection held."""

    def __init__(
        self,
        ws: Any,
        options: ClientOptions | ServerOptions,
        drop: Callable[[], None],
        release: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._ws = ws
        self._drop = drop
        self._release = release
        self._release_task: asyncio.Future[None] | None = None
        self._max_size = options.max_size
        self._keepalive_timeout = options.keepalive_timeout
        if options.ping_interval is not None:
            # aiohttp waits heartbeat/2 for the pong and has no public setting for it
            ws._pong_heartbeat = options.keepalive_timeout
        self._close_sent = False
        # the client response calls it ``protocol``, the server one ``ws_protocol``
        self.subprotocol: str | None = getattr(ws, "protocol", None) or getattr(
            ws, "ws_protocol", None
        )

    async def send(self, message: Message) -> None:
        try:
            if isinstance(message, str):
                await self._ws.send_str(message)
            else:
                await self._ws.send_bytes(message)
        except (ConnectionError, self._aiohttp.ClientError) as exc:
            raise TransportClosed(None) from exc

    async def receive(self) -> Message:
        msg = await self._ws.receive()
        kind = msg.type
        WSMsgType = self._aiohttp.WSMsgType
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            return msg.data
        ended = await self._ending(msg)
        await self._released()
        raise ended

    async def _ending(self, msg: Any) -> TransportClosed:
        WSMsgType = self._aiohttp.WSMsgType
        if msg.type is WSMsgType.CLOSE:
            code = msg.data  # 0: a close frame without a code
            # aiohttp lets 1006 and codes from 5000 up through (its check covers < 3000 only,
            # and counts 1006 as allowed).
            violation = None
            if code and not valid_close_code(code):
                violation = ProtocolViolation(
                    CloseCode.PROTOCOL_ERROR, f"the peer sent the invalid close code {code}"
                )
            if self._close_sent:  # the peer answered our close frame
                self._drop()
            else:  # the peer started the closing handshake: answer it
                await self._ws.close(code=CloseCode.PROTOCOL_ERROR if violation else code or 1000)
            if violation is not None:
                return TransportClosed(CloseCode.PROTOCOL_ERROR, error=violation)
            return TransportClosed(code or 1005, msg.extra or "")
        if msg.type is WSMsgType.ERROR:
            exc = msg.data
            code = getattr(exc, "code", None)
            if code == CloseCode.MESSAGE_TOO_BIG:
                return TransportClosed(code, error=MessageTooBigError(self._max_size))
            # the heartbeat's missing pong: ServerTimeoutError (client), TimeoutError (server)
            if isinstance(exc, self._aiohttp.ServerTimeoutError | TimeoutError):
                return TransportClosed(
                    None,
                    error=TimeoutError(
                        f"keepalive ping timeout: no pong within {self._keepalive_timeout} s"
                    ),
                )
            return TransportClosed(code if isinstance(code, int) else CloseCode.ABNORMAL, error=exc)
        # CLOSED without a close frame: aiohttp reports a bare EOF as code 1000; it is a
        # lost connection.
        return TransportClosed(None)

    async def close(self, code: int, reason: str) -> None:
        self._close_sent = True
        # aiohttp has no public "send the close frame, keep reading"
        await self._ws._writer.close(code, reason.encode())

    def abort(self) -> None:
        self._drop()
        if self._release is not None:
            self._release_task = asyncio.ensure_future(self._released())

    async def _released(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release()


class AiohttpEngine(Engine):
    name = "aiohttp"
    library = "aiohttp"
    install_hint = "aiohttp"
    capabilities = frozenset(
        {"client", "server", "headers", "subprotocols", "tls", "deflate", "keepalive"}
    )

    async def connect(self, uri: str, options: ClientOptions) -> AiohttpTransport:
        import aiohttp

        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                uri,
                protocols=tuple(options.subprotocols),
                headers=dict(options.headers),
                max_msg_size=_limit(options.max_size),
                timeout=aiohttp.ClientWSTimeout(ws_close=options.close_timeout),
                autoclose=False,
                autoping=True,
                heartbeat=options.ping_interval,
                compress=15 if options.compression else 0,
                ssl=options.ssl if options.ssl is not None else True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await session.close()
            raise ConnectError.rejected(uri, exc.status, exc.message) from exc
        except BaseException:
            await session.close()
            raise
        tcp = ws._response.connection.transport
        _close_after_peer(tcp, ws, options.close_timeout)

        def drop() -> None:
            tcp.abort()
            ws._response.close()  # releases the connection

        return AiohttpTransport(ws, options, drop=drop, release=session.close)

    async def serve(
        self, host: str, port: int, app: ServerApp, options: ServerOptions
    ) -> AiohttpServer:
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            http_request = _http_request(request)
            decision = app.route(http_request)
            if isinstance(decision, HttpResponse):
                return web.Response(
                    status=decision.status, body=decision.body, headers=answer_headers(decision)
                )
            assert isinstance(decision, Accept)
            ws = web.WebSocketResponse(
                protocols=(decision.subprotocol,) if decision.subprotocol else (),
                max_msg_size=_limit(options.max_size),
                timeout=options.close_timeout,
                autoclose=False,
                autoping=True,
                heartbeat=options.ping_interval,
                compress=bool(options.compression),
            )
            await ws.prepare(_one_protocol_line(request))
            tcp = request.transport
            if tcp is not None:
                _close_after_peer(tcp, ws, options.close_timeout)

            def drop() -> None:
                if tcp is not None:
                    tcp.abort()

            await app.session(http_request, AiohttpTransport(ws, options, drop=drop))
            return ws

        server = web.Server(handle, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=options.ssl)
        await site.start()
        return AiohttpServer(runner, runner.addresses[0][1])


def _http_request(request: Any) -> HttpRequest:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    # request.headers is a multidict: items() has every header line, repeats included
    return http_request(
        request.method, request.path, request.query_string, request.headers.items(), peer
    )


def _one_protocol_line(request: Any) -> Any:
    """``request``, with a Sec-WebSocket-Protocol sent on several lines (RFC 6455 11.3.4)
    joined into one: aiohttp's handshake selects from the first line only."""
    offered = request.headers.getall("Sec-WebSocket-Protocol", ())
    if len(offered) < 2:
        return request
    from multidict import CIMultiDict

    headers = CIMultiDict(request.headers)
    headers["Sec-WebSocket-Protocol"] = ", ".join(offered)  # replaces every line
    return request.clone(headers=headers)


class AiohttpServer:
    def __init__(self, runner: Any, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(AiohttpEngine())
