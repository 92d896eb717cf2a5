"""The aiohttp engine, polysocket's default: ``_client`` (a ``ClientSession`` per connection),
``_server`` (aiohttp's low-level ``web.Server``), ``_transport`` (both sides' connection, and
why aiohttp's ``close()`` is replaced). aiohttp is imported inside connect/serve only. Known
limitation: pings are answered inside ``receive()`` only, which the core's reader awaits
except while a handler's backlog pauses reading.
"""

from __future__ import annotations

from polysocket import hookimpl, transport

_COUNTED = "its frame reader, set just before it goes to the protocol, and that reader's"
_COUNTED += " message queue: the reader is wrapped to count a message's frames (MAX_FRAGMENTS)"
PRIVATE_API: dict[str, str] = {
    "aiohttp.client_ws.ClientWebSocketResponse._response": "the client's connection: its TCP"
    " transport (half-closed after a failure, aborted) and close(), releasing it",
    "aiohttp.client_ws.ClientWebSocketResponse._parser": _COUNTED,
    "aiohttp.client_ws.ClientWebSocketResponse._reader": _COUNTED,
    "aiohttp.web_ws.WebSocketResponse._parser": _COUNTED,
    "aiohttp.web_ws.WebSocketResponse._reader": _COUNTED,
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
