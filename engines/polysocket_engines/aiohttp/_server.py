"""The server: aiohttp's low-level ``web.Server`` on ``enginekit.bind_sockets``."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from polysocket import enginekit
from polysocket.enginekit import answer_headers, bind_sockets, http_request
from polysocket.transport import HttpResponse, ServerApp, ServerOptions

from ._transport import AiohttpTransport, CloseFrameOnly, CountedReader, msg_limit


class ServerTransport(AiohttpTransport):
    """A server session: also a ``FrameWriter``, for broadcast."""

    __slots__ = ()

    def write_frame(self, frame: bytes, limit: int) -> bool | None:
        if self._ws.compress or self._ws.close_sent:
            return None
        return enginekit.write_frame(self._tcp, frame, limit)


class ServerWebSocket(CloseFrameOnly, web.WebSocketResponse):
    """aiohttp's server WebSocket whose ``close()`` only sends the close frame."""

    def _post_start(self, request: web.BaseRequest, *args: Any) -> None:
        # aiohttp hands its frame reader to the protocol here, which feeds it the bytes that
        # came with the handshake first: the CountedReader counts them, and all after.
        protocol = request.protocol
        tail = protocol._message_tail
        super()._post_start(request, *args)
        CountedReader.install(protocol, self._reader, tail)


class TimedRequestHandler(RequestHandler):
    """aiohttp's connection protocol, with the core's handshake deadline from accept on
    (aiohttp's own keep-alive timer does not drop a connection in the middle of a request)."""

    __slots__ = ("deadline",)  # as aiohttp's: no __dict__ per connection
    deadline: enginekit.HandshakeDeadline | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        assert isinstance(server, TimedServer)
        self.deadline = enginekit.HandshakeDeadline(transport, server.open_timeout)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        deadline = getattr(self, "deadline", None)  # unset if connection_made never ran
        if deadline is not None:
            deadline.done()
        super().connection_lost(exc)


class TimedServer(web.Server):
    """``web.Server`` whose connections are :class:`TimedRequestHandler`."""

    def __init__(self, *args: Any, open_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_timeout = open_timeout

    def __call__(self) -> RequestHandler:
        return TimedRequestHandler(self, loop=self._loop, **self._kwargs)


class AiohttpServer:
    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self._app = app
        self._options = options
        server = TimedServer(
            self._handle,
            open_timeout=options.open_timeout,
            access_log=None,
            # idle keep-alive connections, between requests; within a request, the deadline
            keepalive_timeout=options.open_timeout,
            max_line_size=enginekit.MAX_LINE_SIZE,
            max_field_size=enginekit.MAX_LINE_SIZE,
            # above the core's count, so that the core answers too many with its 431
            max_headers=enginekit.LIBRARY_MAX_HEADER_LINES,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        self.port = 0

    async def start(self, host: str, port: int) -> AiohttpServer:
        sockets = bind_sockets(
            host, port, self._options.backlog, reuse_port=self._options.reuse_port
        )
        self.port = sockets[0].getsockname()[1]
        await self._runner.setup()
        for sock in sockets:
            await web.SockSite(self._runner, sock, ssl_context=self._options.ssl).start()
        return self

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        tcp = request.transport
        peer = tcp.get_extra_info("peername") if tcp is not None else None
        # request.headers is a multidict: items() has every header line, repeats included
        headers = request.headers.items()
        # raw_path: the target as sent (request.path is decoded): the core decodes it
        http = http_request(request.method, request.raw_path, headers, peer)
        decision = self._app.route(http)
        deadline = getattr(request.protocol, "deadline", None)
        if isinstance(decision, HttpResponse):
            if deadline is not None:  # the answer and the next request: open_timeout again
                deadline.restart()
            return web.Response(
                status=decision.status, body=decision.body, headers=answer_headers(decision)
            )
        options = self._options
        ws = ServerWebSocket(
            protocols=(decision.subprotocol,) if decision.subprotocol else (),
            max_msg_size=msg_limit(options.max_size),
            autoclose=False,  # the transport answers a close frame, echoing its code
            autoping=False,  # the transport answers pings, and pings (enginekit.Keepalive)
            compress=options.compression is not None,
        )
        if decision.subprotocol:  # aiohttp selects from the first Sec-WebSocket-Protocol line:
            joined = request.headers.copy()  # give it the offer of every line (RFC 6455 11.3.4)
            joined["Sec-WebSocket-Protocol"] = http.headers["sec-websocket-protocol"]
            request = request.clone(headers=joined)
        await ws.prepare(request)  # raises ConnectionResetError when tcp is None
        if deadline is not None:
            deadline.done()  # the 101 is written: the session is the core's now
        if tcp is not None:
            await self._app.session(http, ServerTransport(ws, tcp, ws.ws_protocol, options))
        return ws
