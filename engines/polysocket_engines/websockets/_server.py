"""The server side: one ``websockets.asyncio.server.serve`` per listening socket (see
``enginekit.bind_sockets``), the core deciding each request in ``process_request``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import SERVER, Request, Response
from websockets.typing import Subprotocol

from polysocket.enginekit import (
    answer_fields,
    answer_payload,
    answer_reason,
    bind_sockets,
    http_request,
)
from polysocket.transport import Accept, HttpRequest, ServerApp, ServerOptions

from ._transport import PolysocketConnection, PolysocketServerProtocol, WebsocketsTransport

_log = logging.getLogger(__name__)


class PolysocketServerConnection(PolysocketConnection, ServerConnection):
    """Known to its server from the first byte (closing the server drops half-done
    handshakes too); carries the core's decision from ``process_request`` on."""

    protocol_class = PolysocketServerProtocol

    def __init__(self, *args: Any, site: WebsocketsServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site = site
        self.incoming: HttpRequest | None = None
        self.accepted: Accept | None = None

    def connection_made(self, transport: Any) -> None:
        self.site.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.connections.discard(self)
        super().connection_lost(exc)


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    # Called for every request, upgrade or not: websockets parses any GET (and any method
    # without a body, in recent versions) before deciding on the handshake.
    assert isinstance(connection, PolysocketServerConnection)
    method = getattr(request, "method", "GET")
    path, _, query = request.path.partition("?")
    incoming = http_request(
        method, path, query, request.headers.raw_items(), connection.remote_address
    )
    connection.incoming = incoming
    decision = connection.site.app.route(incoming)
    if isinstance(decision, Accept):
        connection.accepted = decision
        return None  # websockets validates the upgrade request and completes it
    body = answer_payload(decision, method)
    return Response(
        decision.status, answer_reason(decision), Headers(answer_fields(decision)), body
    )


def _process_response(connection: ServerConnection, request: Request, response: Response) -> None:
    # server_header=None: the core's own Server header (if any) is not duplicated.
    if "Server" not in response.headers:
        response.headers["Server"] = SERVER


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    assert isinstance(connection, PolysocketServerConnection) and connection.accepted
    return Subprotocol(connection.accepted.subprotocol) if connection.accepted.subprotocol else None


async def _handler(connection: ServerConnection) -> None:
    assert isinstance(connection, PolysocketServerConnection) and connection.incoming
    site = connection.site
    task = asyncio.current_task()
    assert task is not None
    site.sessions.add(task)
    try:  # app.session() returns with the connection closed
        await site.app.session(connection.incoming, WebsocketsTransport(connection, site.options))
    finally:
        site.sessions.discard(task)


class WebsocketsServer:
    """The websockets servers of one ``serve()``, the connections and the sessions they run."""

    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self.app = app
        self.options = options
        self.connections: set[PolysocketServerConnection] = set()
        self.sessions: set[asyncio.Task[Any]] = set()
        self._servers: list[Server] = []
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        options = self.options
        sockets = bind_sockets(host, port)
        self.port = sockets[0].getsockname()[1]
        try:
            for sock in sockets:
                server = await serve(
                    _handler,
                    sock=sock,
                    # A "factory for the ServerConnection" in websockets' docs, typed as a class.
                    create_connection=partial(  # type: ignore[arg-type]
                        PolysocketServerConnection, site=self, max_size=options.max_size or None
                    ),
                    process_request=_process_request,
                    process_response=_process_response,
                    server_header=None,
                    select_subprotocol=_select_subprotocol,
                    max_size=options.max_size or None,
                    # accepted when the client offers it; never offered otherwise
                    compression="deflate" if options.compression == "deflate" else None,
                    ping_interval=options.ping_interval,
                    ping_timeout=options.keepalive_timeout,
                    close_timeout=options.close_timeout,
                    ssl=options.ssl,
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
            server.close(close_connections=False)  # stops listening as its task starts
        await asyncio.sleep(0)
        # The core has closed the sessions; drop whatever is left (half-done handshakes,
        # plain HTTP requests, sessions the core did not close).
        for connection in list(self.connections):
            connection.transport.abort()
        timeout = self.options.close_timeout
        if self.sessions:
            _, pending = await asyncio.wait(self.sessions, timeout=timeout)
            for task in pending:
                task.cancel()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(server.wait_closed() for server in self._servers))
        except TimeoutError:
            _log.warning("websockets server did not finish closing in %ss", timeout)
