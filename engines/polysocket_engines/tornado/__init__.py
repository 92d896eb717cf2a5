"""The tornado engine, ``engine="tornado"``. Its keepalive is ``enginekit.Keepalive``: tornado
>= 6.5 clamps ``ping_timeout`` to ``ping_interval``, older ones check the pong only at the next
ping, and both close a silent peer's connection as if normally."""

from polysocket import hookimpl, transport

from .. import private_api

__all__ = ["PRIVATE_API", "TornadoEngine", "polysocket_register_engines"]

PRIVATE_API = private_api.TORNADO


class TornadoEngine(transport.Engine):
    name = "tornado"
    library = "tornado"
    install_hint = "polysocket[tornado]"
    capabilities = transport.CAPABILITIES

    async def connect(self, uri: str, options: transport.ClientOptions) -> transport.Transport:
        from ._transport import connect

        return await connect(uri, options)

    async def serve(
        self, host: str, port: int, app: transport.ServerApp, options: transport.ServerOptions
    ) -> transport.Server:
        from ._server import TornadoServer

        return TornadoServer(app, options, host, port)


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(TornadoEngine())
