"""The server side: a websockets ``serve()`` on each socket of ``enginekit.bind_sockets``,
asking the core about every request from ``process_request``."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from polysocket import enginekit as kit
from polysocket.transport import Accept, HttpRequest, ServerApp, ServerOptions

from ._transport import (
    PolysocketConnection,
    PolysocketProtocol,
    WebsocketsTransport,
    shared_options,
)

_log = logging.getLogger(__name__)


class PolysocketServerProtocol(PolysocketProtocol, ServerProtocol): ...


class PolysocketServerConnection(PolysocketConnection, ServerConnection):
    """Known to its server from the first byte (in a weak set: it leaves when it is
    dropped), so that closing the server drops half-done handshakes too.

    It adds no attribute to websockets' own but the keepalive (``pinger``): an instance dict
    that grows past the keys its class shares (27 here) takes 1.3 KiB more per session.
    """

    protocol_class = PolysocketServerProtocol

    def __init__(self, *args: Any, site: WebsocketsServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        site.connections.add(self)


class ServerTransport(WebsocketsTransport):
    """A server session: also a ``FrameWriter``, for broadcast."""

    def write_frame(self, frame: bytes, limit: int) -> bool | None:
        ws = self._ws
        if ws.protocol.extensions or ws.protocol.state is not State.OPEN:
            return None
        return kit.write_frame(ws.transport, frame, limit)


def _header_limits() -> None:
    """websockets' header limits are module constants (read at each parse; the same for its
    clients): lines of ``MAX_LINE_SIZE``, and a count above the core's, so that the core
    answers a request with a few too many (129 to 256) with its own 431 and text."""
    import websockets.http11

    websockets.http11.MAX_LINE_LENGTH = kit.MAX_LINE_SIZE + 2  # it counts the CRLF
    websockets.http11.MAX_NUM_HEADERS = max(
        websockets.http11.MAX_NUM_HEADERS, kit.LIBRARY_MAX_HEADER_LINES
    )


class WebsocketsServer:
    """The websockets servers of one ``serve()``, their connections and sessions."""

    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self.app, self.options, self.port = app, options, 0
        self.connections: weakref.WeakSet[PolysocketServerConnection] = weakref.WeakSet()
        #: The request and the core's Accept, from process_request to the session's start.
        self.routed: weakref.WeakKeyDictionary[ServerConnection, tuple[HttpRequest, Accept]]
        self.routed = weakref.WeakKeyDictionary()
        self.sessions = kit.SessionTracker(app)
        self._servers: list[Server] = []

    async def start(self, host: str, port: int) -> None:
        _header_limits()
        sockets = kit.bind_sockets(
            host, port, self.options.backlog, reuse_port=self.options.reuse_port
        )
        self.port = sockets[0].getsockname()[1]
        try:
            for sock in sockets:
                server = await serve(
                    self._handler,
                    sock=sock,
                    # from accept to the 101 or the plain HTTP answer (websockets closes the
                    # connection after one); websockets' own, the same rule as the core's
                    open_timeout=self.options.open_timeout,
                    process_request=self._process_request,
                    select_subprotocol=self._select_subprotocol,
                    ssl=self.options.ssl,
                    **shared_options(PolysocketServerConnection, self.options, site=self),
                )
                self._servers.append(server)
        except BaseException:
            for server in self._servers:
                server.close()
            for sock in sockets[len(self._servers) :]:  # the others are their servers'
                sock.close()
            raise

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        # Every request, upgrade or not: websockets parses any GET (and, in recent versions,
        # any method without a body) before deciding on the handshake.
        assert isinstance(connection, PolysocketServerConnection)
        method = getattr(request, "method", "GET")
        headers = request.headers.raw_items()
        # request.path is the target as sent, query included: the core decodes it
        incoming = kit.http_request(method, request.path, headers, connection.remote_address)
        answer = self.app.route(incoming)
        if isinstance(answer, Accept):  # websockets then checks the upgrade and completes it
            self.routed[connection] = incoming, answer
            return None
        fields, body = Headers(kit.answer_fields(answer)), kit.answer_payload(answer, method)
        return Response(answer.status, kit.answer_reason(answer), fields, body)

    def _select_subprotocol(
        self, connection: ServerConnection, _: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        chosen = self.routed[connection][1].subprotocol
        return None if chosen is None else Subprotocol(chosen)

    async def _handler(self, connection: ServerConnection) -> None:
        assert isinstance(connection, PolysocketServerConnection)
        request, _ = self.routed.pop(connection)
        # in websockets' task for this connection: the session returns with it closed
        await self.sessions.run(request, ServerTransport(connection, self.options))

    async def close(self) -> None:
        for server in self._servers:
            server.close(close_connections=False)  # stops listening when its task starts
        await asyncio.sleep(0)
        # The core has closed its sessions: drop what is left (half-done handshakes, plain
        # HTTP requests, sessions that did not close) and wait for the sessions to return.
        for connection in list(self.connections):
            transport = getattr(connection, "transport", None)  # None before connection_made
            if transport is not None:
                transport.abort()
        timeout = self.options.close_timeout
        await self.sessions.close(timeout)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(server.wait_closed() for server in self._servers))
        except TimeoutError:
            _log.warning("websockets server did not finish closing in %ss", timeout)
