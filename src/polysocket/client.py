"""The Dirigible client API: ``createWebsocket``, the client registry, ``WebsocketClient``."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from . import proxies
from .connection import Connection, ConnectionHandle
from .errors import ConnectError, UnsupportedOptionError
from .handlers import Handler, resolve_handler
from .managed import ManagedTransport
from .options import client_options
from .plugins import registry as engines
from .redirects import Redirects
from .runtime import background
from .transport import ClientOptions, Engine

log = logging.getLogger("polysocket.client")

__all__ = [
    "WebsocketClient",
    "create_websocket",
    "get_client",
    "get_client_by_handler",
    "get_clients",
]


def check_uri(uri: str, engine: Engine) -> None:
    if "client" not in engine.capabilities:  # a server-only engine, such as uvicorn
        raise UnsupportedOptionError(
            f"engine {engine.name!r} cannot connect: it only serves (it lacks the 'client'"
            " capability; see `polysocket engines`); pick another engine= for clients"
        )
    scheme = urlsplit(uri).scheme if isinstance(uri, str) else None
    if scheme not in ("ws", "wss"):
        raise ConnectError(f"{uri!r} is not a WebSocket URI; it must start with ws:// or wss://")
    if scheme == "wss" and "tls" not in engine.capabilities:
        raise UnsupportedOptionError(
            f"engine {engine.name!r} cannot connect to wss:// URIs (it lacks the 'tls'"
            " capability; see `polysocket engines`)"
        )


async def open_transport(engine: Engine, uri: str, options: ClientOptions) -> ManagedTransport:
    """Connect through ``engine``, following redirects (:mod:`polysocket.redirects`), each
    hop through the proxy that applies to it (:mod:`polysocket.proxies`), and turning every
    failure into :class:`ConnectError`. ``open_timeout`` bounds the whole connect, every hop
    included. The transport's ``connected_uri`` is where it ended up."""
    hops = Redirects(uri, engine, options)
    try:
        # asyncio.timeout, not wait_for: the connect runs in this task, where wait_for (on
        # 3.11) wraps it in a task of its own, one more loop pass per connection.
        async with asyncio.timeout(options.open_timeout):
            while True:
                try:
                    transport = await _open_once(engine, hops.current, hops.options)
                except ConnectError as refused:
                    if hops.follow(refused):
                        continue
                    raise
                transport.connected_uri = hops.current
                return transport
    except TimeoutError:
        way = f" (redirected: {' -> '.join(hops.chain)})" if len(hops.chain) > 1 else ""
        proxy = proxies.select_proxy(hops.current, options.proxy, engine)
        via = "" if proxy is None else f" through the proxy {proxy} ({proxy.source})"
        raise ConnectError(
            f"connecting to {uri}{way}{via} timed out after {options.open_timeout} s"
            " (open_timeout); check that the server is up, or raise open_timeout="
        ) from None


async def _open_once(engine: Engine, uri: str, options: ClientOptions) -> ManagedTransport:
    """One handshake with ``uri``, through its proxy if one applies; unbounded
    (``open_transport`` bounds them all). A tunnel is opened per hop: ``sock`` never
    travels in the options from one hop to the next."""
    proxy = proxies.select_proxy(uri, options.proxy, engine)
    via = "" if proxy is None else f" through the proxy {proxy} ({proxy.source})"
    try:
        if proxy is None:
            raw = await engine.connect(uri, options)
        else:
            raw = await proxies.connect(proxy, engine, uri, options)
        return ManagedTransport(raw, options.close_timeout)
    except ConnectError:
        raise
    except TimeoutError:  # the engine's own (the open_timeout is open_transport's)
        raise ConnectError(
            f"connecting to {uri}{via} timed out after {options.open_timeout} s"
            " (open_timeout); check that the server is up, or raise open_timeout="
        ) from None
    except OSError as exc:
        raise ConnectError(
            f"cannot connect to {uri}{via}: {exc}; check that the server is running and that"
            " the host and port are right"
        ) from exc
    except Exception as exc:
        raise ConnectError(f"cannot connect to {uri}{via}: {type(exc).__name__}: {exc}") from exc


class WebsocketClient(ConnectionHandle):
    """An open client connection, as ``createWebsocket`` returns it.

    ``uri`` is the URI it was created with; ``connected_uri`` the one its handshake completed
    at, another after redirects."""

    def __init__(self, id: str, uri: str, handler: Handler, engine: str) -> None:
        self.id = id
        self.uri = uri
        self.connected_uri = uri
        self.handler = handler.spec
        self.engine = engine
        self._connection: Connection

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def close_reason(self) -> str | None:
        return self._connection.close_reason

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until ``onClose`` has run; True if it did within ``timeout``."""
        return self._connection.dispatcher.finished.wait(timeout)

    @property
    def reconnects(self) -> int:
        """How many times the client has reconnected: 0 on the first connection (always, for
        a client without ``reconnect=``). Inside a callback, that of the connection the
        callback is about (an ``onOpen`` with 0 is the first open, 1 the first reopen)."""
        return 0

    def _request_close(self, code: int, reason: str) -> None:
        """Start closing for good, without waiting."""
        self._connection.request_close(code, reason)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<WebsocketClient {self.id} {self.uri} engine={self.engine} {state}>"


class ClientRegistry:
    """Open clients, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, WebsocketClient] = {}
        self._ids = itertools.count(1)

    def next_id(self) -> str:
        return str(next(self._ids))

    def add(self, client: WebsocketClient) -> None:
        with self._lock:
            self._clients[client.id] = client

    def remove(self, client: WebsocketClient) -> None:
        with self._lock:
            self._clients.pop(client.id, None)

    def all(self) -> list[WebsocketClient]:
        with self._lock:
            return list(self._clients.values())

    def close_all(self, code: int = 1001, reason: str = "going away", wait: float = 5.0) -> None:
        clients = self.all()
        for client in clients:
            client._request_close(code, reason)
        for client in clients:
            client.wait_closed(wait)


clients = ClientRegistry()
background.on_stop(clients.close_all)


def create_websocket(
    uri: str, handler: Any, engine: str | None = None, **options: Any
) -> WebsocketClient:
    """Open a client connection whose events go to ``handler``; return once it is open.

    The handler and engine are resolved before any network traffic. Raises
    :class:`ConnectError` when the connection cannot be opened; then no callback runs and
    no client is registered.
    """
    resolved = resolve_handler(handler)
    chosen = engines.get(engine)
    checked = client_options(chosen, options)
    check_uri(uri, chosen)
    return background.run(_open_client(uri, resolved, chosen, checked), "createWebsocket()")


async def _open_client(
    uri: str, handler: Handler, engine: Engine, options: ClientOptions
) -> WebsocketClient:
    transport = await open_transport(engine, uri, options)
    if options.reconnect is not None:
        # Imported here: the reconnecting client builds on this module.
        from .reconnecting import ReconnectingClient

        return ReconnectingClient.start(clients.next_id(), uri, handler, engine, options, transport)
    client = WebsocketClient(clients.next_id(), uri, handler, engine.name)
    client.connected_uri = transport.connected_uri or uri
    client._connection = Connection(
        transport,
        handler,
        client,
        asyncio.get_running_loop(),
        options,
        on_ended=lambda: clients.remove(client),
    )
    clients.add(client)
    client._connection.start()
    log.debug("client %s connected to %s with %s", client.id, client.connected_uri, engine.name)
    return client


def get_clients() -> list[dict[str, Any]]:
    """Open clients as ``{"id", "uri", "handler", "engine"}`` dicts, oldest first."""
    return [
        {"id": c.id, "uri": c.uri, "handler": c.handler, "engine": c.engine} for c in clients.all()
    ]


def get_client(id: str) -> WebsocketClient | None:
    for client in clients.all():
        if client.id == str(id):
            return client
    return None


def get_client_by_handler(handler: Any) -> WebsocketClient | None:
    """The oldest open client created with ``handler`` (the same path, module or object)."""
    for client in clients.all():
        if client.handler is handler or (isinstance(handler, str) and client.handler == handler):
            return client
    return None
