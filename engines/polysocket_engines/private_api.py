"""The private parts of aiohttp, websockets and tornado that the built-in engines still use.

Each engine exports its list as ``PRIVATE_API`` (``"module.Class.attribute": why``);
``tests/test_private_api.py`` checks every entry on the newest versions (the ``tests`` nox
session) and on the oldest pyproject allows (``minimums``, next to ``MINIMUMS`` in
``noxfile.py``), so that an upgrade that renames one fails there, loudly, not in a connection.
"""

from __future__ import annotations

_COUNTED = "the protocol's frame reader, wrapped to count a message's frames (MAX_FRAGMENTS)"
_TAIL = "what came with the handshake, fed to the frame reader first: counted too"
_QUEUE = "the frame reader's message queue: the 1009 for too many frames is put there"
AIOHTTP: dict[str, str] = {
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
    "aiohttp.connector.BaseConnector._create_connection": "overridden by the proxy tunnel's"
    " connector: where aiohttp's connectors open their connection",
    "aiohttp.connector.BaseConnector._factory": "the connection protocol it builds there",
}

WEBSOCKETS: dict[str, str] = {
    "websockets.protocol.Protocol.recv_frame": "overridden: whole messages, close mid-message",
    "websockets.asyncio.connection.Connection.close_timeout": "the deadline once closing",
    "websockets.asyncio.connection.Connection.send_data": "close() without waiting for the peer",
    "websockets.http11.MAX_LINE_LENGTH": "header line limit (module constant): 8190 bytes",
    "websockets.http11.MAX_NUM_HEADERS": "header count limit: above the core's 128",
    "websockets.asyncio.client.connect.process_redirect": "overridden to follow no redirect:"
    " the core follows them (polysocket.redirects)",
}

#: tornado internals the engine relies on, checked on tornado 6.3 (the floor) and 6.6.1.
TORNADO: dict[str, str] = {
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
    "tornado.simple_httpclient._HTTPConnection.tcp_client": "what the client connects with:"
    " the proxy tunnel's TunnelClient stands in for it",
}

#: uvicorn internals the engine relies on (checked in uvicorn 0.52.4, the floor, and 0.55).
_UVI_H11 = "uvicorn.protocols.http.h11_impl.H11Protocol"
_UVI_WS = "uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol"
UVICORN: dict[str, str] = {
    f"{_UVI_H11}.on_response_complete": "an answer is out: the handshake deadline restarts",
    f"{_UVI_H11}.handle_websocket_upgrade": "the WebSocket protocol takes the deadline over",
    f"{_UVI_WS}.conn": "websockets' protocol: made a FragmentingServerProtocol",
    f"{_UVI_WS}.handshake_complete": "the 101 (or the refusal) is out: the deadline ends",
    f"{_UVI_WS}.shutdown": "overridden: a connection already closing just ends",
    "uvicorn.server.Server.startup": "serves the engine's sockets in the caller's loop",
    "uvicorn.server.Server.shutdown": "stops it, without uvicorn's signal handling",
    "uvicorn.server.Server._serve": "sets Server.lifespan before startup(): the engine too",
    "uvicorn.config.Config.load": "sets Config.ssl from files: the engine sets its SSLContext"
    " after it",
}
