"""The tornado engine: ``tornado.websocket.websocket_connect`` (client) and a
``tornado.web.Application`` with one ``WebSocketHandler`` for every path (server).

Tornado's client hides how a connection ended: ``read_message()`` just returns ``None``,
``close_code`` is ``None`` both for a lost connection and for an empty close frame, a message
over ``max_message_size`` is answered with a local ``close(1009)`` and a dropped socket that
leave no trace, and ``close()`` is fire-and-forget. This engine watches three points of the
connection's protocol object (its ``close``, its ``_abort`` and the end of its frame loop) to
tell those cases apart and to let ``close()`` wait for the end of the closing handshake.

Tornado is also lenient where RFC 6455 is not: it echoes any received close code, and when a
peer breaks the protocol (bad UTF-8, a fragment out of place, a reserved opcode) it drops the
TCP connection without a close frame. The hooks on ``_handle_message`` and ``_abort`` fail
such connections the way the other engines do: the close frame (1002, 1007 for UTF-8) first,
then no more frames are read and the connection ends at the peer's EOF.

The server side reuses the same transport: the request handler offers the few members of the
client connection that the transport uses (``protocol``, ``read_message``, ``read_queue``,
``write_message``, ``close``, ``selected_subprotocol``, ``on_ws_connection_close``), and the
protocol object and its frame loop are the same class on both sides.

The common options: ``ssl`` is the client request's ``ssl_options`` (``wss://`` only) and the
HTTP server's; ``compression="deflate"`` is ``compression_options={}`` on the client and
``get_compression_options()`` returning ``{}`` on the server. Keepalive is the transport's own
(``_keepalive``), not tornado's ``ping_interval``/``websocket_ping_interval``: tornado >= 6.5
clamps ``ping_timeout`` to ``ping_interval`` (with a logged warning), tornado < 6.5 checks the
pong only at the next ping, and both end a timed-out connection with a close frame that looks
like a normal closure and then wait up to 5 s more for the peer that stopped answering.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

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

_NO_STATUS = CloseCode.NO_STATUS
_PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
_INVALID_DATA = CloseCode.INVALID_DATA
_MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
_NO_HTTP_RESPONSE = 599  # tornado's HTTPClientError code for "no HTTP response" (timeouts, EOF)

_OP_TEXT = 0x1
_OP_CLOSE = 0x8


def _close_frame_problem(payload: bytes) -> ProtocolViolation | None:
    """What is wrong with a received close frame's payload, which tornado takes as it is."""
    if len(payload) == 1:
        return ProtocolViolation(_PROTOCOL_ERROR, "the peer sent a close frame of one byte")
    if len(payload) >= 2:
        code = int.from_bytes(payload[:2], "big")
        if not valid_close_code(code):
            return ProtocolViolation(
                _PROTOCOL_ERROR, f"the peer sent the invalid close code {code}"
            )
        try:
            payload[2:].decode()
        except UnicodeDecodeError:
            return ProtocolViolation(_INVALID_DATA, "the peer's close reason is not valid UTF-8")
    return None


class TornadoTransport:
    """A client ``WebSocketClientConnection`` or a server request handler (see the module doc)."""

    def __init__(self, ws: Any, options: ClientOptions | ServerOptions) -> None:
        import tornado.iostream
        import tornado.websocket

        self._websocket = tornado.websocket
        self._closed_errors = (
            tornado.websocket.WebSocketClosedError,
            tornado.iostream.StreamClosedError,
        )
        self._ws = ws
        # ws.close() drops ws.protocol; keep our own reference for the connection's lifetime.
        self._proto = ws.protocol
        self._max_size = options.max_size
        self._close_timeout = options.close_timeout
        self.subprotocol: str | None = ws.selected_subprotocol

        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = False  # close() was called (its close frame is ours, not a failure)
        self._failed_code: int | None = None  # close frame sent on failing the connection
        self._failure: ProtocolViolation | None = None  # the peer broke the protocol
        self._dropped = False  # the frame loop ended without the peer's close frame
        self._decoding_text = False  # inside tornado's handling of a text message
        self._discarding = False  # failed: reading (and dropping) what comes until EOF
        self._ssl_stream = tornado.iostream.SSLIOStream
        self._receiving = False
        self._drainer: asyncio.Future[None] | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._ended: TransportClosed | None = None
        self._pong = asyncio.Event()
        self._keepalive_error: TimeoutError | None = None

        # websocket_connect() schedules the frame loop before resolving its future, and the
        # loop's first step runs only after connect() resumes; on the server, the handler's
        # open() builds the transport and the frame loop starts when open() returns. So these
        # hooks are in place before the first frame is read.
        proto = self._proto
        orig_close, orig_abort = proto.close, proto._abort
        orig_handle = proto._handle_message
        orig_conn_closed = ws.on_ws_connection_close

        def close_hook(code: int | None = None, reason: str | None = None) -> None:
            # Neither side has sent a close frame and close() was not called: the
            # connection is being failed (by tornado itself only ever with 1009).
            if not (proto.server_terminated or proto.client_terminated or self._closing):
                self._failed_code = code
            orig_close(code, reason)

        def fail(violation: ProtocolViolation) -> None:
            self._failure = violation
            close_hook(violation.code)
            self._failed_code = violation.code
            discard_until_eof()

        def discard_until_eof() -> None:
            # RFC 6455 7.1.7, after the close frame: read no more frames, wait for the peer
            # to close, for close_timeout at most (or tornado's own 5 s close timer).
            # Dropping at once, as tornado does, resets the connection while the peer is
            # still sending, and the reset can destroy the close frame before it is read.
            if self._discarding:
                return
            self._discarding = True
            stream = proto.stream
            flushed = False

            async def discard() -> None:
                nonlocal flushed
                if not flushed:
                    flushed = True
                    await stream.write(b"")  # resolves once the close frame is out
                    if isinstance(stream, self._ssl_stream):
                        # TLS cannot half-close, and waiting for a peer that waits for us
                        # would only end at the timer: close now, as tornado does.
                        stream.close()
                        return
                    stream.socket.shutdown(socket.SHUT_WR)  # EOF: the peer closes its side
                await stream.read_bytes(65536, partial=True)  # EOF ends the frame loop

            proto._receive_frame = discard
            deadline = asyncio.get_running_loop().call_later(self._close_timeout, self.abort)
            self._done.add_done_callback(lambda _: deadline.cancel())

        def abort_hook() -> None:
            if not (self._discarding or proto.client_terminated or proto.stream.closed()):
                if not proto.server_terminated:
                    # tornado found a broken frame and would drop the connection without
                    # the close frame RFC 6455 asks for: fail it with the code the other
                    # engines use instead.
                    fail(
                        ProtocolViolation(
                            _INVALID_DATA, "the peer sent a text message that is not valid UTF-8"
                        )
                        if self._decoding_text
                        else ProtocolViolation(
                            _PROTOCOL_ERROR,
                            "the peer broke the WebSocket protocol (reserved bits, an unknown"
                            " opcode, a fragmented or oversized control frame, or a fragment"
                            " out of place)",
                        )
                    )
                    return
                if self._failed_code is not None:  # tornado's close(1009), then _abort()
                    discard_until_eof()
                    return
            if not proto.client_terminated:
                # The stream is closed (connection lost, abort(), a close timeout) or gets
                # closed now, before the peer's close frame arrived.
                self._dropped = True
            orig_abort()

        def handle_hook(opcode: int, data: bytes) -> Any:
            # tornado takes any close frame as it is and echoes its code.
            if opcode == _OP_CLOSE and not proto.client_terminated:
                violation = _close_frame_problem(data)
                if violation is not None:
                    fail(violation)
                    return None
            self._decoding_text = opcode == _OP_TEXT  # its only _abort() is for bad UTF-8
            try:
                return orig_handle(opcode, data)
            finally:
                self._decoding_text = False

        def conn_closed_hook(
            close_code: int | None = None, close_reason: str | None = None
        ) -> None:
            try:
                orig_conn_closed(close_code, close_reason)  # queues the final None
            finally:
                if ws.protocol is not None:
                    ws.close()  # release it (nothing is sent any more), silences __del__
                if not self._done.done():
                    self._done.set_result(None)

        def pong_hook(data: bytes) -> None:
            self._pong.set()

        proto.close = close_hook
        proto._abort = abort_hook
        proto._handle_message = handle_hook
        ws.on_ws_connection_close = conn_closed_hook
        # The frame loop calls handler.on_pong for every pong; handler is ws on both sides.
        ws.on_pong = pong_hook

        if options.ping_interval is not None and options.keepalive_timeout is not None:
            keepalive = asyncio.ensure_future(
                self._keepalive(options.ping_interval, options.keepalive_timeout)
            )
            self._done.add_done_callback(lambda _: keepalive.cancel())

    async def send(self, message: Message) -> None:
        if self._ended is not None or self._close_task is not None or self._done.done():
            raise TransportClosed(self._ended.code if self._ended is not None else None)
        if isinstance(message, str):
            data: str | bytes = message
            binary = False
        else:
            data = bytes(message)  # tornado accepts str or bytes only
            binary = True
        try:
            # The future resolves once the frame is written out: tornado's flow control.
            await self._ws.write_message(data, binary=binary)
        except self._closed_errors as exc:
            code = self._ended.code if self._ended is not None else None
            raise TransportClosed(code) from exc

    async def receive(self) -> Message:
        if self._ended is not None:
            raise self._ended
        if self._drainer is None:
            msg: Message | None = None
            self._receiving = True
            try:
                msg = await self._ws.read_message()
            finally:
                self._receiving = False
                if self._closing and not self._done.done():
                    # A reader that goes on reading gets every message up to the peer's close
                    # frame; if none calls again, keep the frame loop going so close()
                    # completes (see _drain).
                    asyncio.get_running_loop().call_soon(self._drain_if_idle)
            if msg is not None:
                return msg
        # None (the loop has ended), or close() is discarding what is left.
        await asyncio.shield(self._done)
        self._ended = self._ending()
        raise self._ended

    def _ending(self) -> TransportClosed:
        if self._keepalive_error is not None:
            return TransportClosed(None, error=self._keepalive_error)
        if self._failed_code == _MESSAGE_TOO_BIG:
            return TransportClosed(_MESSAGE_TOO_BIG, error=MessageTooBigError(self._max_size))
        if self._failure is not None:
            return TransportClosed(self._failure.code, error=self._failure)
        if self._failed_code is not None:
            return TransportClosed(
                self._failed_code,
                error=self._websocket.WebSocketError(
                    f"tornado failed the connection with close code {self._failed_code}"
                ),
            )
        if not self._dropped:
            code = self._proto.close_code
            return TransportClosed(
                _NO_STATUS if code is None else code, self._proto.close_reason or ""
            )
        return TransportClosed(None)

    async def _keepalive(self, interval: float, timeout: float) -> None:
        """A ping every ``interval`` seconds; no pong within ``timeout``: drop the connection.

        Any pong counts (these pings carry no payload to match). Once the closing
        handshake has begun, close_timeout bounds the rest and no more pings are sent.
        """
        loop = asyncio.get_running_loop()
        proto = self._proto
        next_ping = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_ping - loop.time()))
            if self._closing or proto.is_closing():
                return
            next_ping = loop.time() + interval
            self._pong.clear()
            try:
                proto.write_ping(b"")
            except self._closed_errors:
                return
            try:
                async with asyncio.timeout(timeout):
                    await self._pong.wait()
            except TimeoutError:
                if self._closing or proto.is_closing():
                    return
                self._keepalive_error = TimeoutError(
                    f"keepalive ping timeout: no pong within {timeout} s"
                )
                self.abort()  # the frame loop ends as for a lost connection
                return

    def _drain_if_idle(self) -> None:
        if not self._receiving and not self._done.done():
            self._start_drain()

    def _start_drain(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        # tornado's read queue holds one message and its frame loop waits for room before it
        # reads the next frame, so unread messages would hide the peer's close frame.
        while True:
            msg = await self._ws.read_message()
            if msg is None:
                self._ws.read_queue.put_nowait(None)  # leave the end marker in place
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(code, reason))
        await asyncio.shield(self._close_task)

    async def _close(self, code: int, reason: str) -> None:
        self._closing = True
        try:
            if self._done.done():
                return
            # Sends the close frame (unless one was sent already); not awaitable.
            self._ws.close(code, reason)
            if not self._receiving:
                self._start_drain()
            try:
                await asyncio.wait_for(asyncio.shield(self._done), self._close_timeout)
            except TimeoutError:
                self.abort()
                self._start_drain()
                await asyncio.shield(self._done)
        finally:
            if self._drainer is not None and not self._drainer.done():
                self._drainer.cancel()

    def abort(self) -> None:
        # Closing the stream fails the frame loop's pending read: it ends at once.
        self._proto.stream.close()


# --- server side ---------------------------------------------------------------------------

_log = logging.getLogger(__name__)

# Unread messages a server connection buffers before tornado stops reading its socket (the
# frame loop waits for on_message's future); it reads again once the reader caught up.
_QUEUE_HIGH = 256
_QUEUE_HIGH_BYTES = 4 * 1024 * 1024
_TORNADO_MAX_BUFFER = 100 * 1024 * 1024  # tornado's default max_buffer_size / max_body_size


class _AnyMethod(tuple):  # type: ignore[type-arg]
    """``SUPPORTED_METHODS`` that lets every method reach ``prepare()`` (and so the core)."""

    def __contains__(self, item: object) -> bool:
        return True


class TornadoServer:
    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self.app = app
        self.options = options
        self.port = 0
        self._http: Any = None
        self._sessions: set[asyncio.Future[None]] = set()
        self._transports: set[TornadoTransport] = set()

    def start_session(self, request: HttpRequest, transport: TornadoTransport) -> None:
        self._transports.add(transport)
        task = asyncio.ensure_future(self._session(request, transport))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def _session(self, request: HttpRequest, transport: TornadoTransport) -> None:
        try:
            await self.app.session(request, transport)  # closes the transport
        finally:
            self._transports.discard(transport)

    async def close(self) -> None:
        timeout = self.options.close_timeout
        self._http.stop()  # stop listening; closes the listening sockets
        # The core has closed the sessions; drop whatever is left.
        for transport in list(self._transports):
            transport.abort()
        try:
            # HTTP connections: idle keep-alive ones, requests being answered, handshakes.
            await asyncio.wait_for(self._http.close_all_connections(), timeout)
        except TimeoutError:
            _log.warning("tornado server connections did not close in %ss", timeout)
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=timeout)
            for task in pending:
                task.cancel()


@functools.cache
def _handler_class() -> type:
    import tornado.queues
    import tornado.web
    import tornado.websocket

    class Handler(tornado.websocket.WebSocketHandler):
        """Every request, any path and method: the core routes it in ``prepare()``."""

        SUPPORTED_METHODS = _AnyMethod(tornado.web.RequestHandler.SUPPORTED_METHODS)

        def initialize(self, server: TornadoServer) -> None:
            self._server = server
            self._http_request: HttpRequest | None = None
            self._subprotocol: str | None = None
            self.read_queue: tornado.queues.Queue[Message | None] = tornado.queues.Queue()
            self._queued_bytes = 0
            self._room: asyncio.Future[None] | None = None

        def prepare(self) -> None:
            request = self.request
            context = getattr(request.connection, "context", None)
            incoming = http_request(
                request.method or "GET",
                request.path,
                request.query,
                request.headers.get_all(),
                getattr(context, "address", None),
            )
            self._http_request = incoming
            decision = self._server.app.route(incoming)
            if isinstance(decision, Accept):
                if request.method == "GET":
                    # get() (WebSocketHandler's) runs next and completes the handshake.
                    self._subprotocol = decision.subprotocol
                    return
                decision = HttpResponse(400, b"a WebSocket handshake is a GET request\n")
            self._respond(decision)

        def _respond(self, answer: HttpResponse) -> None:
            self.set_status(answer.status)
            for name, value in answer_headers(answer).items():
                self.set_header(name, value)
            if answer.status < 200 or answer.status in (204, 304):
                self.finish()  # tornado refuses a body (even b"") for these
            else:
                self.finish(bytes(answer.body))

        def compute_etag(self) -> str | None:
            return None  # no ETag, no 304: the core's answer is sent as is

        def check_origin(self, origin: str) -> bool:
            return True  # pages on other origins, and the page the core serves

        def get_compression_options(self) -> dict[str, Any] | None:
            # {}: accept permessage-deflate when the client offers it; None: never.
            return {} if self._server.options.compression == "deflate" else None

        def select_subprotocol(self, subprotocols: list[str]) -> str | None:
            return self._subprotocol

        def open(self, *args: str, **kwargs: str) -> None:
            # The frame loop starts once this returns: the transport's hooks are in place.
            assert self._http_request is not None
            assert self.ws_connection is not None
            stream = self.ws_connection.stream
            if stream is not None:
                # An aborted connection whose reader has stopped must still end.
                stream.set_close_callback(self._make_room)
            self._server.start_session(
                self._http_request, TornadoTransport(self, self._server.options)
            )

        # -- what TornadoTransport uses of a client connection --------------------------

        @property
        def protocol(self) -> Any:
            return self.ws_connection

        def on_message(self, message: Message) -> asyncio.Future[None] | None:
            self.read_queue.put_nowait(message)
            self._queued_bytes += len(message)
            if self._room is None and (
                self.read_queue.qsize() >= _QUEUE_HIGH or self._queued_bytes >= _QUEUE_HIGH_BYTES
            ):
                # Returning a future makes tornado's frame loop wait before the next frame.
                self._room = asyncio.get_running_loop().create_future()
            return self._room

        async def read_message(self) -> Message | None:
            message = await self.read_queue.get()
            if message is not None:
                self._queued_bytes -= len(message)
            if (
                self._room is not None
                and self.read_queue.qsize() <= _QUEUE_HIGH // 2
                and self._queued_bytes <= _QUEUE_HIGH_BYTES // 2
            ):
                self._make_room()
            return message

        def _make_room(self) -> None:
            if self._room is not None:
                if not self._room.done():
                    self._room.set_result(None)
                self._room = None

        def on_close(self) -> None:
            self._make_room()
            self.read_queue.put_nowait(None)  # the end marker, after the unread messages

    return Handler


def _log_request(handler: Any) -> None:
    # The core's refusals (404, 426) are ordinary answers: no warnings for them.
    _log.info(
        "%d %s %.2fms",
        handler.get_status(),
        handler._request_summary(),
        1000.0 * handler.request.request_time(),
    )


class TornadoEngine(Engine):
    name = "tornado"
    library = "tornado"
    install_hint = "polysocket[tornado]"
    capabilities = frozenset(
        {"client", "server", "headers", "subprotocols", "tls", "deflate", "keepalive"}
    )

    async def connect(self, uri: str, options: ClientOptions) -> TornadoTransport:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(
            uri,
            headers=dict(options.headers),
            # The core bounds connect(); these only make tornado drop an attempt the core
            # has given up on instead of letting it linger.
            connect_timeout=options.open_timeout,
            request_timeout=options.open_timeout,
            # None: tornado's default context for wss:// (system CAs, hostname checked)
            ssl_options=options.ssl if urlsplit(uri).scheme == "wss" else None,
        )
        try:
            ws = await websocket_connect(
                request,
                subprotocols=list(options.subprotocols) or None,
                max_message_size=options.max_size or sys.maxsize,
                # {}: offer permessage-deflate; None: offer nothing
                compression_options={} if options.compression == "deflate" else None,
                ping_interval=None,  # the transport's own keepalive (see the module doc)
            )
        except HTTPClientError as exc:
            if exc.code == _NO_HTTP_RESPONSE:
                raise
            raise ConnectError.rejected(uri, exc.code, exc.message) from exc
        # No await between here and the hooks in TornadoTransport (see its __init__).
        return TornadoTransport(ws, options)

    async def serve(
        self, host: str, port: int, app: ServerApp, options: ServerOptions
    ) -> TornadoServer:
        import tornado.httpserver
        import tornado.netutil
        import tornado.web

        server = TornadoServer(app, options)
        application = tornado.web.Application(
            [(r".*", _handler_class(), {"server": server})],
            websocket_max_message_size=options.max_size or sys.maxsize,
            websocket_ping_interval=None,  # the transport's own keepalive (see the module doc)
            log_function=_log_request,
        )
        # One frame is read into the stream's buffer whole: let it hold max_size.
        limit = options.max_size
        server._http = tornado.httpserver.HTTPServer(
            application,
            max_buffer_size=sys.maxsize
            if limit is None
            else max(_TORNADO_MAX_BUFFER, limit + 1024),
            max_body_size=_TORNADO_MAX_BUFFER,
            ssl_options=options.ssl,
        )
        # bind_sockets gives every address of host (127.0.0.1 and ::1) the same port.
        sockets = tornado.netutil.bind_sockets(port, host or None)
        server._http.add_sockets(sockets)
        server.port = sockets[0].getsockname()[1]
        return server


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(TornadoEngine())
