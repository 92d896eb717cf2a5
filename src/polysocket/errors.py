"""The public exceptions: one hierarchy, every message says what happened and what to do."""

from __future__ import annotations

import os

__all__ = [
    "BackplaneError",
    "ConnectError",
    "ConnectionClosedError",
    "DescriptorError",
    "EngineUnavailableError",
    "HandlerNotFoundError",
    "KeepaliveTimeout",
    "SendTimeoutError",
    "UnknownEngineError",
    "UnsupportedOptionError",
    "WebsocketError",
]


class WebsocketError(Exception):
    """Base class of every exception polysocket raises on purpose."""


class ConnectError(WebsocketError):
    """The opening handshake did not complete: refused, DNS failure, rejected, or timed out.

    ``status`` is the HTTP status of a rejected handshake, else ``None``; ``location`` the
    ``Location`` header of that answer (a redirect the client did not follow), else ``None``.
    """

    def __init__(
        self, message: str, *, status: int | None = None, location: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.location = location

    @classmethod
    def rejected(
        cls, uri: str, status: int, detail: str = "", *, location: str | None = None
    ) -> ConnectError:
        """The server answered the handshake with HTTP ``status`` instead of 101 (engines
        raise it for every such answer, redirects included, with their ``Location``)."""
        said = f" ({detail})" if detail else ""
        where = f", Location: {location}" if location is not None else ""
        return cls(
            f"{uri} rejected the WebSocket handshake with HTTP {status}{said}{where}; check the"
            " URI path and the server's logs.",
            status=status,
            location=location,
        )


class ConnectionClosedError(WebsocketError):
    """The connection is closed (or closing); ``code`` and ``reason`` tell how it ended."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class SendTimeoutError(WebsocketError, TimeoutError):
    """A message could not be queued: the connection's send queue stayed over ``write_limit``
    for ``send_timeout`` seconds (at once on the event loop, where ``send()`` cannot wait).

    The peer reads too slowly. The message was not sent; the connection stays open.
    ``queued`` is what was waiting to be sent, ``write_limit`` the limit.
    """

    def __init__(self, message: str, *, queued: int, write_limit: int) -> None:
        super().__init__(message)
        self.queued = queued
        self.write_limit = write_limit


class KeepaliveTimeout(WebsocketError, TimeoutError):
    """No pong came within ``ping_timeout``: the peer is unreachable or stopped answering.
    The connection ends with 1011 (``onError`` gets it, then ``onClose`` runs; the asyncio
    API's ``ConnectionClosedError`` has it as its cause). Engines end a connection with it
    through ``enginekit.Keepalive`` (``polysocket.transport`` re-exports it for them)."""

    def __init__(self, ping_timeout: float) -> None:
        super().__init__(
            f"keepalive ping timeout: no pong came within ping_timeout={ping_timeout} s, so"
            " the peer is unreachable or stopped answering; the connection was closed with"
            " 1011. Raise ping_timeout= for a slow link, or pass ping_interval=None to turn"
            " keepalive off."
        )
        self.ping_timeout = ping_timeout


class HandlerNotFoundError(WebsocketError):
    """A handler could not be found or loaded; the message names everything that was tried."""


class UnknownEngineError(WebsocketError):
    """No engine of that name is installed; the message lists the installed ones."""


class EngineUnavailableError(WebsocketError):
    """The engine is known but cannot run here (its library is missing or failed to load)."""


class UnsupportedOptionError(WebsocketError):
    """An option is unknown, or the chosen engine cannot honour it."""


class DescriptorError(WebsocketError):
    """A ``*.websocket`` endpoint descriptor is broken; the message names the file(s).

    ``files`` holds the paths of the descriptor(s) at fault.
    """

    def __init__(self, message: str, *, files: tuple[str | os.PathLike[str], ...] = ()) -> None:
        super().__init__(message)
        self.files = files


class BackplaneError(WebsocketError):
    """The backplane's broker cannot be reached, or the link to it was lost. Servers go on
    delivering to their own sessions meanwhile and reconnect with backoff (see
    :mod:`polysocket.cluster`); the message names the broker, never its password."""
