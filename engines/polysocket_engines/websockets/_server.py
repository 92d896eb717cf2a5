"""The server side: a websockets ``serve()`` on each socket of ``enginekit.bind_sockets``,
asking the core about every request from ``process_request``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import SERVER, Request, Response
from websockets.typing import Subprotocol

from polysocket import enginekit as kit
from polysocket.transport import Accept, HttpRequest, ServerApp, ServerOptions

from ._transport import (
    PolysocketConnection,
    PolysocketServerProtocol,
    WebsocketsTransport,
    library_options,
)

_log = logging.getLogger(__name__)


class PolysocketServerConnection(PolysocketConnection, ServerConnection):
    """Known to its server from the first byte, so that closing the server drops half-done
    handshakes too; carries the core's answer from ``process_request`` on."""

    protocol_class = PolysocketServerProtocol
    incoming: HttpRequest | None = None
    accepted: Accept | None = None

    def __init__(self, *args: Any, site: WebsocketsServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site = site

    def connection_made(self, transport: Any) -> None:
        self.site.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.connections.discard(self)
        super().connection_lost(exc)


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    # Every request, upgrade or not: websockets parses any GET (and, in recent versions, any
    # method without a body) before deciding on the handshake.
    assert isinstance(connection, PolysocketServerConnection)
    method = getattr(request, "method", "GET")
    path, _, query = request.path.partition("?")
    headers = request.headers.raw_items()
    incoming = kit.http_request(method, path, query, headers, connection.remote_address)
    answer = connection.site.app.route(incoming)
    if isinstance(answer, Accept):  # websockets then checks the upgrade and completes it
        connection.incoming, connection.accepted = incoming, answer
        return None
    status, reason, body = (
        answer.status,
        kit.answer_reason(answer),
        kit.answer_payload(answer, method),
    )
    return Response(status, reason, Headers(kit.answer_fields(answer)), body)


def _process_response(connection: ServerConnection, request: Request, response: Response) -> None:
    if "Server" not in response.headers:  # server_header=None: the core's, if any, once
        response.headers["Server"] = SERVER


def _select_subprotocol(connection: ServerConnection, _: Sequence[Subprotocol]) -> Any:
    assert isinstance(connection, PolysocketServerConnection) and connection.accepted
    return connection.accepted.subprotocol


async def _handler(connection: ServerConnection) -> None:
    assert isinstance(connection, PolysocketServerConnection) and connection.incoming
    site = connection.site
    site.sessions.start(connection.incoming, WebsocketsTransport(connection, site.options))
    await connection.wait_closed()  # websockets closes the connection when this returns


class WebsocketsServer:
    """The websockets servers of one ``serve()``, their connections and sessions."""

    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self.app, self.options, self.port = app, options, 0
        self.connections: set[PolysocketServerConnection] = set()
        self.sessions = kit.SessionTracker(app)
        self._servers: list[Server] = []

    async def start(self, host: str, port: int) -> None:
        sockets = kit.bind_sockets(host, port)
        self.port = sockets[0].getsockname()[1]
        try:
            for sock in sockets:
                server = await serve(
                    _handler,
                    sock=sock,
                    process_request=_process_request,
                    process_response=_process_response,
                    server_header=None,
                    select_subprotocol=_select_subprotocol,
                    ssl=self.options.ssl,
                    # deflate: accepted when the client offers it
                    **library_options(PolysocketServerConnection, self.options, site=self),
                )
                self._servers.append(server)
        except BaseException:
            for server in self._servers:
                server.close()
            for sock in sockets:
                sock.close()
            raise

    async def close(self) -> None:
        for server in self._servers:
            server.close(close_connections=False)  # stops listening once its task starts
        await asyncio.sleep(0)
        # The core has closed its sessions: drop what is left (half-done handshakes, plain
        # HTTP requests, sessions that did not close) and wait for the sessions to return.
        for connection in list(self.connections):
            connection.transport.abort()
        timeout = self.options.close_timeout
        await self.sessions.close(timeout)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(server.wait_closed() for server in self._servers))
        except TimeoutError:
            _log.warning("websockets server did not finish closing in %ss", timeout)
