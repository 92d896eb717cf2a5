"""The server: a ``uvicorn.Server`` running :class:`polysocket.asgi.AsgiApp` on the sockets
of ``enginekit.bind_sockets``, in the caller's loop, with no signal handlers of its own (the
caller stops it with :meth:`UvicornServer.close`)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, TypeVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol

from polysocket.asgi import AsgiApp
from polysocket.enginekit import HandshakeDeadline, bind_sockets
from polysocket.transport import ServerApp, ServerOptions

from ..websockets._server import _header_limits
from ..websockets._transport import PolysocketProtocol

_log = logging.getLogger("polysocket.engines.uvicorn")


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the core's handshake deadline from accept on: a
    connection that sends nothing, or half a request, is dropped ``open_timeout`` after it
    was accepted (uvicorn's own keep-alive timer runs only after an answer); an idle
    keep-alive connection ``open_timeout`` after its last answer. At the upgrade the
    WebSocket protocol takes the connection, and its own deadline."""

    #: Set on the subclass each server makes (:func:`timed`).
    open_timeout: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: HandshakeDeadline | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline = HandshakeDeadline(transport, self.open_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.deadline is not None:
            self.deadline.restart()

    def handle_websocket_upgrade(self, event: Any) -> None:
        if self.deadline is not None:
            self.deadline.done()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.done()
        super().connection_lost(exc)


class _Flags:
    """What the websockets engine's protocol reports to its connection; uvicorn reads the
    failure from the close frame it sent instead."""

    too_many_fragments = False
    failed = False
    pinger = None


class FragmentingServerProtocol(PolysocketProtocol, ServerProtocol):
    """websockets' server protocol with the websockets engine's reassembly in front: a
    message is bounded whole by ``max_size`` and by ``enginekit.MAX_FRAGMENTS`` frames (1009),
    and a close frame in the middle of one is a normal close (RFC 6455 5.4), where websockets
    fails it with 1002 and uvicorn keeps a list of fragments of no bound."""


class TimedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets' sans-I/O one, which reads no more of the
    socket while a received message waits for the application), whose handshake must be
    answered ``open_timeout`` after the upgrade began; the 101 ends the deadline. Its
    websockets protocol is a :class:`FragmentingServerProtocol`."""

    #: Set on the subclass each server makes (:func:`timed`).
    open_timeout: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: HandshakeDeadline | None = None
        conn = self.conn
        conn.__class__ = FragmentingServerProtocol
        assert isinstance(conn, FragmentingServerProtocol)
        conn.connection = _Flags()  # type: ignore[assignment]
        conn.max_message = self.config.ws_max_size

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.deadline = HandshakeDeadline(transport, self.open_timeout)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.deadline is not None and self.handshake_complete:
            self.deadline.done()

    def shutdown(self) -> None:
        # uvicorn sends 1012 to a connection whose closing handshake has begun (the peer's
        # close frame came) and websockets refuses a second close frame: it just ends here.
        from websockets.exceptions import InvalidState

        try:
            super().shutdown()
        except InvalidState:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.done()
        super().connection_lost(exc)


P = TypeVar("P", TimedH11Protocol, TimedWebSocketProtocol)


def timed(protocol: type[P], open_timeout: float) -> type[P]:
    """``protocol`` with this server's ``open_timeout`` (uvicorn builds it with no more)."""
    return type(protocol.__name__, (protocol,), {"open_timeout": open_timeout})


class UvicornServer:
    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self.options = options
        self.port = 0
        config = uvicorn.Config(
            AsgiApp(app, options),
            lifespan="off",  # the core starts the watcher and closes the sessions itself
            http=timed(TimedH11Protocol, options.open_timeout),
            ws=timed(TimedWebSocketProtocol, options.open_timeout),
            ws_max_size=options.max_size,  # type: ignore[arg-type]  # None: no limit
            ws_ping_interval=options.ping_interval,
            ws_ping_timeout=options.ping_timeout,
            ws_per_message_deflate=options.compression == "deflate",
            # idle keep-alive HTTP connections are dropped that long after their last answer
            timeout_keep_alive=max(1, round(options.open_timeout)),
            timeout_graceful_shutdown=max(1, round(options.close_timeout)),
            backlog=options.backlog,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        config.load()
        config.ssl = options.ssl  # a context, where uvicorn's own flags take files
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._sockets: list[socket.socket] = []

    async def start(self, host: str, port: int) -> UvicornServer:
        # uvicorn hands the upgrade request to websockets' parser again: the same limits as
        # the websockets engine, so that the core answers too many header lines with its 431
        _header_limits()
        sockets = bind_sockets(host, port, self.options.backlog, reuse_port=self.options.reuse_port)
        self.port = sockets[0].getsockname()[1]
        self._sockets = list(sockets)
        try:
            await self._server.startup(sockets=sockets)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return self

    async def close(self) -> None:
        """Stop listening, end what is left (uvicorn closes WebSockets with 1012 and waits
        for their tasks) and return, ``close_timeout`` (and a second) at most: connections
        still open then are aborted."""
        server = self._server
        timeout = self.options.close_timeout
        try:
            async with asyncio.timeout(timeout + 1):
                await server.shutdown()
        except TimeoutError:
            left = list(server.server_state.connections)
            _log.warning(
                "uvicorn did not finish shutting down in %ss; aborting %d connection(s)",
                timeout,
                len(left),
            )
            for connection in left:
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
        for sock in self._sockets:
            sock.close()
