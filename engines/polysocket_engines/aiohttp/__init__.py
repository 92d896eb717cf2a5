"""The aiohttp engine, polysocket's default: ``_client`` (a ``ClientSession`` per connection),
``_server`` (aiohttp's low-level ``web.Server``), ``_transport`` (both sides' connection, and
why aiohttp's ``close()`` is replaced). aiohttp is imported inside connect/serve only. Known
limitation: pings are answered inside ``receive()`` only, which the core's reader (of both
APIs, callbacks and asyncio) awaits except while ``max_queue`` bytes wait unread.
"""

from __future__ import annotations

from polysocket import hookimpl, transport

from .. import private_api

PRIVATE_API = private_api.AIOHTTP


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
