"""The client: ``websocket_connect`` always builds tornado's own connection class (and so its
protocol object), so this builds the request and the connection as it does."""

import sys
from urllib.parse import urlsplit

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.websocket import WebSocketClientConnection

from polysocket import ConnectError
from polysocket.transport import ClientOptions

from ._transport import Delegate, StrictProtocol, TornadoTransport


class ClientConnection(Delegate, WebSocketClientConnection):
    def __init__(self, request: HTTPRequest, options: ClientOptions) -> None:
        self.transport = TornadoTransport(options)
        super().__init__(
            request,
            compression_options={} if options.compression == "deflate" else None,  # {}: offer
            max_message_size=options.max_size or sys.maxsize,
            subprotocols=list(options.subprotocols) or None,
        )

    def get_websocket_protocol(self) -> StrictProtocol:
        return self.transport.attach(StrictProtocol(self, True, self.params))

    def on_ws_connection_close(self, code: int | None = None, reason: str | None = None) -> None:
        super().on_ws_connection_close(code, reason)
        self.protocol = None  # over: tornado's __del__ warns about a connection that has one
        self.transport.queue.put(None)


async def connect(uri: str, options: ClientOptions) -> TornadoTransport:
    request = HTTPRequest(
        uri,
        headers=HTTPHeaders(options.headers),
        # The core bounds connect(); these make tornado drop an attempt the core gave up on.
        connect_timeout=options.open_timeout,
        request_timeout=options.open_timeout,
        # None: tornado's default context for wss:// (system CAs, hostname checked)
        ssl_options=options.ssl if urlsplit(uri).scheme == "wss" else None,
        validate_cert=True,  # websocket_connect()'s defaults (HTTPRequest's own are None)
        decompress_response=True,
    )
    connection = ClientConnection(request, options)
    try:
        await connection.connect_future
    except HTTPClientError as exc:
        if exc.code == 599:  # tornado's code for "no HTTP response" (timeouts, EOF)
            raise
        raise ConnectError.rejected(uri, exc.code, exc.message) from exc
    connection.transport.open()
    return connection.transport
