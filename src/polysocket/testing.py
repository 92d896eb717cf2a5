"""Testing endpoints and clients in-process, with no sockets.

:class:`TestClient` is the blocking way, for plain (pytest) tests of a registry's handlers,
in the spirit of Starlette's ``TestClient.websocket_connect``::

    from polysocket.testing import TestClient

    def test_echo():
        with TestClient("registry/") as client, client.connect("my-endpoint") as ws:
            ws.send("hi")
            assert ws.receive() == "hi"

Underneath is an in-memory engine, in the spirit of httpx's ``MockTransport``, which async
code uses directly. A client connection ends in a ``peer`` coroutine. ``MemoryEngine(peer)``
runs ``peer(end)`` as a task for each connection, ``end`` being the far end
(:class:`MemoryPeer`). Register the engine with ``install(engine)`` and use it like any
engine::

    async def echo(end):
        async for message in end:
            await end.send(message)

    with polysocket.testing.install(MemoryEngine(echo)):
        client = polysocket.createWebsocket("ws://test/", handler, engine="memory")

A server is a :class:`MemoryServer`, what ``MemoryEngine.serve()`` starts instead of
listening (``polysocket.serve(..., engine="memory")`` calls it). Its ``request()`` asks it
over HTTP; its ``connect()`` opens a WebSocket to it, runs the session exactly as an engine
does, and returns the client's end. A client connection through the engine to the port of
a running ``MemoryServer`` reaches it too (the host is not looked at)::

    engine = MemoryEngine()
    with polysocket.testing.install(engine):
        async with polysocket.serve("registry/", port=0, engine="memory", reload=False) as app:
            server = engine.servers[app.port]
            assert (await server.request("/")).status == 200
            end = await server.connect("/websockets/v4/service/my-endpoint")
            await end.send("hello")
            assert await end.receive() == "hello"
            await end.close()
            async with polysocket.connect(
                f"ws://test:{app.port}/websockets/v4/service/my-endpoint", engine="memory"
            ) as ws:
                ...

A server runs on the event loop that started it; connect to it from that loop (the asyncio
API, or :meth:`MemoryServer.connect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .enginekit.http import answer_reason, http_request
from .enginekit.sessions import SessionTracker
from .errors import ConnectError, ConnectionClosedError, WebsocketError
from .hookspecs import hookimpl
from .page import SERVICE_PATH
from .plugins import registry
from .runtime import background
from .server import EndpointServer, ServerSession, get_sessions, serve
from .transport import (
    Accept,
    ClientOptions,
    Engine,
    HttpRequest,
    HttpResponse,
    Message,
    MessageTooBigError,
    ServerApp,
    ServerOptions,
    TransportClosed,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "HandshakeRefused",
    "MemoryEngine",
    "MemoryPeer",
    "MemoryServer",
    "MemoryTransport",
    "ReceiveTimeout",
    "TestClient",
    "TestResponse",
    "TestSession",
    "install",
]

log = logging.getLogger("polysocket.testing")

#: Seconds a :class:`TestClient` waits for anything (start, a message, a close, ``onClose``)
#: unless told otherwise (``TestClient(timeout=...)``, ``receive(timeout=...)``).
DEFAULT_TIMEOUT = 5.0
#: Messages a :class:`TestSession` holds that the test has not received yet; past it the
#: session stops reading the connection (as a client library with a full queue does).
INBOX_SIZE = 1024


class HandshakeRefused(ConnectError):
    """The server answered a WebSocket handshake over HTTP instead of accepting it (404 for
    an unknown endpoint, 401/403 from authentication, origins or roles, 503 when full).
    ``status`` is the HTTP status, ``text`` the answer's body, ``headers`` its headers."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        text: str,
        headers: Mapping[str, str],
        location: str | None = None,
    ) -> None:
        super().__init__(message, status=status, location=location)
        self.text = text
        self.headers = dict(headers)


class ReceiveTimeout(WebsocketError, TimeoutError):
    """No message came from the server within the timeout; the connection stays open."""


@dataclass
class _Close:
    code: int | None
    reason: str = ""


@dataclass
class _Pipe:
    """One direction of a connection."""

    queue: asyncio.Queue[Message | _Close] = field(default_factory=asyncio.Queue)
    ended: _Close | None = None


class _End:
    """Shared by both ends: reads one pipe, writes the other."""

    def __init__(
        self,
        inbound: _Pipe,
        outbound: _Pipe,
        max_size: int | None,
        subprotocol: str | None = None,
    ) -> None:
        self._in = inbound
        self._out = outbound
        self._max_size = max_size
        self._close_sent: _Close | None = None
        self._receiving = False
        self.subprotocol = subprotocol
        #: Answer the other end's close frame inside ``receive()``, as libraries do. Set it
        #: False to go on sending after that frame, then answer with ``close()``.
        self.answer_close = True
        self.closed = asyncio.Event()

    @property
    def close_code(self) -> int | None:
        """The code of the close frame received (1006: the connection was dropped instead);
        ``None`` while the connection is open."""
        ended = self._in.ended
        if ended is None:
            return None
        return 1006 if ended.code is None else ended.code

    @property
    def close_reason(self) -> str | None:
        return None if self._in.ended is None else self._in.ended.reason

    async def send(self, message: Message) -> None:
        ended = self._in.ended
        # After the other end's close frame, sending goes on until we answer it (RFC 6455 5.5.1).
        if self._close_sent is not None or (ended is not None and ended.code is None):
            raise TransportClosed(ended.code if ended else None)
        await asyncio.sleep(0)  # a real socket write yields too
        self._out.queue.put_nowait(message)

    async def receive(self) -> Message:
        if self._in.ended is not None:
            raise TransportClosed(self._in.ended.code, self._in.ended.reason)
        self._receiving = True
        try:
            item = await self._in.queue.get()
        finally:
            self._receiving = False
        if isinstance(item, _Close):
            self._in.ended = item
            if self._close_sent is None and item.code is not None and self.answer_close:
                self._send_close(item.code, item.reason)
            self.closed.set()
            raise TransportClosed(item.code, item.reason)
        if self._max_size is not None and len(item) > self._max_size:
            self._send_close(1009, "message too big")
            self._in.ended = _Close(1009, "message too big")
            self.closed.set()
            raise TransportClosed(1009, error=MessageTooBigError(self._max_size, len(item)))
        return item

    def _send_close(self, code: int | None, reason: str) -> None:
        self._close_sent = _Close(code, reason)
        self._out.queue.put_nowait(_Close(code, reason))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (or answer the one received), then wait for the connection to
        end, reading and discarding what arrives first when nobody else reads."""
        if self._close_sent is None:
            self._send_close(code, reason)
        if not self._receiving:
            with contextlib.suppress(TransportClosed):
                while not self.closed.is_set():
                    await self.receive()
        await self.closed.wait()

    def abort(self) -> None:
        """Drop the connection: the other end sees no close frame (code 1006)."""
        if self._close_sent is None:
            self._send_close(None, "")
        if self._in.ended is None:
            self._in.ended = _Close(None)
            self._in.queue.put_nowait(_Close(None))
        self.closed.set()


class MemoryTransport(_End):
    """The engine's side of an in-memory connection, as the core gets it."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Only sends the close frame, as the contract allows: the core reads up to the
        peer's answer."""
        if self._close_sent is None and self._in.ended is None:
            self._send_close(code, reason)


class MemoryPeer(_End):
    """The far end of an in-memory connection: the ``peer`` coroutine's, or the client's
    end that :meth:`MemoryServer.connect` returns. ``async for`` ends with the connection."""

    def __init__(
        self,
        inbound: _Pipe,
        outbound: _Pipe,
        uri: str,
        options: ClientOptions,
        subprotocol: str | None = None,
    ) -> None:
        super().__init__(inbound, outbound, None, subprotocol)
        self.uri = uri
        self.options = options

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except TransportClosed:
                return


Peer = Callable[[MemoryPeer], Coroutine[Any, Any, None]]


class MemoryServer:
    """A running server with no sockets: what :meth:`MemoryEngine.serve` starts.

    Every request goes to ``app.route()``; an accepted connection runs
    ``app.session(request, transport)`` as a task until it returns, as an engine does.
    """

    def __init__(
        self, engine: MemoryEngine, host: str, port: int, app: ServerApp, options: ServerOptions
    ) -> None:
        self.host = host
        self.port = port
        self.app = app
        self.options = options
        self.closed = False
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._sessions = SessionTracker(app)
        self._client_ports = itertools.count(50000)

    def build_request(
        self,
        target: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        upgrade: bool = False,
        subprotocols: Sequence[str] = (),
    ) -> HttpRequest:
        """The :class:`HttpRequest` an engine would hand the app for ``target`` (a path with
        an optional ``?query``, as on a request line), from a client at ``127.0.0.1`` on a
        port of its own."""
        lines = {"host": f"{self.host}:{self.port}"}
        if upgrade:
            lines.update(upgrade="websocket", connection="Upgrade")
        if subprotocols:
            lines["sec-websocket-protocol"] = ", ".join(subprotocols)
        lines.update((name.lower(), value) for name, value in (headers or {}).items())
        peer = ("127.0.0.1", next(self._client_ports))
        return http_request(method, target, lines.items(), peer)

    async def request(
        self,
        target: str | HttpRequest,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """The app's answer to a plain HTTP request. An accepted upgrade (an
        :class:`HttpRequest` asking for one) comes back as 101 without running a session:
        :meth:`connect` runs it."""
        if not isinstance(target, HttpRequest):
            target = self.build_request(target, method=method, headers=headers)
        answer = self._route(target)
        if isinstance(answer, Accept):
            chosen = {"Sec-WebSocket-Protocol": answer.subprotocol} if answer.subprotocol else {}
            return HttpResponse(101, headers={"Upgrade": "websocket", **chosen})
        return answer

    async def connect(
        self,
        target: str | HttpRequest,
        *,
        subprotocols: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> MemoryPeer:
        """Open a WebSocket connection to ``target`` and return the client's end.

        The session has started when this returns (it ran up to its first wait). Raises
        :class:`ConnectError` with the status when the app answers over HTTP."""
        if not isinstance(target, HttpRequest):
            target = self.build_request(
                target, headers=headers, upgrade=True, subprotocols=subprotocols
            )
        options = ClientOptions(headers=dict(target.headers), subprotocols=target.subprotocols)
        inbound, outbound, subprotocol = await self._accept(target)
        return MemoryPeer(inbound, outbound, self._uri(target), options, subprotocol)

    async def close(self) -> None:
        """Stop accepting, drop the connections left, wait for their sessions to return
        (``close_timeout`` at most, then cancel them). Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._engine.servers.get(self.port) is self:
            del self._engine.servers[self.port]
        await self._sessions.close(self.options.close_timeout)

    @property
    def session_count(self) -> int:
        """How many sessions are running."""
        return len(self._sessions)

    def _uri(self, request: HttpRequest) -> str:
        query = f"?{request.query}" if request.query else ""
        return f"ws://{self.host}:{self.port}{request.path}{query}"

    def _route(self, request: HttpRequest) -> HttpResponse | Accept:
        if self.closed:
            raise ConnectionRefusedError(f"the memory server on port {self.port} is closed")
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                "this memory server runs on another event loop; connect from the loop that"
                " started it (the asyncio API, or MemoryServer.connect)"
            )
        return self.app.route(request)

    async def _accept(self, request: HttpRequest) -> tuple[_Pipe, _Pipe, str | None]:
        """Route an upgrade request; on Accept start its session and return the client's
        pipes (in, out) and the subprotocol selected."""
        answer = self._route(request)
        if isinstance(answer, HttpResponse):
            location = next((v for k, v in answer.headers.items() if k.lower() == "location"), None)
            rejected = ConnectError.rejected(
                self._uri(request), answer.status, answer_reason(answer), location=location
            )
            text = answer.body.decode("utf-8", "replace")
            said = f" The server said: {text.strip()}" if text.strip() else ""
            raise HandshakeRefused(
                f"{rejected}{said}",
                status=answer.status,
                text=text,
                headers=answer.headers,
                location=location,
            )
        to_server, to_client = _Pipe(), _Pipe()
        transport = MemoryTransport(to_server, to_client, self.options.max_size, answer.subprotocol)
        self._sessions.start(request, transport)
        # One turn of the loop: the session's first step runs, so it is registered by now.
        await asyncio.sleep(0)
        return to_client, to_server, answer.subprotocol


class MemoryEngine(Engine):
    """An engine whose connections end in ``peer`` coroutines or in a :class:`MemoryServer`
    instead of a network. ``refuse=STATUS`` refuses every client handshake with it."""

    library = "polysocket"
    install_hint = "polysocket"

    def __init__(
        self,
        peer: Peer | None = None,
        name: str = "memory",
        capabilities: frozenset[str] = frozenset({"client", "server", "headers", "subprotocols"}),
        refuse: int | None = None,
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.capabilities = capabilities  # type: ignore[misc]
        self._peer = peer
        self._refuse = refuse
        #: The far end of every connection made to ``peer``, oldest first.
        self.peers: list[MemoryPeer] = []
        #: The running servers, by port.
        self.servers: dict[int, MemoryServer] = {}
        self._ports = itertools.count(40000)
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self, uri: str, options: ClientOptions) -> MemoryTransport:
        if self._refuse is not None:
            raise ConnectError.rejected(uri, self._refuse)
        parts = urlsplit(uri)
        server = self.servers.get(parts.port or (443 if parts.scheme == "wss" else 80))
        if server is not None:
            request = server.build_request(
                f"{parts.path}?{parts.query}" if parts.query else parts.path,
                headers={"host": parts.netloc, **options.headers},
                upgrade=True,
                subprotocols=options.subprotocols,
            )
            inbound, outbound, subprotocol = await server._accept(request)
            return MemoryTransport(inbound, outbound, options.max_size, subprotocol)
        if self._peer is None:
            raise ConnectionRefusedError(f"no memory server on {parts.netloc} and no peer")
        to_peer, to_client = _Pipe(), _Pipe()
        transport = MemoryTransport(to_client, to_peer, options.max_size)
        peer = MemoryPeer(to_peer, to_client, uri, options)
        self.peers.append(peer)
        task = asyncio.get_running_loop().create_task(self._peer(peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return transport

    async def serve(
        self, host: str, port: int, app: ServerApp, options: ServerOptions
    ) -> MemoryServer:
        if port in self.servers:
            raise OSError(errno.EADDRINUSE, f"port {port} is taken by another memory server")
        if port == 0:
            port = next(p for p in self._ports if p not in self.servers)
        server = MemoryServer(self, host, port, app, options)
        self.servers[port] = server
        return server


@contextlib.contextmanager
def install(engine: Engine) -> Iterator[Engine]:
    """Register ``engine`` as a plugin for the duration of the ``with`` block."""

    class Plugin:
        @hookimpl
        def polysocket_register_engines(self, register: Callable[[Engine], None]) -> None:
            register(engine)

    plugin_name = f"polysocket.testing:{engine.name}"
    registry.register_plugin(Plugin(), plugin_name)
    try:
        yield engine
    finally:
        registry.unregister_plugin(plugin_name)


# -- the blocking test client ----------------------------------------------------------------


@dataclass(frozen=True)
class TestResponse:
    """A server's answer to :meth:`TestClient.get`."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    status: int
    content: bytes
    content_type: str
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Ended:
    """The inbox's last item: the connection ended."""


_ENDED = _Ended()


class TestSession:
    """One WebSocket connection of a :class:`TestClient` to an endpoint; what
    :meth:`TestClient.connect` returns. Use it in a ``with`` block (leaving it closes the
    connection with 1000 and waits for the endpoint's ``onClose``), or call :meth:`close`.

    It reads the connection all the time, as a client library does: the server's messages
    wait for :meth:`receive` (:data:`INBOX_SIZE` at most; then it stops reading), and a
    close frame from the server is answered at once, so the endpoint's ``onClose`` runs
    whether or not the test receives. ``session`` is the endpoint's side of the connection,
    what ``getSession()`` returns in its handler (``None`` if the endpoint was removed).
    """

    __test__ = False

    def __init__(
        self,
        end: MemoryPeer,
        session: ServerSession | None,
        path: str,
        timeout: float,
        forget: Callable[[TestSession], None],
    ) -> None:
        self.session = session
        self.path = path
        self.subprotocol = end.subprotocol
        self._end = end
        self._timeout = timeout
        self._forget = forget
        self._inbox: asyncio.Queue[Message | _Ended] = asyncio.Queue(INBOX_SIZE)
        self._received_end = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def __repr__(self) -> str:
        state = "open" if self.close_code is None else f"closed {self.close_code}"
        return f"<TestSession {self.path} {state}>"

    async def _read(self) -> None:
        try:
            while True:
                await self._inbox.put(await self._end.receive())
        except TransportClosed:
            pass
        await self._inbox.put(_ENDED)

    @property
    def close_code(self) -> int | None:
        """The code the connection ended with (the server's close frame, or its answer to
        ours; 1006 if it was dropped), ``None`` while it is open."""
        return self._end.close_code

    @property
    def close_reason(self) -> str | None:
        """The reason of that close frame (``None`` while the connection is open)."""
        return self._end.close_reason

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a text (``str``) or binary message to the endpoint (its ``onMessage`` gets
        it). Raises :class:`~polysocket.ConnectionClosedError` once the connection is
        closing or closed."""
        if isinstance(message, bytearray | memoryview):
            message = bytes(message)
        if not isinstance(message, str | bytes):
            raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")
        self._call(self._send(message), "TestSession.send()")

    async def _send(self, message: Message) -> None:
        try:
            await self._end.send(message)
        except TransportClosed:
            raise self._closed_error("cannot send") from None

    def receive(self, timeout: float | None = None) -> str | bytes:
        """The next message from the endpoint (``str`` for text, ``bytes`` for binary),
        waiting ``timeout`` seconds at most (default: the client's).

        Raises :class:`ReceiveTimeout` when none comes in time (the connection stays open),
        and :class:`~polysocket.ConnectionClosedError`, with the close ``code`` and
        ``reason``, once the connection has ended and every message before that was read."""
        wait = self._timeout if timeout is None else timeout
        message: Message = self._call(self._receive(wait), "TestSession.receive()", wait)
        return message

    async def _receive(self, timeout: float) -> Message:
        # the reader is gone after close() or the client's exit: what it kept, then the end
        if self._received_end or (self._inbox.empty() and self._reader.done()):
            raise self._closed_error("nothing more to receive")
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            raise ReceiveTimeout(
                f"no message from {self.path} within {timeout:g} s; the connection is still"
                " open. Did the handler reply (return a value from onMessage, or send)? Pass"
                " receive(timeout=...) to wait longer."
            ) from None
        if isinstance(item, _Ended):
            self._received_end = True
            raise self._closed_error("nothing more to receive")
        return item

    def _closed_error(self, what: str) -> ConnectionClosedError:
        code, reason = self.close_code, self.close_reason or ""
        said = f" ({reason})" if reason else ""
        return ConnectionClosedError(
            f"{what}: the connection to {self.path} is closed, with code {code}{said}",
            code=code,
            reason=reason,
        )

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``: wait for the server's answer,
        then for the endpoint's ``onClose`` to return (the client's timeout at most for
        each). Messages that came before still wait for :meth:`receive`; what comes while
        closing is dropped. Does nothing more once closed."""
        self._call(self._close(code, reason), "TestSession.close()")
        self._forget(self)
        self._wait_for_on_close()

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self._end.close(code, reason), self._timeout)
        except TimeoutError:
            log.warning(
                "%s: the server did not answer the close frame within %g s; dropping the"
                " connection",
                self.path,
                self._timeout,
            )
            self._end.abort()
        finally:
            self._reader.cancel()

    def _wait_for_on_open(self) -> None:
        """Wait until the endpoint's ``onOpen`` has returned, so that what it does (a
        greeting, a broadcast) comes before anything the test does next."""
        session = self.session
        if session is None:
            return
        dispatcher = session._connection.dispatcher
        if not dispatcher.has_callback("onopen"):
            return
        deadline = time.monotonic() + self._timeout
        # Nothing else is queued for the handler yet (the test has sent nothing): once the
        # open has been taken and the dispatcher has nothing scheduled, onOpen has returned.
        while dispatcher.opens < 1 or dispatcher._scheduled:
            if dispatcher.finished.is_set():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the handler of {self.path} did not return from onOpen within"
                    f" {self._timeout:g} s (blocked?). Pass TestClient(timeout=...) to wait"
                    " longer."
                )
            time.sleep(0.001)

    def _wait_for_on_close(self) -> None:
        session = self.session
        if session is None:
            return
        if not session._connection.dispatcher.finished.wait(self._timeout):
            raise TimeoutError(
                f"the handler of {self.path} did not finish onClose within {self._timeout:g} s"
                " of the connection closing: it is still in a callback (blocked?)."
                " Pass TestClient(timeout=...) to wait longer."
            )

    def _call(self, coroutine: Coroutine[Any, Any, Any], what: str, wait: float = 0.0) -> Any:
        # the coroutines bound their own waits; this bound only catches a blocked loop
        return background.run(coroutine, what, wait + self._timeout + 1)

    def __iter__(self) -> Iterator[str | bytes]:
        """Every message until the connection ends (a message late by more than the
        timeout raises :class:`ReceiveTimeout`)."""
        while True:
            try:
                yield self.receive()
            except ConnectionClosedError:
                return

    def __enter__(self) -> TestSession:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TestClient:
    """Serve a registry folder in-process and talk to it with no sockets, for tests::

        with TestClient("registry/") as client:
            assert client.get("/").status == 200
            with client.connect("my-endpoint") as ws:
                ws.send("hi")
                assert ws.receive() == "hi"

    Entering starts ``polysocket.serve(root, engine=..., reload=False, **serve_options)``
    on an in-memory engine of its own, on polysocket's background event loop; the
    endpoints' handlers run on handler threads exactly as on a real server (ordering,
    replies, ``getSession()``, ``broadcast``, ``getSessions``, errors to ``onError``).
    ``root=None`` serves the bundled sample. ``serve_options`` are ``serve()``'s
    (``authenticate``, ``origins``, ``max_connections``, ``reload=True`` for live reload...).
    ``timeout`` bounds every wait of the client and its sessions (seconds).

    Leaving closes the sessions still open as a server shutting down does (1001: their
    ``onClose`` runs), stops the server and unregisters the engine. A TestClient is used
    from one thread; several may run at once.
    """

    __test__ = False

    _numbers = itertools.count(1)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **serve_options: Any,
    ) -> None:
        for taken in ("engine", "host", "port"):
            if taken in serve_options:
                raise TypeError(
                    f"TestClient chooses {taken}= itself (an in-memory engine of its own);"
                    " use polysocket.serve() for a server on a real engine"
                )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise TypeError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.root = root
        self.timeout = float(timeout)
        self._options = {"reload": False, **serve_options}
        self._engine = MemoryEngine(name=f"memory-testclient-{next(self._numbers)}")
        self._installed: contextlib.ExitStack | None = None
        self._serving: serve | None = None
        self._app: EndpointServer | None = None
        self._server: MemoryServer | None = None
        self._sessions: list[TestSession] = []
        self._lock = threading.Lock()

    @property
    def app(self) -> EndpointServer:
        """The running server (``port``, ``scan``, ``reload()``...); only inside ``with``."""
        if self._app is None:
            raise RuntimeError("the TestClient is not running: use it in a with block")
        return self._app

    def __enter__(self) -> TestClient:
        if self._installed is not None:
            raise RuntimeError("this TestClient is running already; make another one")
        stack = contextlib.ExitStack()
        stack.enter_context(install(self._engine))
        try:
            self._serving = serve(self.root, port=0, engine=self._engine.name, **self._options)
            self._app = background.run(
                self._serving.__aenter__(), "TestClient.__enter__", self.timeout
            )
        except BaseException:
            stack.close()
            raise
        self._server = self._engine.servers[self._app.port]
        self._installed = stack
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, serving = self._installed, self._serving
        if stack is None or serving is None:
            return
        try:
            with self._lock:
                left, self._sessions = self._sessions, []
            background.run(self._shut_down(serving, left), "TestClient.__exit__")
        finally:
            self._installed = self._serving = self._app = self._server = None
            stack.close()

    async def _shut_down(self, serving: serve, left: list[TestSession]) -> None:
        """Close the server as its shutdown does (1001 to every session, onClose waited
        for, close_timeout at most), with each session still open answering its close."""
        for session in left:
            session._reader.cancel()
        draining = [asyncio.ensure_future(_drain(session._end)) for session in left]
        try:
            await serving.__aexit__(None, None, None)
        finally:
            if draining:
                _, late = await asyncio.wait(draining, timeout=self.timeout)
                for task in late:
                    task.cancel()
            for session in left:
                session._end.abort()

    def get(self, path: str, *, headers: Mapping[str, str] | None = None) -> TestResponse:
        """The server's answer to ``GET path`` (the page at ``/``, the JSON list at
        ``/websockets/v4/endpoints``, 404, 426...)."""
        server = self._running()

        async def ask() -> HttpResponse:
            return await server.request(path, headers=headers)

        answer = background.run(ask(), "TestClient.get()", self.timeout)
        return TestResponse(answer.status, answer.body, answer.content_type, answer.headers)

    def connect(
        self,
        endpoint: str,
        *,
        subprotocols: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> TestSession:
        """Open a WebSocket connection to ``endpoint`` (its name, or a path starting with
        ``/``, with an optional ``?query``); the endpoint's ``onOpen`` has returned when
        this does. Raises :class:`HandshakeRefused` (``status``, ``text``) when the
        server answers over HTTP: 404 for an unknown endpoint, 401/403 when authentication,
        origins or roles refuse it, 503 when it is full."""
        server = self._running()
        target = endpoint if endpoint.startswith("/") else SERVICE_PATH + endpoint
        path = target.partition("?")[0]

        async def open_session() -> TestSession:
            request = server.build_request(
                target, headers=headers, upgrade=True, subprotocols=subprotocols
            )
            end = await server.connect(request)
            mine = next(
                (
                    s
                    for s in get_sessions(path[len(SERVICE_PATH) :])
                    if isinstance(s, ServerSession) and s.request_headers is request.headers
                ),
                None,
            )
            return TestSession(end, mine, path, self.timeout, self._forget)

        session: TestSession = background.run(open_session(), "TestClient.connect()", self.timeout)
        with self._lock:
            self._sessions.append(session)
        try:
            session._wait_for_on_open()
        except BaseException:
            session.close()
            raise
        return session

    def _forget(self, session: TestSession) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def _running(self) -> MemoryServer:
        if self._server is None:
            raise RuntimeError("the TestClient is not running: use it in a with block")
        return self._server


async def _drain(end: MemoryPeer) -> None:
    """Read and drop what comes until the connection ends (answering its close frame)."""
    with contextlib.suppress(TransportClosed):
        while True:
            await end.receive()
