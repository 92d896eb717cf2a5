"""The aiohttp engine, polysocket's default: ``_client`` (a ``ClientSession`` per connection),
``_server`` (aiohttp's low-level ``web.Server``), ``_transport`` (both sides' connection, and
why aiohttp's ``close()`` is replaced). aiohttp is imported inside connect/serve only. Known
limitation: aiohttp answers pings inside ``receive()`` only, which the core's reader awaits
except while a handler's backlog pauses reading.
"""

from __future__ import annotations

from polysocket import hookimpl, transport

_PONG_WAIT = "the heartbeat's wait for a pong (heartbeat/2, no setting for it): ping_timeout"
PRIVATE_API: dict[str, str] = {
    "aiohttp.client_ws.ClientWebSocketResponse._response": "the client's connection: its TCP"
    " transport (half-closed after a failure, aborted) and close(), releasing it",
    "aiohttp.client_ws.ClientWebSocketResponse._pong_heartbeat": _PONG_WAIT,
    "aiohttp.web_ws.WebSocketResponse._pong_heartbeat": _PONG_WAIT,
    "aiohttp.web_server.Server._loop": "Server.__call__ builds the connection protocol with it",
    "aiohttp.web_server.Server._kwargs": "Server.__call__ builds the connection protocol with it",
    "aiohttp.web_protocol.RequestHandler._manager": "its Server, which has open_timeout",
}


class AiohttpEngine(transport.Engine):
    name = library = install_hint = "aiohttp"  # the engine, its import, what to pip install
    capabilities = transport.CAPABILITIES

    async def connect(self, uri: str, options: transport.ClientOptions) -> transport.Transport:
        from ._client import connect

        return await connect(uri, options)

    async def serve(
        self, host: str, port: int, app: transport.ServerApp, options: transport.ServerOptions
    ) -> transport.Server:
        from ._server import AiohttpServer

        return await AiohttpServer(app, options).start(host, port)


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(AiohttpEngine())
