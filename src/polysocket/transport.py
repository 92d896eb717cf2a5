"""The engine contract: what an engine implements, and nothing more.

An engine moves frames. Its :class:`Transport` sends one whole message, receives one whole
message, sends a close frame once, and drops the connection. The core wraps every transport
it opens (client and server) and owns the rest there, once for every engine: the end state,
refusing ``send`` after the end, an idempotent ``close``, reading what is left when nobody
reads, and ``close_timeout``. Helpers engines share (HTTP, close codes, sockets, keepalive,
session tracking) are in :mod:`polysocket.enginekit`.

Rules every ``Transport`` follows (the conformance suite checks each):

- ``receive()`` returns ``str`` for a text message and ``bytes`` for a binary one, whole
  (fragments reassembled). Pings are answered (whether or not anyone is receiving) and
  pongs consumed, never returned. The core calls it from one task at a time.
- When the connection has ended, ``receive()`` raises :class:`TransportClosed` with the code
  of the close frame the *peer* sent (``1005`` for one without a code; after our close frame,
  the peer's answer), or ``None`` when no close frame arrived. The core calls it no more.
- When this side fails the connection, ``TransportClosed.error`` is set and ``code`` is the
  code it failed it with: 1009 with :class:`MessageTooBigError` for a message over
  ``max_size``, 1002 with :class:`ProtocolViolation` for a broken frame or a close code the
  wire may not carry (``enginekit.valid_close_code``), 1007 for invalid UTF-8. The close
  frame goes out before the connection is dropped (RFC 6455 7.1.7).
- Keepalive (engines with ``"keepalive"``): a ping every ``ping_interval`` seconds; no pong
  within ``ping_timeout`` ends the connection with ``TransportClosed.error`` a
  :class:`KeepaliveTimeout` (``enginekit.Keepalive`` does all of it). Whatever code the
  engine gives, the core reports 1011 for it, the same on every engine.
- ``send()`` waits while the peer is slow (the library's flow control) and raises
  :class:`TransportClosed` when the connection is gone.
- ``close(code, reason)`` sends our close frame; the core calls it at most once, with a
  code and reason it has checked. It may return before the peer answers: the core keeps
  calling ``receive()``, which still returns the messages that arrive before the peer's close
  frame, and calls ``abort()`` after ``close_timeout``. A close frame from the peer is
  answered by the engine (or its library) inside ``receive()``.
- ``abort()`` drops the connection at once, without a handshake; a pending ``receive()``
  then raises :class:`TransportClosed`. It may be called at any time, more than once.
- ``max_size=None`` means no limit.

A server's transport may also be a :class:`FrameWriter`: ``broadcast`` then encodes a message
once and writes the same frame to every session, on the loop, with no per-session wake-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import socket

    from .reconnect import ReconnectPolicy

from .errors import KeepaliveTimeout

__all__ = [
    "CAPABILITIES",
    "DEFAULT_BACKLOG",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_WRITE_LIMIT",
    "Accept",
    "ClientOptions",
    "ConnectionOptions",
    "Engine",
    "FrameWriter",
    "HttpRequest",
    "HttpResponse",
    "KeepaliveTimeout",
    "Message",
    "MessageTooBigError",
    "ProtocolViolation",
    "Server",
    "ServerApp",
    "ServerOptions",
    "Transport",
    "TransportClosed",
]

Message = str | bytes

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
#: Defaults of ``max_queue`` and ``write_limit`` (bytes).
DEFAULT_MAX_QUEUE = 1024 * 1024
DEFAULT_WRITE_LIMIT = 1024 * 1024
#: Default listen backlog of a server (``ServerOptions.backlog``).
DEFAULT_BACKLOG = 2048

#: Every capability an engine may declare. An option that needs one the engine lacks is
#: refused (``UnsupportedOptionError``), and the conformance suite skips what needs it.
#: ``proxy``: the engine connects over ``ClientOptions.sock`` when the core sets it.
#: ``framing``: the engine reads and writes the frames itself (not through an ASGI server,
#: which hands over whole messages and a close code): it fails a message over ``max_size``
#: or ``enginekit.MAX_FRAGMENTS`` fragments with ``TransportClosed.error`` set (onError),
#: takes a close frame between fragments as a normal close, and after its own close frame
#: still delivers the messages that arrive and reports the peer's answer (or ``None``).
#: ``reuse_port``: the engine binds its own listening sockets and, with
#: ``ServerOptions.reuse_port``, binds them with ``SO_REUSEPORT`` (``enginekit.bind_sockets``
#: does), so that several processes listen on one port (``polysocket serve --workers``).
CAPABILITIES = frozenset(
    {
        "client",
        "server",
        "headers",
        "subprotocols",
        "tls",
        "deflate",
        "keepalive",
        "proxy",
        "framing",
        "reuse_port",
    }
)


class TransportClosed(Exception):
    """The connection has ended: ``code`` from the peer's close frame (``None``: none came);
    ``error`` when this side failed it, reported through ``onError`` before ``onClose``."""

    def __init__(
        self, code: int | None, reason: str = "", *, error: BaseException | None = None
    ) -> None:
        super().__init__(code, reason)
        self.code = None if code is None else int(code)  # libraries' IntEnums: plain ints
        self.reason = reason
        self.error = error


class ProtocolViolation(Exception):
    """The peer broke RFC 6455; this side failed the connection with ``code``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{text}; the connection was failed with close code {code}")
        self.code = code


class MessageTooBigError(Exception):
    """A received message was longer than ``max_size``."""

    def __init__(self, max_size: int | None, size: int | None = None) -> None:
        got = f"a {size}-byte message" if size is not None else "a message"
        super().__init__(
            f"received {got} over max_size={max_size} bytes; the connection was closed with"
            " 1009 (message too big). Raise max_size= if such messages are expected."
        )
        self.max_size = max_size
        self.size = size


@dataclass(frozen=True)
class ConnectionOptions:
    """Options of every connection, client or server: ``compression`` is ``"deflate"`` or
    ``None``; ``ping_interval`` seconds between keepalive pings (``None``: no pings);
    ``ping_timeout`` for the pong (``None``: ``ping_interval``), after which the connection
    ends (1011); ``ssl`` an :class:`ssl.SSLContext` (to verify the server, or to serve);
    ``open_timeout`` seconds for the opening handshake: a client gives up connecting after it,
    a server drops a connection that has not completed its handshake (or its plain HTTP
    request) that long after it was accepted, and an idle keep-alive connection that long
    after its last answer.

    Flow control, enforced by the core (engines may read them to size their own buffers):
    ``max_queue`` bytes of received messages may wait for the handler (each counted as its
    length plus :data:`polysocket.dispatch.MESSAGE_OVERHEAD`); above it the core stops
    calling ``receive()`` until the handler is down to a quarter, so the engine stops reading
    the socket (TCP backpressure). ``write_limit`` bytes may wait to be sent on one
    connection; a blocking ``send()`` waits up to ``send_timeout`` seconds for room, then
    raises ``SendTimeoutError``.

    Keepalive is on by default on both sides (websockets' and uvicorn's 20 s / 20 s): a peer
    that stopped answering, even one that stopped reading what this side sends, is dropped
    within ``ping_interval + ping_timeout`` (onError, then onClose with 1011).
    ``ping_interval=None`` turns it off. An engine without the ``"keepalive"`` capability
    takes the default, which it cannot honour, and refuses any other value."""

    open_timeout: float = 10.0
    close_timeout: float = 10.0
    max_size: int | None = DEFAULT_MAX_SIZE
    max_queue: int = DEFAULT_MAX_QUEUE
    write_limit: int = DEFAULT_WRITE_LIMIT
    send_timeout: float = 10.0
    compression: str | None = None
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    ssl: Any = None

    @property
    def keepalive_timeout(self) -> float | None:
        """``ping_timeout``, or ``ping_interval`` when only that was given."""
        if self.ping_interval is None:
            return None
        return self.ping_timeout if self.ping_timeout is not None else self.ping_interval


@dataclass(frozen=True)
class ClientOptions(ConnectionOptions):
    """``proxy`` is the user's choice (``True``: from the environment, ``None``: direct, or
    a URL; see :mod:`polysocket.proxies`), which the core carries out: engines never read it.

    ``sock`` is set by the core only (users cannot pass it): a socket already connected
    through the proxy's tunnel to the URI's host and port. An engine that declares the
    ``"proxy"`` capability must then use it instead of connecting (no DNS, no connect of its
    own) and, for ``wss://``, run TLS over it with ``server_hostname`` the URI's host and
    ``ssl`` (or the default context). The engine's transport owns it from then on; the core
    closes it if ``connect`` fails."""

    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocols: Sequence[str] = ()
    proxy: str | bool | None = True
    sock: socket.socket | None = None
    #: The core's (engines ignore it): how the client reconnects after a loss; ``None``: never.
    reconnect: ReconnectPolicy | None = None


@dataclass(frozen=True)
class ServerOptions(ConnectionOptions):
    """Which subprotocols to accept is the core's choice, made in ``ServerApp.route``; so is
    ``max_connections`` (WebSocket connections at once, handshakes in progress included;
    ``None``: no limit), which engines never see enforced but by the core's 503. An engine
    that binds its own sockets listens with ``backlog``."""

    max_connections: int | None = None
    #: Connections the kernel queues before they are accepted (``listen()``; the kernel caps
    #: it at ``net.core.somaxconn``). uvicorn's default: a burst of clients is not dropped.
    backlog: int = DEFAULT_BACKLOG
    #: Bind the listening sockets with ``SO_REUSEPORT`` (engines with ``"reuse_port"``): other
    #: processes of the same user that do too listen on the same port, and the kernel spreads
    #: new connections over them (Linux; ``polysocket serve --workers N`` relies on it).
    reuse_port: bool = False


@dataclass(frozen=True, slots=True, weakref_slot=True)  # one per session: no __dict__
class HttpRequest:
    """An incoming request, before any handshake (``enginekit.http_request`` builds it)."""

    method: str
    path: str
    query: str
    #: Lower-case names; repeated headers joined (RFC 9110), cookies with "; ".
    headers: Mapping[str, str]
    remote_address: tuple[str, int] | None
    upgrade: bool
    #: Subprotocols the client offered, in its order.
    subprotocols: tuple[str, ...] = ()
    #: Why the request target cannot be routed (``enginekit.request_path``); the core then
    #: answers 400. ``path`` is percent-decoded once; ``query`` is as sent.
    bad_target: str | None = None
    #: How many header lines the request had (repeats count each time): the core answers
    #: more than ``enginekit.MAX_HEADER_LINES`` with 431.
    header_lines: int = 0


@dataclass(frozen=True)
class HttpResponse:
    """A plain HTTP answer (a page, a document, a refusal); ``enginekit`` renders it."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Accept:
    """Complete the WebSocket handshake, selecting ``subprotocol`` (or none)."""

    subprotocol: str | None = None


@runtime_checkable
class Transport(Protocol):
    """One open WebSocket connection, as an engine hands it to the core."""

    #: The subprotocol the server selected, or ``None``.
    subprotocol: str | None

    async def send(self, message: Message) -> None: ...

    async def receive(self) -> Message: ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...


@runtime_checkable
class FrameWriter(Protocol):
    """What a server-side :class:`Transport` may add for ``broadcast``'s fast path."""

    def write_frame(self, frame: bytes, limit: int) -> bool | None:
        """Write ``frame`` (a whole encoded data frame: FIN, unmasked, no extension bits) to
        the socket now, without waiting; on the loop, only between the core's own sends.

        False, writing nothing, when the connection's write buffer is not empty and would
        hold more than ``limit`` bytes with it (the core closes the session as too slow);
        None when this connection cannot take an encoded frame (an extension such as
        permessage-deflate was negotiated, or it is closing): the core sends the message
        the ordinary way. ``enginekit.write_frame`` does this for an asyncio transport."""
        ...


class ServerApp(Protocol):
    """The core's side of a server; an engine calls it for every request."""

    def route(self, request: HttpRequest) -> HttpResponse | Accept:
        """Answer over HTTP (whether or not an upgrade was asked), or accept the upgrade.
        Pure and quick: it never blocks and never raises."""
        ...

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        """Run an accepted session; returns with the connection closed (1011 if it failed)
        or aborted (if cancelled). Never raises but ``CancelledError``. ``request`` is the
        very object ``route()`` accepted: the core keeps what it decided there (the
        principal, the admission count) until the session starts."""
        ...


class Server(Protocol):
    #: The port actually bound (useful with ``port=0``).
    port: int

    async def close(self) -> None:
        """Stop listening and drop what is left; the core has closed its sessions."""
        ...


class Engine:
    """Subclass it, fill in the class attributes, implement ``connect`` (and ``serve``).
    Import the library inside them, so that an engine whose library is missing still loads
    and can say so."""

    #: The engine name users pass as ``engine=``.
    name: ClassVar[str]
    #: Import name of the library the engine wraps (checked by :meth:`is_available`).
    library: ClassVar[str]
    #: What to ``pip install`` when the library is missing.
    install_hint: ClassVar[str]
    #: What it can do, out of :data:`CAPABILITIES`.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def is_available(self) -> bool:
        import importlib.util
        import sys

        # Imported already: no finder search (createWebsocket asks on every connection).
        if sys.modules.get(self.library) is not None:
            return True
        return importlib.util.find_spec(self.library) is not None

    def library_version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.library)
        except PackageNotFoundError:
            return None

    async def connect(self, uri: str, options: ClientOptions) -> Transport:
        """Open a client connection; return once the handshake is complete (the core bounds
        this by ``open_timeout``). Raise ``ConnectError.rejected(uri, status, detail,
        location=...)`` for every answer other than 101, with its ``Location`` header (or
        ``None``): never follow a redirect, the core does (``polysocket.redirects``)."""
        raise NotImplementedError

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Server:
        """Listen on ``host:port`` (engines with ``"server"``). For each request, send what
        ``app.route(request)`` answers; on :class:`Accept`, complete the handshake and keep
        the connection until ``app.session(request, transport)`` returns."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<engine {self.name!r}>"
