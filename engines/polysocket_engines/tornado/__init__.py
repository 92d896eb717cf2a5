"""The tornado engine: ``engine="tornado"``.

- client: ``_client``, tornado's ``websocket_connect`` with a connection class of our own;
  ``ssl`` is the request's ``ssl_options`` (``wss://`` only).
- server: ``_server``, a ``tornado.web.Application`` with one ``WebSocketHandler`` for every
  path and method; ``ssl`` is the HTTP server's.
- both: ``_transport``, tornado's protocol object made strict where tornado is lenient (close
  frames for broken frames, checked close frames, failing without resetting the peer).
- deflate: ``compression_options={}`` (client) and ``get_compression_options()`` returning
  ``{}`` (server).
- keepalive: ``enginekit.Keepalive``, not tornado's ``ping_interval``: tornado >= 6.5 clamps
  ``ping_timeout`` to ``ping_interval``, tornado < 6.5 checks the pong only at the next ping,
  and both end a timed-out connection with a close frame that looks like a normal closure.
"""

from __future__ import annotations

from polysocket import hookimpl
from polysocket.transport import ClientOptions, Engine, Server, ServerApp, ServerOptions, Transport

__all__ = ["PRIVATE_API", "TornadoEngine", "polysocket_register_engines"]

#: tornado internals the engine relies on, checked on tornado 6.3 (the floor) and 6.6.1.
PRIVATE_API: dict[str, str] = {
    "tornado.websocket.WebSocketProtocol13._abort": "called for every broken frame and for a "
    "lost connection: overridden to fail with a close frame instead, and to see a drop",
    "tornado.websocket.WebSocketProtocol13._handle_message": "overridden to check a received "
    "close frame before tornado echoes it, and to see that a text message is being decoded",
    "tornado.websocket.WebSocketProtocol13._receive_frame": "overridden to read nothing but "
    "the peer's EOF after failing the connection",
    "tornado.websocket.WebSocketProtocol13._waiting": "tornado's 5 s wait for the peer's close "
    "frame, replaced by close_timeout",
}


class TornadoEngine(Engine):
    name = "tornado"
    library = "tornado"
    install_hint = "polysocket[tornado]"
    capabilities = frozenset(
        {"client", "server", "headers", "subprotocols", "tls", "deflate", "keepalive"}
    )

    async def connect(self, uri: str, options: ClientOptions) -> Transport:
        from ._client import connect

        return await connect(uri, options)

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Server:
        from ._server import TornadoServer

        return TornadoServer(app, options, host, port)


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(TornadoEngine())
