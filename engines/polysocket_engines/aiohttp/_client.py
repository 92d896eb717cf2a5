"""The client: a ``ClientSession`` per connection, its WebSocket a :class:`ClientWebSocket`."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from polysocket import ConnectError
from polysocket.transport import ClientOptions

from ._transport import AiohttpTransport, CloseFrameOnly, CountedReader, msg_limit


class ClientWebSocket(CloseFrameOnly, aiohttp.ClientWebSocketResponse):
    """aiohttp's client WebSocket whose ``close()`` only sends the close frame."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # aiohttp builds this just before it hands its frame reader to the protocol, which
        # feeds the reader what came with the handshake first: CountedReader must count it.
        connection = self._response.connection  # not `if connection`: it has its own __bool__
        protocol = connection.protocol if connection is not None else None
        self.tail: bytes = protocol._tail if protocol is not None else b""


class ClientTransport(AiohttpTransport):
    """A client connection: its ``ClientSession`` ends with it."""

    __slots__ = ("_response", "_session")

    def __init__(
        self, ws: ClientWebSocket, session: aiohttp.ClientSession, options: ClientOptions
    ) -> None:
        connection = ws._response.connection
        assert connection is not None and connection.transport is not None  # as aiohttp's
        super().__init__(ws, connection.transport, ws.protocol, options)
        self._response, self._session = ws._response, session

    async def _finish(self) -> None:
        self._response.close()  # closes TCP and hands the connection back to the connector
        await self._session.close()


#: The statuses aiohttp's ``request`` follows (``ws_connect`` has no ``allow_redirects``).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def _no_redirects(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """A client middleware: a redirect ends the handshake as any other non-101 answer, for
    the core to follow (aiohttp would follow it to http(s):// only, and refuse ws://)."""
    response = await handler(request)
    if response.status in _REDIRECTS:
        response.close()
        raise aiohttp.WSServerHandshakeError(
            response.request_info,
            (),
            message=response.reason or "",
            status=response.status,
            headers=response.headers,
        )
    return response


class TunnelConnector(aiohttp.BaseConnector):
    """A connector whose one connection is a socket the core connected already (a proxy's
    tunnel): no DNS, no connect; TLS over it for ``wss://``. ``_create_connection`` is
    where aiohttp's own connectors (TCP, Unix socket, named pipe) open theirs."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext | None, hostname: str) -> None:
        super().__init__(force_close=True)  # one connection, never pooled
        self._tunnel: socket.socket | None = sock
        self._tls, self._hostname = tls, hostname

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        sock, self._tunnel = self._tunnel, None
        if sock is None:  # aiohttp asks again after a disconnect: the tunnel is spent
            raise ConnectionResetError(
                errno.ECONNRESET,
                "the proxy's tunnel closed before the server answered the handshake (the"
                " server may be down, or out of the proxy's reach)",
            )
        _, protocol = await asyncio.get_running_loop().create_connection(
            self._factory,
            sock=sock,
            ssl=self._tls,
            server_hostname=self._hostname if self._tls is not None else None,
        )
        return protocol


def _connector(uri: str, options: ClientOptions) -> aiohttp.BaseConnector | None:
    """The connector for ``options.sock``, or ``None`` (aiohttp's own, which connects)."""
    if options.sock is None:
        return None
    parts = urlsplit(uri)
    tls = None
    if parts.scheme == "wss":
        tls = options.ssl if options.ssl is not None else ssl.create_default_context()
    return TunnelConnector(options.sock, tls, parts.hostname or "")


async def connect(uri: str, options: ClientOptions) -> ClientTransport:
    session = aiohttp.ClientSession(
        connector=_connector(uri, options),
        ws_response_class=ClientWebSocket,
        middlewares=(_no_redirects,),
    )
    try:
        ws = await session.ws_connect(
            uri,
            protocols=tuple(options.subprotocols),
            headers=dict(options.headers),
            max_msg_size=msg_limit(options.max_size),
            autoclose=False,  # the transport answers a close frame, echoing its code
            autoping=False,  # the transport answers pings, and pings (enginekit.Keepalive)
            compress=15 if options.compression else 0,
            ssl=options.ssl if options.ssl is not None else True,
        )
        assert isinstance(ws, ClientWebSocket)  # ws_response_class
        connection = ws._response.connection
        assert connection is not None  # set by aiohttp for an upgraded response
        CountedReader.install(connection.protocol, ws._reader, ws.tail)  # no await since
        return ClientTransport(ws, session, options)
    except BaseException as exc:
        await session.close()
        if isinstance(exc, aiohttp.WSServerHandshakeError):
            location = exc.headers.get("Location") if exc.headers is not None else None
            raise ConnectError.rejected(uri, exc.status, exc.message, location=location) from exc
        raise
