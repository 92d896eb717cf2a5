"""Endpoints inside an ASGI application: ``polysocket.asgi.app("registry/")``.

:class:`AsgiApp` adapts any :class:`~polysocket.transport.ServerApp` (the endpoint server)
to ASGI 3, so that an ASGI server (uvicorn, hypercorn...) runs the sockets, TLS, workers and
proxy headers, and polysocket what it runs on every engine: routing, sessions, handlers,
broadcast, live reload. The ``uvicorn`` engine runs this adapter on uvicorn for
``polysocket serve --engine uvicorn``.

Scopes:

- ``websocket``: the request goes to ``route()``. An ``Accept`` becomes ``websocket.accept``
  (with the chosen subprotocol, no extra headers) and the session runs over
  :class:`AsgiTransport`. An ``HttpResponse`` (404, 401, 503...) is sent as it is through the
  WebSocket Denial Response extension (``websocket.http.response``) when the server offers it
  (uvicorn >= 0.25, hypercorn); where it does not, ``websocket.close`` before the accept,
  which the server turns into a bare 403 (uvicorn, daphne).
- ``http``: the page at ``/``, the JSON list, 404s, 426 for a WebSocket path asked over plain
  HTTP; answered in one ``http.response.start`` and one body.
- ``lifespan``: startup starts the registry watcher (live reload) and joins the cluster
  (``backplane=``); shutdown closes every session with 1001 (bounded by ``close_timeout``)
  and leaves the cluster. A server that sends no lifespan events
  (or a framework that does not pass them to a mounted app, as Starlette's ``Mount``) gets
  the watcher started at the first request; call :meth:`AsgiApp.shutdown` from the host
  application's own lifespan to close sessions with 1001 there. uvicorn ends WebSocket
  connections itself (1012, service restart) before it sends the lifespan shutdown.

``root_path`` is honoured: it is taken off the path before routing, so the app may be
mounted under a prefix (``app.mount("/rt", polysocket.asgi.app("registry/"))``).

Bounds: every buffer is the ASGI server's or the core's. Received messages wait in the
server until the core asks for them: uvicorn's ``websockets-sansio`` protocol stops reading
the socket after each message until the application has taken it, and reads none larger
than ``ws_max_size`` (uvicorn's legacy ``websockets`` protocol queues ``ws_max_queue``
messages; hypercorn its own queue). The core stops asking (TCP backpressure) above
``max_queue`` bytes unread by the handler, and refuses messages over ``max_size`` itself
(1009), whatever the server's limit. Sends wait while the server's write buffer is full
(uvicorn: until its transport resumes writing), bounded by the core's ``send_timeout``;
``write_limit`` bytes may wait in the core per session. The wait for ``websocket.connect``
is bounded by ``open_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import endpoints as registry_folder
from .auth import Authenticator
from .enginekit.closecodes import CloseCode
from .enginekit.http import answer_headers, answer_payload, http_request
from .errors import UnsupportedOptionError
from .options import server_options
from .transport import (
    Accept,
    Engine,
    HttpRequest,
    HttpResponse,
    Message,
    MessageTooBigError,
    ServerApp,
    ServerOptions,
    TransportClosed,
)

log = logging.getLogger("polysocket.asgi")

__all__ = ["AsgiApp", "AsgiEngine", "AsgiTransport", "app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: The variable the zero-argument factory reads for its registry folder.
ROOT_VARIABLE = "POLYSOCKET_ROOT"
#: The extension through which a WebSocket handshake may be refused with a real HTTP answer.
DENIAL_EXTENSION = "websocket.http.response"
#: What a path keeps unescaped when it is encoded again (RFC 3986 pchar and "/").
PATH_SAFE = "/:@!$&'()*+,;=-._~"
#: Options that are the ASGI server's to honour, and where uvicorn takes them.
SERVER_OWNED = {
    "ssl": "--ssl-certfile/--ssl-keyfile",
    "compression": "--ws-per-message-deflate",
    "ping_interval": "--ws-ping-interval",
    "ping_timeout": "--ws-ping-timeout",
    "backlog": "--backlog",
}


class AsgiTransport:
    """One accepted ASGI WebSocket as a :class:`~polysocket.transport.Transport`.

    ``abort()``: ASGI has no message that drops a connection. The best it allows: the
    ``receive()`` and ``send()`` waiting in the server are cancelled and raise
    :class:`TransportClosed` (code ``None``), nothing more is sent, and the session returns;
    the application then returns, and the server closes the TCP connection (uvicorn at once,
    without a close frame)."""

    __slots__ = (
        "_aborted",
        "_close_timeout",
        "_ended",
        "_max_size",
        "_receive",
        "_send",
        "_sent_close",
        "_waiting",
        "subprotocol",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        subprotocol: str | None,
        max_size: int | None,
        close_timeout: float = 10.0,
    ) -> None:
        self._receive, self._send = receive, send
        self._close_timeout = close_timeout
        self.subprotocol = subprotocol
        self._max_size = max_size
        self._ended: TransportClosed | None = None
        self._sent_close = False
        self._aborted = False
        #: The tasks inside the server's receive() or send(), which abort() cancels.
        self._waiting: set[asyncio.Task[Any]] = set()

    async def _call(self, call: Awaitable[Any]) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            return await call
        except asyncio.CancelledError:
            # abort() cancelled it (and only it, if uncancel() leaves no cancellation)
            if self._aborted and task.uncancel() == 0:
                raise self._ended or TransportClosed(None, "aborted") from None
            raise
        finally:
            self._waiting.discard(task)

    async def receive(self) -> Message:
        while True:
            if self._ended is not None:
                raise self._ended
            event = await self._call(self._receive())
            kind = event.get("type")
            if kind == "websocket.receive":
                text = event.get("text")
                message: Message = text if text is not None else bytes(event.get("bytes") or b"")
                await self._check_size(message)
                return message
            if kind == "websocket.disconnect":
                code = event.get("code", CloseCode.NO_STATUS)
                # 1006 is the ASGI server saying no close frame came: the contract's None
                self._ended = TransportClosed(
                    None if code == CloseCode.ABNORMAL else code, event.get("reason") or ""
                )
                raise self._ended
            # websocket.connect again, or an event of an extension: not a message

    async def _check_size(self, message: Message) -> None:
        """Fail the connection with 1009 for a message over ``max_size`` (the close frame
        first, ``close_timeout`` at most: it waits behind what the peer has not read)."""
        limit = self._max_size
        if limit is None or len(message) <= limit // 4:
            return
        size = len(message.encode()) if isinstance(message, str) else len(message)
        if size <= limit:
            return
        self._ended = TransportClosed(
            CloseCode.MESSAGE_TOO_BIG, "message too big", error=MessageTooBigError(limit, size)
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout):
                await self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
        raise self._ended

    async def send(self, message: Message) -> None:
        if self._ended is not None:
            raise self._ended
        if isinstance(message, str):
            event: dict[str, Any] = {"type": "websocket.send", "text": message}
        else:
            event = {"type": "websocket.send", "bytes": bytes(message)}
        try:
            await self._call(self._send(event))
        except (OSError, RuntimeError) as exc:
            # uvicorn raises ClientDisconnected (an OSError), others RuntimeError or IOError
            raise self._ended or TransportClosed(None, f"connection gone ({exc})") from exc

    async def close(self, code: int, reason: str) -> None:
        if self._sent_close:
            return
        self._sent_close = True
        event = {"type": "websocket.close", "code": code, "reason": reason}
        with contextlib.suppress(OSError, RuntimeError):  # the connection is gone already
            await self._call(self._send(event))

    def abort(self) -> None:
        self._aborted = True
        if self._ended is None:
            self._ended = TransportClosed(None, "aborted")
        self._sent_close = True  # nothing more is sent
        for task in list(self._waiting):
            task.cancel()


class AsgiApp:
    """An ASGI 3 application over ``server`` (any ``ServerApp``).

    ``startup`` runs once, at the lifespan's startup or at the first request if no lifespan
    event came first; ``shutdown`` at the lifespan's shutdown (or when called)."""

    def __init__(
        self,
        server: ServerApp,
        options: ServerOptions,
        *,
        startup: Callable[[], None] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
        join: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.server = server
        self.options = options
        self._startup = startup
        self._shutdown = shutdown
        self._join = join
        self._joining: asyncio.Task[None] | None = None
        self._started = False

    def startup(self) -> None:
        """Start what the registry needs (on the running loop); only the first call acts."""
        if not self._started:
            self._started = True
            if self._startup is not None:
                self._startup()

    async def join(self) -> None:
        """Join the cluster (``backplane=``); only the first call acts, the others wait
        for it. Run at the lifespan's startup, else at the first request."""
        if self._join is None:
            return
        if self._joining is None:
            self._joining = asyncio.ensure_future(self._join())
        await asyncio.shield(self._joining)

    async def shutdown(self) -> None:
        """Close every session with 1001 and stop the watcher (bounded by close_timeout)."""
        if self._shutdown is not None:
            await self._shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        self.startup()
        if self._join is not None and (self._joining is None or not self._joining.done()):
            await self.join()
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, send)
        else:
            raise ValueError(f"polysocket.asgi serves http and websocket scopes, not {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    self.startup()
                    await self.join()
                except Exception as exc:
                    log.exception("polysocket could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    log.exception("polysocket did not shut down cleanly")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        request = request_of(scope, method)
        answer = self.server.route(request)
        if isinstance(answer, Accept):  # an upgrade the ASGI server handed over as plain HTTP
            answer = HttpResponse(
                501,
                b"this ASGI server does not run WebSockets here (for uvicorn: install"
                b" websockets, and do not pass --ws none)\n",
            )
        await send_answer(send, "http.response", answer, method)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with asyncio.timeout(self.options.open_timeout):
            first = await receive()
        if first.get("type") != "websocket.connect":
            return  # websocket.disconnect: the client left before its handshake was answered
        request = dataclasses.replace(
            request_of(scope, "GET"),
            upgrade=True,  # HTTP/2 WebSockets (RFC 8441) have no Upgrade header
            subprotocols=tuple(scope.get("subprotocols") or ()),
        )
        answer = self.server.route(request)
        if isinstance(answer, HttpResponse):
            if DENIAL_EXTENSION in (scope.get("extensions") or {}):
                await send_answer(send, "websocket.http.response", answer, "GET")
            else:  # the server answers 403, without the status or text the core chose
                log.debug(
                    "refusing %s with %d as 403 (no denial response)", request.path, answer.status
                )
                await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if answer.subprotocol is not None:
            accept["subprotocol"] = answer.subprotocol
        try:
            await send(accept)
        except OSError:  # uvicorn's ClientDisconnected: the client left meanwhile
            log.debug("%s: the client left before the handshake was answered", request.path)
            return
        options = self.options
        transport = AsgiTransport(
            receive, send, answer.subprotocol, options.max_size, options.close_timeout
        )
        await self.server.session(request, transport)


def request_of(scope: Scope, method: str) -> HttpRequest:
    """The core's request for an ASGI scope: the path as sent (``raw_path``, else ``path``
    encoded again) without ``root_path``, the query, every header line, the client."""
    root = scope.get("root_path") or ""
    raw = scope.get("raw_path")
    if raw is not None:
        target = bytes(raw).decode("latin-1")
    else:
        target = quote(scope.get("path") or "/", safe=PATH_SAFE)
    prefix = quote(root, safe=PATH_SAFE)
    if prefix and (target == prefix or target.startswith(prefix + "/")):
        target = target[len(prefix) :] or "/"
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    if query:
        target += "?" + query
    headers = [
        (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers") or ()
    ]
    client = scope.get("client")
    return http_request(method, target, headers, tuple(client) if client else None)


async def send_answer(send: Send, prefix: str, answer: HttpResponse, method: str) -> None:
    """``answer`` as ``{prefix}.start`` and one ``{prefix}.body``; the server frames it (a
    denial response gets its Content-Length from the server: uvicorn 0.44, say, adds one
    whatever the application sent)."""
    body = answer_payload(answer, method)
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in answer_headers(answer).items()
    ]
    if prefix == "http.response" and answer.status >= 200 and answer.status not in (204, 304):
        headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": prefix + ".start", "status": answer.status, "headers": headers})
    await send({"type": prefix + ".body", "body": body})


class AsgiEngine(Engine):
    """What :func:`app` checks its options against: it listens on no socket (the ASGI
    server does), so it has only what the core does itself (routing, the subprotocol choice);
    ``ssl``, ``compression``, keepalive and ``backlog`` are the ASGI server's."""

    name = "asgi"
    library = "polysocket"
    install_hint = "polysocket"
    capabilities = frozenset({"server", "subprotocols"})

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Any:
        raise RuntimeError("an ASGI application listens through its ASGI server, not serve()")


def app(
    root: str | os.PathLike[str] | None = None,
    reload: bool = True,
    *,
    origins: list[str] | None = None,
    authenticate: Authenticator | None = None,
    debug: bool = False,
    allow_module_handlers: bool = False,
    import_timeout: float = registry_folder.IMPORT_TIMEOUT,
    backplane: str | None = None,
    cluster: str | None = None,
    presence_expiry: float | None = None,
    **options: Any,
) -> AsgiApp:
    """The ASGI application serving the registry folder ``root`` (what ``polysocket serve``
    serves). With no arguments it is the factory of ``uvicorn polysocket.asgi:app
    --factory``: ``root`` is ``$POLYSOCKET_ROOT``, else the bundled sample.

    Takes ``serve()``'s arguments but ``host``, ``port`` and ``engine``, and its options but
    those the ASGI server owns (``ssl``, ``compression``, ``ping_interval``,
    ``ping_timeout``, ``backlog``: set them on the server). ``max_size`` is enforced here
    too (1009), whatever the server's own limit (uvicorn's ``--ws-max-size``).

    ``backplane``, ``cluster``, ``presence_expiry``: as for ``serve()``; the application
    joins the cluster at the lifespan's startup (else at the first request) and leaves it at
    its shutdown, so each ``uvicorn --workers N`` worker is a node."""
    from .cluster import DEFAULT_PRESENCE_EXPIRY
    from .server import SAMPLE_ROOT, EndpointServer

    owned = sorted(set(options) & set(SERVER_OWNED))
    if owned:
        where = ", ".join(f"{name}= (uvicorn {SERVER_OWNED[name]})" for name in owned)
        raise UnsupportedOptionError(
            f"the ASGI server runs the sockets, so set {where} on it, not on polysocket.asgi.app()"
        )
    if (
        isinstance(import_timeout, bool)
        or not isinstance(import_timeout, int | float)
        or import_timeout <= 0
    ):
        raise TypeError(
            f"import_timeout must be a positive number of seconds, not {import_timeout!r}"
        )
    engine = AsgiEngine()
    checked, subprotocols = server_options(engine, options)
    if root is None:
        root = os.environ.get(ROOT_VARIABLE) or SAMPLE_ROOT
    server = EndpointServer(
        Path(root),
        engine,
        checked,
        subprotocols,
        reload,
        origins=origins,
        authenticate=authenticate,
        debug=debug,
        allow_module_handlers=allow_module_handlers,
        import_timeout=float(import_timeout),
        backplane=backplane,
        cluster=cluster,
        presence_expiry=DEFAULT_PRESENCE_EXPIRY if presence_expiry is None else presence_expiry,
    )
    log.info(
        "serving %d endpoint(s) from %s as an ASGI application", len(server.scan.endpoints), root
    )
    return AsgiApp(
        server, checked, startup=server.watch, shutdown=server.close, join=server.join_cluster
    )
