"""The aiohttp engine, polysocket's default: ``_client`` (a ``ClientSession`` per connection),
``_server`` (aiohttp's low-level ``web.Server``), ``_transport`` (both sides' connection, and
why aiohttp's ``close()`` is replaced). aiohttp is imported inside connect/serve only. Known
limitation: pings are answered inside ``receive()`` only, which the core's reader awaits
except while a handler's backlog pauses reading.
"""

from __future__ import annotations

from polysocket import hookimpl, transport

_COUNTED = "the protocol's frame reader, wrapped to count a message's frames (MAX_FRAGMENTS)"
_TAIL = "what came with the handshake, fed to the frame reader first: counted too"
_QUEUE = "the frame reader's message queue: the 1009 for too many frames is put there"
PRIVATE_API: dict[str, str] = {
    "aiohttp.client_ws.ClientWebSocketResponse._response": "the client's connection: its TCP"
    " transport (half-closed after a failure, aborted) and close(), releasing it",
    "aiohttp.web_server.Server._loop": "Server.__call__ builds the connection protocol with it",
    "aiohttp.web_server.Server._kwargs": "Server.__call__ builds the connection protocol with it",
    "aiohttp.web_protocol.RequestHandler._manager": "its Server, which has open_timeout",
    "aiohttp.client_ws.ClientWebSocketResponse._reader": _QUEUE,
    "aiohttp.web_ws.WebSocketResponse._reader": _QUEUE,
    "aiohttp.web_ws.WebSocketResponse._post_start": "where aiohttp hands the protocol its frame"
    " reader: CountedReader goes in front of it there",
    "aiohttp.client_proto.ResponseHandler._payload_parser": _COUNTED,
    "aiohttp.client_proto.ResponseHandler._tail": _TAIL,
    "aiohttp.web_protocol.RequestHandler._payload_parser": _COUNTED,
    "aiohttp.web_protocol.RequestHandler._message_tail": _TAIL,
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
