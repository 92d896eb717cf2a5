"""The aiohttp engine: polysocket's default.

aiohttp is imported inside ``connect``/``serve`` only, so that ``polysocket engines`` can say
what to install when it is missing.

- client (``_client``): ``ClientSession.ws_connect``, one session per connection.
- server (``_server``): aiohttp's low-level ``web.Server`` on ``enginekit.bind_sockets``.
- both (``_transport``): aiohttp's WebSocket responses with ``autoclose=False`` and a
  ``close()`` that only sends the close frame; the transport owns TCP (see there why).
- keepalive: aiohttp's heartbeat, with ``ping_timeout`` as its wait for the pong.

Known limitation: aiohttp answers pings inside ``receive()`` only. The core's reader always
awaits it, except while a handler's backlog pauses reading.
"""

from __future__ import annotations

from polysocket import hookimpl
from polysocket.transport import (
    ClientOptions,
    Engine,
    Server,
    ServerApp,
    ServerOptions,
    Transport,
)

__all__ = ["PRIVATE_API", "AiohttpEngine", "polysocket_register_engines"]

PRIVATE_API: dict[str, str] = {
    "aiohttp.client_ws.ClientWebSocketResponse._response": (
        "the client's ClientResponse: its connection's TCP transport (half-closed after"
        " failing, aborted) and close(), which hands the connection back to the connector"
    ),
    "aiohttp.client_ws.ClientWebSocketResponse._pong_heartbeat": (
        "how long the heartbeat waits for a pong (heartbeat/2, no setting): ping_timeout"
    ),
    "aiohttp.web_ws.WebSocketResponse._pong_heartbeat": (
        "how long the heartbeat waits for a pong (heartbeat/2, no setting): ping_timeout"
    ),
}


class AiohttpEngine(Engine):
    name = "aiohttp"
    library = "aiohttp"
    install_hint = "aiohttp"
    capabilities = frozenset(
        {"client", "server", "headers", "subprotocols", "tls", "deflate", "keepalive"}
    )

    async def connect(self, uri: str, options: ClientOptions) -> Transport:
        from ._client import connect

        return await connect(uri, options)

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Server:
        from ._server import AiohttpServer

        server = AiohttpServer(app, options)
        await server.start(host, port)
        return server


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(AiohttpEngine())
