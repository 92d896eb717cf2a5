"""The websockets engine, ``engine="websockets"``, on the library's asyncio API: ``connect``
(``_client``), ``serve`` on each socket of ``enginekit.bind_sockets`` (``_server``), and
subclasses of websockets' protocol and connection both sides share (``_transport``).
``compression="deflate"`` and the keepalive are websockets' own. websockets is imported
inside ``connect``/``serve`` only, so that ``polysocket engines`` can say what to install.
"""

from __future__ import annotations

from typing import Any

from polysocket import hookimpl
from polysocket.transport import ClientOptions, Engine, ServerApp, ServerOptions

__all__ = ["PRIVATE_API", "WebsocketsEngine", "polysocket_register_engines"]

PRIVATE_API: dict[str, str] = {
    "websockets.protocol.Protocol.recv_frame": "overridden: whole messages, and a close frame"
    " in the middle of one",
    "websockets.asyncio.connection.Connection.keepalive_task": "fail() called from it means"
    " a keepalive timeout",
    "websockets.asyncio.connection.Connection.close_timeout": "the deadline once closing",
    "websockets.asyncio.connection.Connection.send_data": "close() writes its close frame"
    " without websockets' close(), which waits for the peer",
}


class WebsocketsEngine(Engine):
    name = "websockets"
    library = "websockets"
    install_hint = "polysocket[websockets]"
    capabilities = frozenset(
        {"client", "server", "headers", "subprotocols", "tls", "deflate", "keepalive"}
    )

    async def connect(self, uri: str, options: ClientOptions) -> Any:
        from ._client import open_connection

        return await open_connection(uri, options)

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Any:
        from ._server import WebsocketsServer

        server = WebsocketsServer(app, options)
        await server.start(host, port)
        return server


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(WebsocketsEngine())
