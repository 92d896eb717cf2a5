"""The server: a ``tornado.web.Application`` whose one handler takes every request."""

import asyncio
import contextlib
import logging
import sys
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13

from polysocket import enginekit
from polysocket.transport import Accept, HttpResponse, ServerApp, ServerOptions

from ._transport import Delegate, StrictProtocol, TornadoTransport

_log = logging.getLogger(__name__)
_BUFFER = 100 * 1024 * 1024  # tornado's default max_buffer_size and max_body_size


class TornadoServer:
    def __init__(self, app: ServerApp, options: ServerOptions, host: str, port: int) -> None:
        self.app = app
        self.options = options
        self.sessions = enginekit.SessionTracker(app)
        limit = options.max_size or sys.maxsize
        application = Application(
            [(r".*", Handler, {"server": self})],
            websocket_max_message_size=limit,
            # The core's refusals (404, 426) are ordinary answers: no warnings for them.
            log_function=lambda h: _log.info("%d %s", h.get_status(), h.request.uri),
        )
        self._http = HTTPServer(
            application,
            # A frame is read into the stream's buffer whole: let it hold max_size and a header.
            max_buffer_size=max(_BUFFER, limit + 1024),
            max_body_size=_BUFFER,
            ssl_options=options.ssl,
            # tornado's time limit for each request head, from accept (or from the previous
            # answer on a keep-alive connection): the core's open_timeout, not tornado's hour
            idle_connection_timeout=options.open_timeout,
            body_timeout=options.open_timeout,
            max_header_size=enginekit.MAX_HEAD_SIZE,
        )
        sockets = enginekit.bind_sockets(host, port, options.backlog, reuse_port=options.reuse_port)
        # What add_sockets() does, with enginekit's accept loop: tornado's retries at once, a
        # traceback each time, for as long as the process is out of descriptors.
        for sock in sockets:
            self._http._sockets[sock.fileno()] = sock  # stop() closes them
            self._http._handlers[sock.fileno()] = enginekit.accept_connections(
                sock, self._http._handle_connection
            )
        self.port: int = sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._http.stop()  # stop listening
        await self.sessions.close(self.options.close_timeout)
        # HTTP connections left: idle keep-alive ones, answers being sent, handshakes
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._http.close_all_connections(), self.options.close_timeout)


class ServerTransport(TornadoTransport):
    """A server session: also a ``FrameWriter``, for broadcast."""

    def write_frame(self, frame: bytes, limit: int) -> bool | None:
        proto, stream = self.proto, self.proto.stream
        if self.options.compression or proto.server_terminated or stream.closed():
            return None
        if stream.writing():  # tornado says whether anything is buffered, not how much
            return None  # so the core queues it, and its write_limit rule applies
        stream.write(frame).add_done_callback(lambda done: done.exception())  # a lost peer
        return True


class _AnyMethod(tuple[str, ...]):
    def __contains__(self, item: object) -> bool:
        return True  # every method reaches prepare(), and so the core


class Handler(Delegate, WebSocketHandler):
    """Every request, any path and method: the core routes it in ``prepare()``."""

    SUPPORTED_METHODS = _AnyMethod(RequestHandler.SUPPORTED_METHODS)

    def initialize(self, server: TornadoServer) -> None:
        self.server = server
        self.transport = ServerTransport(server.options)

    def prepare(self) -> None:
        request = self.request
        peer = getattr(getattr(request.connection, "context", None), "address", None)
        headers = request.headers.get_all()
        method = request.method or "GET"
        target = request.uri or "/"  # as sent: the core decodes it
        self.incoming = enginekit.http_request(method, target, headers, peer)
        answer = self.server.app.route(self.incoming)
        if isinstance(answer, Accept):
            if method == "GET":  # WebSocketHandler.get() completes the handshake next
                self.accept = answer
                return
            answer = HttpResponse(400, b"a WebSocket handshake is a GET request\n")
        self.set_status(answer.status)
        for name, value in enginekit.answer_headers(answer).items():
            self.set_header(name, value)
        # None for 1xx, 204, 304: tornado refuses a body, even b"" (and drops HEAD's itself)
        self.finish(enginekit.answer_payload(answer, "GET") or None)

    def compute_etag(self) -> None:
        return None  # no ETag, no 304: the core's answer is sent as is

    def check_origin(self, origin: str) -> bool:
        # The core has checked Origin in route() already (origins=, 403 before any handler
        # runs); tornado's own same-host rule would refuse the origins the user allowed.
        return True

    def get_compression_options(self) -> dict[str, Any] | None:
        # {}: accept permessage-deflate when the client offers it; None: never.
        return {} if self.server.options.compression == "deflate" else None

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.accept.subprotocol

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        stock = super().get_websocket_protocol()  # tornado's parameters; None unless version 13
        if not isinstance(stock, WebSocketProtocol13):
            return None
        return self.transport.attach(StrictProtocol(self, False, stock.params))

    def open(self, *args: str, **kwargs: str) -> None:
        self.transport.open()  # tornado's frame loop starts once this returns
        self.server.sessions.start(self.incoming, self.transport)

    def on_close(self) -> None:
        self.transport.queue.put(None)
