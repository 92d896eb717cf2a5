"""The server side: an HTTP/1.1 front that asks the core, then picows for the WebSocket.

Why not ``picows.ws_create_server`` alone: ``app.route`` is synchronous, so picows' listener
factory could call it, but picows' request parser answers every method but GET, HTTP/1.0 and
requests with a body with its own 400 before the factory is called (those requests would
never reach the core), and refuses ``Connection`` token lists (Firefox's ``keep-alive,
Upgrade``) after it.

So the listening socket is served by :class:`_HttpFront`, an ``asyncio.Protocol`` that reads
one request and asks ``app.route`` as soon as it is complete. An :class:`HttpResponse` is
written by the front itself (``Connection: close``). On :class:`Accept` the connection is
handed to picows' own server protocol (``picows.picows.WSProtocol``, built with the arguments
``ws_create_server`` gives it) exactly as picows' ``ws_connect`` hands a connection over
after a proxy's CONNECT: ``transport.set_protocol(protocol)``, ``connection_made``, then the
request's bytes are fed to it. picows then parses and validates the upgrade request itself,
calls the listener factory (which returns the 101 response with the chosen subprotocol and
the transport's listener), writes the 101 and reads the frames that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # private: PRIVATE_API
from polysocket.enginekit import (
    MAX_LINE_SIZE,
    TOKEN_CHARS,
    HandshakeDeadline,
    SessionTracker,
    answer_fields,
    answer_payload,
    answer_reason,
    bind_sockets,
    header_map,
    http_request,
)
from polysocket.transport import (
    Accept,
    HttpRequest,
    HttpResponse,
    ServerApp,
    ServerOptions,
)

from ._transport import PicowsTransport, frame_limit

_log = logging.getLogger("polysocket_picows.server")
_picows_log = logging.getLogger("picows.server")

#: picows refuses an upgrade request whose head reaches 16 KiB; so does the front.
MAX_HEAD = 16 * 1024 - 1
#: Bodies the front reads (and discards: ``HttpRequest`` has none) before answering.
MAX_BODY = 1024 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


# --- HTTP ----------------------------------------------------------------------------------


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """Request line and header fields of ``head`` (without the blank line); BadRequest."""
    try:
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if not method or not set(method) <= TOKEN_CHARS or not target:
        raise BadRequest(400, "malformed request line")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505, f"{version} is not served here; use HTTP/1.1")
    if any(len(line) > MAX_LINE_SIZE for line in lines):
        raise BadRequest(431, f"a request or header line is over {MAX_LINE_SIZE} bytes")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= TOKEN_CHARS:
            raise BadRequest(400, "malformed header field")
        value = value.strip(" \t")
        if any(c in value for c in "\r\n\x00"):
            raise BadRequest(400, "malformed header field")
        fields.append((name, value))
    return method, target, version, fields


def render_response(answer: HttpResponse, method: str) -> bytes:
    fields = answer_fields(answer)
    if not any(name.lower() == "server" for name, _ in fields):
        fields.insert(1, ("Server", "polysocket-picows"))
    lines = [f"HTTP/1.1 {answer.status} {answer_reason(answer)}"]
    lines += [f"{name}: {value}" for name, value in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer_payload(answer, method)


def picows_head(method: str, target: str, version: str, fields: list[tuple[str, str]]) -> bytes:
    """The request as picows will parse it.

    picows requires ``Connection`` to be exactly ``Upgrade`` and ``Upgrade`` exactly
    ``websocket``; RFC 7230 makes both token lists (Firefox sends ``Connection: keep-alive,
    Upgrade``). The front has checked the tokens; picows gets the single values.
    """
    lines = [f"{method} {target} {version}"]  # picows refuses all but GET and HTTP/1.1
    for name, value in fields:
        key = name.lower()
        if key == "connection" and "upgrade" in _tokens(value):
            value = "Upgrade"
        elif key == "upgrade" and "websocket" in _tokens(value):
            value = "websocket"
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- the connection before (and instead of) the WebSocket ----------------------------------


class _HttpFront(asyncio.Protocol):
    """One TCP connection until the core has decided; then picows' or closed."""

    def __init__(self, server: PicowsServer) -> None:
        self._server = server
        self._transport: Any = None
        self._buffer = bytearray()
        self._head: tuple[str, str, str, list[tuple[str, str]]] | None = None
        self._body_left = 0
        self._deadline: HandshakeDeadline | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._server.fronts.add(self)
        # the request, and the answer to a plain one, within open_timeout
        self._deadline = HandshakeDeadline(transport, self._server.options.open_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.fronts.discard(self)
        if self._deadline is not None:
            self._deadline.done()

    def data_received(self, data: bytes) -> None:
        if self._transport.is_closing():
            return  # answered already
        self._buffer += data
        try:
            complete = self._parse()
        except BadRequest as exc:
            self._answer(HttpResponse(exc.status, f"{exc}\n".encode()), "GET")
            return
        if complete:
            self._route()

    def _parse(self) -> bool:
        """Whether the request is complete (its body read and discarded)."""
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end > MAX_HEAD or (end < 0 and len(self._buffer) > MAX_HEAD):
                raise BadRequest(431, "request header fields too large")
            if end < 0:
                return False
            self._head = parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            headers = header_map(self._head[3])
            if "transfer-encoding" in headers:
                raise BadRequest(501, "request bodies in Transfer-Encoding are not read here")
            length = headers.get("content-length", "0").strip()
            if not length.isdigit():
                raise BadRequest(400, "invalid Content-Length")
            self._body_left = int(length)
            if self._body_left > MAX_BODY:
                raise BadRequest(413, "request body too large")
        taken = min(self._body_left, len(self._buffer))
        del self._buffer[:taken]  # the core never sees a body
        self._body_left -= taken
        return not self._body_left

    def _route(self) -> None:
        assert self._head is not None
        method, target, version, fields = self._head
        # the target as sent: the core decodes it (its one rule for every engine)
        request = http_request(method, target, fields, self._transport.get_extra_info("peername"))
        try:
            decision = self._server.app.route(request)
        except Exception:
            _log.exception("app.route() failed for %s %s", method, request.path)
            decision = HttpResponse(500, b"internal server error\n")
        if isinstance(decision, Accept):
            self._hand_over(request, decision, picows_head(method, target, version, fields))
        else:
            self._answer(decision, method)

    def _answer(self, answer: HttpResponse, method: str) -> None:
        try:
            data = render_response(answer, method)
        except ValueError:
            _log.exception("cannot send the answer to %s", method)
            data = render_response(HttpResponse(500, b"internal server error\n"), method)
        self._transport.write(data)
        self._transport.close()  # waits until the answer is written: the deadline bounds it
        if self._deadline is not None:
            self._deadline.restart()

    def _hand_over(self, request: HttpRequest, accept: Accept, head: bytes) -> None:
        server = self._server
        if self._deadline is not None:
            self._deadline.done()  # picows writes the 101 before _feed returns
        ws = PicowsTransport(server.options, client=False)
        ws.subprotocol = accept.subprotocol
        ws.on_open = functools.partial(server.sessions.start, request, ws)
        extra = {"Sec-WebSocket-Protocol": accept.subprotocol} if accept.subprotocol else None
        upgrade = WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response(extra_headers=extra), ws.listener
        )
        protocol = server.picows_protocol(lambda _request: upgrade)
        server.fronts.discard(self)
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        # picows parses the upgrade request from its own read buffer: feed it the request,
        # then whatever arrived after it (early frames). It validates the request, writes
        # the 101 and calls on_ws_connected, which starts the session, all in here.
        _feed(protocol, head + bytes(self._buffer))

    def abort(self) -> None:
        self._transport.abort()


def _feed(protocol: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


# --- the listening server ------------------------------------------------------------------


class PicowsServer:
    """What ``PicowsEngine.serve`` returns: the listening sockets and every connection."""

    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self.app = app
        self.options = options
        self.port = 0
        self.fronts: set[_HttpFront] = set()  # connections still in their HTTP phase
        self.sessions = SessionTracker(app)
        self._servers: list[asyncio.Server] = []

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        sockets = bind_sockets(host, port, self.options.backlog, reuse_port=self.options.reuse_port)
        with contextlib.ExitStack() as undo:  # what to close if a socket cannot be served
            for sock in sockets:
                undo.callback(sock.close)
            for sock in sockets:
                server = await loop.create_server(self._front, sock=sock, ssl=self.options.ssl)
                self._servers.append(server)
                undo.callback(server.close)
            undo.pop_all()
        self.port = sockets[0].getsockname()[1]

    def _front(self) -> _HttpFront:
        return _HttpFront(self)

    def picows_protocol(self, listener_factory: Callable[[Any], Any]) -> Any:
        """picows' server protocol, as ``ws_create_server`` builds it, for one connection."""
        return WSProtocol(
            host_port=None,
            ws_path=None,
            is_client_side=False,
            ws_listener_factory=listener_factory,
            logger=_picows_log,
            disconnect_on_exception=True,
            websocket_handshake_timeout=None,  # the request is complete already
            enable_auto_ping=False,  # the transport's own keepalive
            auto_ping_idle_timeout=20,
            auto_ping_reply_timeout=20,
            auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
            enable_auto_pong=True,
            max_frame_size=frame_limit(self.options.max_size),
            extra_headers=None,
            read_buffer_init_size=16 * 1024,
        )

    async def close(self) -> None:
        timeout = self.options.close_timeout
        for server in self._servers:
            server.close()  # stop listening
        # The core has closed the sessions; drop whatever is left (half-read requests,
        # sessions the core did not close).
        for front in list(self.fronts):
            front.abort()
        await self.sessions.close(timeout)
        for server in self._servers:
            try:
                async with asyncio.timeout(timeout):
                    await server.wait_closed()
            except TimeoutError:
                _log.warning("picows server did not finish closing in %ss", timeout)
