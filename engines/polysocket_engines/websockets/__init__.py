"""The websockets engine: ``engine="websockets"``, on the library's asyncio API.

- client: ``websockets.asyncio.client.connect`` (``_client``); ``ssl`` for ``wss://`` URIs.
- server: ``websockets.asyncio.server.serve`` on each socket of ``enginekit.bind_sockets``
  (``_server``), the core answering every request from ``process_request``.
- both: ``_transport`` subclasses websockets' sans-I/O protocol (whole messages, a close
  frame mid-message) and asyncio connection (deadlines after the closing handshake starts,
  a missing pong as a lost connection), and puts the contract over them.
- ``compression="deflate"`` and ``ping_interval``/``ping_timeout`` are websockets' own.

websockets is imported inside ``connect``/``serve`` only, so that ``polysocket engines`` can
say what to install when it is missing.
"""

from __future__ import annotations

from typing import Any

from polysocket import hookimpl
from polysocket.transport import ClientOptions, Engine, ServerApp, ServerOptions

__all__ = ["PRIVATE_API", "WebsocketsEngine", "polysocket_register_engines"]

#: websockets internals the engine relies on (checked by tests/test_private_api.py).
PRIVATE_API: dict[str, str] = {
    "websockets.protocol.Protocol.recv_frame": "overridden to reassemble fragmented messages"
    " and to end a message cut by a close frame",
    "websockets.asyncio.connection.Connection.keepalive_task": "fail() from this task is a"
    " keepalive ping timeout",
    "websockets.asyncio.connection.Connection.close_timeout": "the deadline once the closing"
    " handshake started",
    "websockets.asyncio.connection.Connection.send_data": "close() writes the close frame"
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
        from ._client import connect

        return await connect(uri, options)

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Any:
        from ._server import WebsocketsServer

        server = WebsocketsServer(app, options)
        await server.start(host, port)
        return server


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(WebsocketsEngine())
