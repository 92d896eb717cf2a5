"""An in-memory engine for tests, in the spirit of httpx's ``MockTransport``: no sockets.

A client connection ends in a ``peer`` coroutine. ``MemoryEngine(peer)`` runs ``peer(end)``
as a task for each connection, ``end`` being the far end (:class:`MemoryPeer`). Register the
engine with ``install(engine)`` and use it like any engine::

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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .enginekit.http import answer_reason, http_request
from .enginekit.sessions import SessionTracker
from .errors import ConnectError
from .hookspecs import hookimpl
from .plugins import registry
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

__all__ = ["MemoryEngine", "MemoryPeer", "MemoryServer", "MemoryTransport", "install"]


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
            raise ConnectError.rejected(
                self._uri(request), answer.status, answer_reason(answer), location=location
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
