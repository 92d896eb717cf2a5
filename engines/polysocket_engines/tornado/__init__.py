"""The tornado engine, ``engine="tornado"``. Its keepalive is ``enginekit.Keepalive``: tornado
>= 6.5 clamps ``ping_timeout`` to ``ping_interval``, older ones check the pong only at the next
ping, and both close a silent peer's connection as if normally."""

from polysocket import hookimpl, transport

__all__ = ["PRIVATE_API", "TornadoEngine", "polysocket_register_engines"]

#: tornado internals the engine relies on, checked on tornado 6.3 (the floor) and 6.6.1.
PRIVATE_API: dict[str, str] = {
    "tornado.websocket.WebSocketProtocol13._abort": "fail broken frames with a close frame",
    "tornado.websocket.WebSocketProtocol13._handle_message": "check close frames, see text",
    "tornado.websocket.WebSocketProtocol13._receive_frame": "count fragments; after failing,"
    " await the EOF",
    "tornado.websocket.WebSocketProtocol13._fragmented_message_buffer": "a message in progress",
    "tornado.websocket.WebSocketProtocol13._waiting": "its 5 s close timer, cancelled once set",
    "tornado.tcpserver.TCPServer._handle_connection": "what enginekit's accept loop hands"
    " each socket to (tornado's own accept loop spins on EMFILE)",
    "tornado.tcpserver.TCPServer._sockets": "the listening sockets stop() closes",
    "tornado.tcpserver.TCPServer._handlers": "how stop() stops each accept loop",
}


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
