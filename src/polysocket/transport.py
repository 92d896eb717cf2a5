"""The engine contract: what an engine implements, and nothing more.

An engine moves frames. It connects (client side), sends one whole text or binary message,
receives one whole message, and closes with a code and reason. Everything else - handlers,
threads, ordering, registries, close-code bookkeeping - lives in the core, once.

Rules every ``Transport`` follows (the conformance suite checks each):

- ``receive()`` returns ``str`` for a text message and ``bytes`` for a binary one, whole
  (fragments reassembled). Pings and pongs are answered or ignored, never returned. The core
  calls it from one task at a time; ``send()`` and ``close()`` may run alongside it.
- When the connection has ended, ``receive()`` raises :class:`TransportClosed` carrying the
  code of the close frame the *peer* sent (``1005`` for a close frame without a code; after
  our own ``close()``, the peer's answer), or ``None`` (or 1006) when no close frame arrived.
  It keeps raising it afterwards.
- When this side fails the connection (a message over ``max_size``, a protocol violation),
  ``TransportClosed.error`` is set and ``code`` is the code this side failed it with: 1009
  with a :class:`MessageTooBigError` for an oversized message, 1002 with a
  :class:`ProtocolViolation` for a broken frame or a close code that
  :func:`valid_close_code` refuses, 1007 for invalid UTF-8 (text or close reason). The
  failing side sends that close frame before it drops the connection (RFC 6455 7.1.7).
- ``send()`` waits while the peer is slow (the library's flow control) and raises
  :class:`TransportClosed` once the connection is closed.
- ``close(code, reason)`` runs the closing handshake, bounded by ``close_timeout``; it is
  idempotent and makes a pending ``receive()`` raise :class:`TransportClosed`. Messages that
  arrive before the peer's close frame are still returned to a pending ``receive()``; with no
  reader, the engine reads and discards them itself so the handshake can finish. The core has
  already checked ``code`` and ``reason`` (a sendable code, at most 123 bytes).
- ``abort()`` drops the connection at once, without a handshake.
- ``max_size=None`` means no limit.
"""

from __future__ import annotations

import email.utils
import http
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "CAPABILITY_OF_OPTION",
    "DEFAULT_MAX_SIZE",
    "FRAMING_HEADERS",
    "TOKEN_CHARS",
    "Accept",
    "ClientOptions",
    "ConnectionOptions",
    "Engine",
    "HttpRequest",
    "HttpResponse",
    "Message",
    "MessageTooBigError",
    "ProtocolViolation",
    "Server",
    "ServerApp",
    "ServerOptions",
    "Transport",
    "TransportClosed",
    "valid_close_code",
]

Message = str | bytes

DEFAULT_MAX_SIZE = 16 * 1024 * 1024


class TransportClosed(Exception):
    """Raised by a transport once its connection has ended.

    ``code`` is the code of the close frame received from the peer, or ``None`` when none
    arrived. ``error`` is set when the connection failed on this side (an oversized message,
    a protocol violation); the core reports it through ``onError`` before ``onClose``.
    """

    def __init__(
        self, code: int | None, reason: str = "", *, error: BaseException | None = None
    ) -> None:
        super().__init__(code, reason)
        # libraries hand out their own IntEnums; users get plain ints
        self.code = None if code is None else int(code)
        self.reason = reason
        self.error = error


def valid_close_code(code: int) -> bool:
    """Whether ``code`` may travel in a close frame (RFC 6455 7.4.1, 7.4.2 and the IANA
    registry): 1000-1003, 1007-1014 and the application range 3000-4999. 1005, 1006 and
    1015 only ever describe a connection locally; anything else is a protocol error."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class ProtocolViolation(Exception):
    """The peer broke RFC 6455; this side failed the connection with ``code`` (1002, or
    1007 for invalid UTF-8)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{text}; the connection was failed with close code {code}")
        self.code = code


class MessageTooBigError(Exception):
    """A received message was longer than ``max_size``."""

    def __init__(self, max_size: int, size: int | None = None) -> None:
        got = f"a {size}-byte message" if size is not None else "a message"
        super().__init__(
            f"received {got} over max_size={max_size} bytes; the connection was closed with"
            " 1009 (message too big). Raise max_size= if such messages are expected."
        )
        self.max_size = max_size
        self.size = size


@dataclass(frozen=True)
class ConnectionOptions:
    """Options of every connection, client or server; the same names and defaults everywhere.

    - ``compression``: ``"deflate"`` (permessage-deflate) or ``None`` (off, the default).
    - ``ping_interval``: seconds between keepalive pings, or ``None`` (no pings, the default).
    - ``ping_timeout``: seconds to wait for the pong before the connection counts as lost
      (default: ``ping_interval``). A lost connection ends with ``TransportClosed(None)``.
    - ``ssl``: an :class:`ssl.SSLContext` (client: to verify the server, e.g. one that trusts
      a private CA; server: the certificate to serve ``wss://`` with).
    """

    close_timeout: float = 10.0
    max_size: int | None = DEFAULT_MAX_SIZE
    compression: str | None = None
    ping_interval: float | None = None
    ping_timeout: float | None = None
    ssl: Any = None

    @property
    def keepalive_timeout(self) -> float | None:
        """``ping_timeout``, or ``ping_interval`` when only that was given."""
        if self.ping_interval is None:
            return None
        return self.ping_timeout if self.ping_timeout is not None else self.ping_interval


@dataclass(frozen=True)
class ClientOptions(ConnectionOptions):
    """Client options: the common ones plus the handshake's."""

    open_timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocols: Sequence[str] = ()


@dataclass(frozen=True)
class ServerOptions(ConnectionOptions):
    """Server options: the common ones (which subprotocols to accept is the core's choice)."""


#: Option -> the engine capability it needs when set to something other than its default.
CAPABILITY_OF_OPTION: dict[str, str] = {
    "headers": "headers",
    "subprotocols": "subprotocols",
    "compression": "deflate",
    "ping_interval": "keepalive",
    "ping_timeout": "keepalive",
    "ssl": "tls",
}


@dataclass(frozen=True)
class HttpRequest:
    """An incoming HTTP request, as the engine hands it to the core before any handshake."""

    method: str
    path: str
    query: str
    #: Header names in lower case.
    headers: Mapping[str, str]
    remote_address: tuple[str, int] | None
    #: True when the request asks for a WebSocket upgrade.
    upgrade: bool
    #: Subprotocols the client offered, in its order.
    subprotocols: tuple[str, ...] = ()


#: Header names that belong to the engine's HTTP framing: an answer's own values are ignored.
FRAMING_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "date"})
#: The characters of an HTTP token (RFC 9110 5.6.2): methods and header names.
TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclass(frozen=True)
class HttpResponse:
    """A plain HTTP answer: a page, a JSON document, or a refusal (404, 426...).

    An engine whose library writes HTTP answers itself sets ``status``, ``content_type`` and
    ``headers`` on it (leaving out :data:`FRAMING_HEADERS`); one that writes the bytes
    itself sends :attr:`reason`, :meth:`fields` and :meth:`payload`.
    """

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The status line's reason phrase (``"Unknown"`` for a status HTTP does not name)."""
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return "Unknown"

    def fields(self) -> list[tuple[str, str]]:
        """Every header field to send, framing included: ``Date``, ``Content-Type``, the
        answer's own headers, ``Content-Length`` (not for 1xx, 204, 304) and ``Connection:
        close``. Raises ``ValueError`` for a name that is not an HTTP token or a value with a
        line break (a header injection)."""
        chosen: dict[str, tuple[str, str]] = {}

        def put(name: str, value: str) -> None:
            if not name or not set(name) <= TOKEN_CHARS or "\r" in value or "\n" in value:
                raise ValueError(f"invalid response header {name!r}: {value!r}")
            chosen[name.lower()] = (name, value)

        put("Date", email.utils.formatdate(usegmt=True))
        put("Content-Type", self.content_type)
        for name, value in self.headers.items():
            if name.lower() not in FRAMING_HEADERS:
                put(name, value)
        if self._may_have_body():
            put("Content-Length", str(len(self.body)))
        put("Connection", "close")
        return list(chosen.values())

    def payload(self, method: str) -> bytes:
        """The body to send: none in answer to HEAD, nor for 1xx, 204 and 304."""
        return bytes(self.body) if self._may_have_body() and method != "HEAD" else b""

    def _may_have_body(self) -> bool:
        return self.status >= 200 and self.status not in (204, 304)


@dataclass(frozen=True)
class Accept:
    """Complete the WebSocket handshake, selecting ``subprotocol`` (or none)."""

    subprotocol: str | None = None


class ServerApp(Protocol):
    """The core's side of a server; an engine calls it for every request."""

    async def route(self, request: HttpRequest) -> HttpResponse | Accept:
        """Decide what to do with a request: answer it over HTTP, or accept the upgrade."""
        ...

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        """Run one accepted WebSocket session; returns once the connection has ended.

        The transport is closed by then (1011 if the session failed), or aborted if this is
        cancelled: the engine awaits it and has nothing left to close. It never raises but
        ``CancelledError``.
        """
        ...


class Server(Protocol):
    """A listening server, as ``Engine.serve`` returns it."""

    #: The port actually bound (useful with ``port=0``).
    port: int

    async def close(self) -> None:
        """Stop listening and release the socket. The core has closed the sessions before."""
        ...


@runtime_checkable
class Transport(Protocol):
    """One open WebSocket connection, as an engine hands it to the core."""

    #: The subprotocol the server selected, or ``None``.
    subprotocol: str | None

    async def send(self, message: Message) -> None: ...

    async def receive(self) -> Message: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def abort(self) -> None: ...


class Engine:
    """Base class of an engine. Subclass it, fill in the class attributes, implement ``connect``.

    The library is imported inside ``connect`` (not at module import), so that an engine whose
    library is missing still loads and can say so.
    """

    #: The engine name users pass as ``engine=``.
    name: ClassVar[str]
    #: Import name of the library the engine wraps (checked by :meth:`is_available`).
    library: ClassVar[str]
    #: What to ``pip install`` when the library is missing.
    install_hint: ClassVar[str]
    #: What this engine can do beyond the required minimum (e.g. ``"headers"``).
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def is_available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec(self.library) is not None

    def library_version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.library)
        except PackageNotFoundError:
            return None

    async def connect(self, uri: str, options: ClientOptions) -> Transport:
        """Open a client connection; return once the opening handshake is complete.

        Raise :class:`polysocket.ConnectError` for a rejected handshake (with ``status``);
        any other exception is wrapped into one by the core. The core bounds this call
        by ``open_timeout``.
        """
        raise NotImplementedError

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Server:
        """Listen on ``host:port``; hand every request to ``app`` (engines with ``"server"``).

        For each HTTP request, build an :class:`HttpRequest` and ``await app.route(...)``.
        An :class:`HttpResponse` is sent as is, whether or not the request asked for an
        upgrade. On :class:`Accept`, complete the handshake and ``await app.session(request,
        transport)`` with a server-side :class:`Transport` that follows the same rules as a
        client one; keep the connection until it returns.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<engine {self.name!r}>"
