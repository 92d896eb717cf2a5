"""polysocket: the Eclipse Dirigible WebSocket API (``net/v4/websockets``) for Python.

Every public function exists in Dirigible's camelCase spelling and in snake_case::

    import polysocket
    client = polysocket.createWebsocket("ws://localhost:8080/echo", "my-project/ws-handler")
    client.send("hello")
"""

from __future__ import annotations

from .aio import AsyncConnection, connect
from .client import (
    WebsocketClient,
    create_websocket,
    get_client,
    get_client_by_handler,
    get_clients,
)
from .context import (
    get_close_code,
    get_close_reason,
    get_error,
    get_message,
    get_method,
    get_session,
    is_on_close,
    is_on_error,
    is_on_message,
    is_on_open,
)
from .errors import (
    BackplaneError,
    ConnectError,
    ConnectionClosedError,
    DescriptorError,
    EngineUnavailableError,
    HandlerNotFoundError,
    KeepaliveTimeout,
    SendTimeoutError,
    UnknownEngineError,
    UnsupportedOptionError,
    WebsocketError,
)
from .hookspecs import hookimpl
from .reconnect import ReconnectPolicy
from .server import (
    EndpointServer,
    RemoteSession,
    ServerSession,
    broadcast,
    get_sessions,
    run_server,
    send_to,
    serve,
)

__version__ = "0.1.0"

# Dirigible's camelCase spelling.
createWebsocket = create_websocket
getClients = get_clients
getClient = get_client
getClientByHandler = get_client_by_handler
getMessage = get_message
getError = get_error
getMethod = get_method
isOnOpen = is_on_open
isOnMessage = is_on_message
isOnError = is_on_error
isOnClose = is_on_close
getSession = get_session
getCloseCode = get_close_code
getCloseReason = get_close_reason
getSessions = get_sessions
sendTo = send_to
runServer = run_server

__all__ = [
    "AsyncConnection",
    "BackplaneError",
    "ConnectError",
    "ConnectionClosedError",
    "DescriptorError",
    "EndpointServer",
    "EngineUnavailableError",
    "HandlerNotFoundError",
    "KeepaliveTimeout",
    "ReconnectPolicy",
    "RemoteSession",
    "SendTimeoutError",
    "ServerSession",
    "UnknownEngineError",
    "UnsupportedOptionError",
    "WebsocketClient",
    "WebsocketError",
    "__version__",
    "broadcast",
    "connect",
    "createWebsocket",
    "create_websocket",
    "getClient",
    "getClientByHandler",
    "getClients",
    "getCloseCode",
    "getCloseReason",
    "getError",
    "getMessage",
    "getMethod",
    "getSession",
    "getSessions",
    "get_client",
    "get_client_by_handler",
    "get_clients",
    "get_close_code",
    "get_close_reason",
    "get_error",
    "get_message",
    "get_method",
    "get_session",
    "get_sessions",
    "hookimpl",
    "isOnClose",
    "isOnError",
    "isOnMessage",
    "isOnOpen",
    "is_on_close",
    "is_on_error",
    "is_on_message",
    "is_on_open",
    "runServer",
    "run_server",
    "sendTo",
    "send_to",
    "serve",
]
