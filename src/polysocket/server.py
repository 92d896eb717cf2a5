"""The endpoint server (SPEC section 4): routing, sessions, broadcast, live reload.

The engine owns the sockets; everything else happens here, once for every engine: which
request gets which answer, the session registry, dispatch to handlers, and reloading the
registry folder while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import endpoints as registry_folder
from . import page
from .connection import Connection, check_message
from .enginekit.closecodes import CloseCode
from .errors import ConnectionClosedError, EngineUnavailableError
from .managed import ManagedTransport, close_bound
from .options import server_options
from .plugins import registry as engines
from .transport import (
    Accept,
    Engine,
    HttpRequest,
    HttpResponse,
    Server,
    ServerOptions,
    Transport,
)

log = logging.getLogger("polysocket.server")

__all__ = [
    "EndpointServer",
    "ServerSession",
    "broadcast",
    "get_sessions",
    "run_server",
    "serve",
]

SAMPLE_ROOT = Path(__file__).parent / "sample"
ENDPOINTS_PATH = "/websockets/v4/endpoints"
RELOAD_INTERVAL = 0.5


class ServerSession:
    """One client connected to an endpoint; ``getSession()`` in a server callback."""

    def __init__(self, endpoint: str, request: HttpRequest) -> None:
        self.id = uuid.uuid4().hex
        self.endpoint = endpoint
        self.remote_address = request.remote_address
        self.request_headers: Mapping[str, str] = request.headers
        self._connection: Connection

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send to this session; thread-safe. While more than ``write_limit`` bytes wait to
        be sent it blocks this thread up to ``send_timeout``, then raises
        :class:`SendTimeoutError` (the session stays open); on the event loop (``async def``
        callbacks) it raises at once instead: ``await send_async()`` there."""
        self._connection.send(message)

    async def send_async(self, message: str | bytes | bytearray | memoryview) -> None:
        """Like :meth:`send`, awaiting room (up to ``send_timeout``) instead of blocking."""
        await self._connection.send_async(message)

    @property
    def buffered_amount(self) -> int:
        """Bytes waiting to be sent to this client (at most about ``write_limit``)."""
        return self._connection.buffered_amount

    @property
    def backlog(self) -> int:
        """Bytes of received messages waiting for ``onMessage`` (about ``max_queue`` at
        most: over it, the session stops reading until the handler catches up)."""
        return self._connection.dispatcher.backlog

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._connection.close(code, reason)

    @property
    def closed(self) -> bool:
        return self._connection.closed

    def __repr__(self) -> str:
        return f"<ServerSession {self.id[:8]} endpoint={self.endpoint} {self.remote_address}>"


class _Sessions:
    """Open sessions of every server in this process, by endpoint, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, dict[str, ServerSession]] = {}

    def add(self, session: ServerSession) -> None:
        with self._lock:
            self._by_endpoint.setdefault(session.endpoint, {})[session.id] = session

    def remove(self, session: ServerSession) -> None:
        with self._lock:
            self._by_endpoint.get(session.endpoint, {}).pop(session.id, None)

    def of(self, endpoint: str) -> list[ServerSession]:
        with self._lock:
            return list(self._by_endpoint.get(endpoint, {}).values())


sessions = _Sessions()


def get_sessions(endpoint: str) -> list[ServerSession]:
    """The open sessions of ``endpoint``, oldest first."""
    return sessions.of(endpoint)


def broadcast(endpoint: str, message: str | bytes) -> int:
    """Queue ``message`` for every open session of ``endpoint``; return how many got it.

    It never waits, from any thread or callback: a session whose send queue would go over
    ``write_limit`` (its client reads too slowly) is closed with 1008 instead, its queued
    messages dropped (see ``Connection.offer``); one log line per call counts them.
    """
    checked = check_message(message)
    members = sessions.of(endpoint)
    reached = too_slow = 0
    for session in members:
        try:
            if session._connection.offer(checked):
                reached += 1
            else:
                too_slow += 1
        except ConnectionClosedError:
            continue  # closing or closed already: the others still get it
    if too_slow:
        log.warning(
            "broadcast to %s: %d of %d sessions closed with 1008, reading too slowly"
            " (send queue over write_limit)",
            endpoint,
            too_slow,
            len(members),
        )
    return reached


class EndpointServer:
    """A running server: a registry folder served through one engine."""

    def __init__(
        self,
        root: Path,
        engine: Engine,
        options: ServerOptions,
        subprotocols: Sequence[str],
        reload: bool,
    ) -> None:
        self.root = root
        self.engine = engine
        self._options = options
        self._subprotocols = tuple(subprotocols)
        self._reload = reload
        # the snapshot comes first: a file changed while scanning shows up as a change
        self._seen = registry_folder.snapshot(root.resolve()) if root.is_dir() else {}
        self.scan = registry_folder.scan(root)
        self._server: Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._connections: set[Connection] = set()
        self.host = "127.0.0.1"

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self, host: str, port: int) -> None:
        self.host = host
        self._server = await self.engine.serve(host, port, self, self._options)
        if self._reload:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        log.info(
            "serving %d endpoint(s) from %s on %s with %s",
            len(self.scan.endpoints),
            self.root,
            self.url,
            self.engine.name,
        )

    # -- the ServerApp side of the engine contract -------------------------------------------

    def route(self, request: HttpRequest) -> HttpResponse | Accept:
        if request.path.startswith(page.SERVICE_PATH):
            name = request.path[len(page.SERVICE_PATH) :]
            if name not in self.scan.endpoints:
                known = ", ".join(self.scan.endpoints) or "none"
                return _text(404, f"no endpoint {name!r} here; known endpoints: {known}\n")
            if not request.upgrade:
                return _text(
                    426,
                    f"{request.path} is a WebSocket endpoint: connect with a WebSocket client"
                    f" (ws://{request.headers.get('host', 'HOST')}{request.path}).\n",
                    {"Upgrade": "websocket"},
                )
            chosen = next((p for p in request.subprotocols if p in self._subprotocols), None)
            return Accept(chosen)
        if request.method != "GET":
            return _text(405, "only GET is served here\n", {"Allow": "GET"})
        if request.path == "/":
            return HttpResponse(200, page.render(self.scan), "text/html; charset=utf-8")
        if request.path == ENDPOINTS_PATH:
            return HttpResponse(200, self.listing(), "application/json")
        return _text(404, f"nothing at {request.path}; the endpoints are listed at /\n")

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        # The contract: when this returns, the connection is closed; engines only await it.
        managed = ManagedTransport(transport, self._options.close_timeout)
        try:
            await self._run_session(request, managed)
        except asyncio.CancelledError:
            managed.abort()
            raise
        except Exception:
            log.exception("session on %s failed", request.path)
            await managed.close(CloseCode.INTERNAL_ERROR, "session failed")
        else:
            await managed.close()  # already closed unless the connection never started

    async def _run_session(self, request: HttpRequest, transport: ManagedTransport) -> None:
        name = request.path[len(page.SERVICE_PATH) :]
        endpoint = self.scan.endpoints.get(name)
        if endpoint is None:  # removed between the handshake and now
            await transport.close(CloseCode.GOING_AWAY, "endpoint removed")
            return
        session = ServerSession(name, request)

        def forget() -> None:
            sessions.remove(session)
            self._connections.discard(connection)

        connection = Connection(
            transport,
            endpoint.handler,
            session,
            asyncio.get_running_loop(),
            self._options,
            on_ended=forget,
            replies=True,
        )
        session._connection = connection
        sessions.add(session)
        self._connections.add(connection)
        connection.start()
        # shielded: cancelling the session must not cancel the future Connection resolves
        # when it ends (it would fail there, before onClose)
        await asyncio.shield(connection.ended_on_loop)

    def listing(self) -> bytes:
        return json.dumps(
            {
                "endpoints": [
                    {
                        "endpoint": e.name,
                        "description": e.description,
                        "handler": e.handler.spec,
                        "path": page.SERVICE_PATH + e.name,
                        "file": str(e.file.relative_to(self.scan.root)),
                    }
                    for e in self.scan.endpoints.values()
                ],
                "problems": [
                    {
                        "error": str(p),
                        "files": [str(Path(f).relative_to(self.scan.root)) for f in p.files],
                    }
                    for p in self.scan.problems
                ],
            },
            indent=2,
        ).encode()

    # -- live reload ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            now = await asyncio.to_thread(registry_folder.snapshot, self.scan.root)
            if now != self._seen:
                self._seen = now
                try:
                    await self.reload()
                except Exception:  # the watcher must outlive a bad moment on disk
                    log.exception("reloading the registry failed; serving the previous one")

    async def reload(self) -> None:
        """Read the registry folder again; close sessions of endpoints that disappeared."""
        fresh = await asyncio.to_thread(registry_folder.scan, self.scan.root)
        gone = set(self.scan.endpoints) - set(fresh.endpoints)
        self.scan = fresh
        log.info(
            "registry reloaded: %d endpoint(s), %d problem(s)%s",
            len(fresh.endpoints),
            len(fresh.problems),
            f"; removed {', '.join(sorted(gone))}" if gone else "",
        )
        for name in gone:
            for session in sessions.of(name):
                # the registry is every server's: another one may serve an endpoint of that name
                if session._connection in self._connections:
                    session._connection.request_close(CloseCode.GOING_AWAY, "endpoint removed")

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every session with 1001, let each ``onClose`` run, stop listening."""
        if self._watcher is not None:
            self._watcher.cancel()
        open_connections = list(self._connections)
        for connection in open_connections:
            connection.request_close(CloseCode.GOING_AWAY, "server shutting down")
        if open_connections:
            await asyncio.wait(
                [asyncio.ensure_future(asyncio.shield(c.ended_on_loop)) for c in open_connections],
                timeout=close_bound(self._options.close_timeout),
            )
            # one deadline for every onClose, not one per session
            await asyncio.to_thread(
                _wait_all,
                [c.dispatcher.finished for c in open_connections],
                self._options.close_timeout,
            )
        if self._server is not None:
            await self._server.close()


def _wait_all(events: list[threading.Event], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for event in events:
        event.wait(max(0.0, deadline - time.monotonic()))


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, text.encode(), "text/plain; charset=utf-8", dict(headers or {}))


class serve:
    """Serve a registry folder: ``async with polysocket.serve(root, port=0) as server``.

    ``root=None`` serves the bundled sample (the seed's echo endpoint and a chat).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        engine: str | None = None,
        reload: bool = True,
        **options: Any,
    ) -> None:
        chosen = engines.get(engine)
        if "server" not in chosen.capabilities:
            capable = [row.name for row in engines.statuses() if "server" in row.capabilities]
            raise EngineUnavailableError(
                f"engine {chosen.name!r} cannot serve; engines that can: {', '.join(capable)}"
            )
        checked, subprotocols = server_options(chosen, options)
        folder = Path(root) if root is not None else SAMPLE_ROOT
        self._server = EndpointServer(folder, chosen, checked, subprotocols, reload)
        self._host, self._port = host, port

    async def _start(self) -> EndpointServer:
        await self._server.start(self._host, self._port)
        return self._server

    def __await__(self) -> Generator[Any, None, EndpointServer]:
        return self._start().__await__()

    async def __aenter__(self) -> EndpointServer:
        return await self._start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.close()


def run_server(
    root: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    engine: str | None = None,
    **options: Any,
) -> None:
    """Serve until SIGINT or SIGTERM, then close every session with 1001 and return."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with serve(root, host, port, engine, **options):
            await stop.wait()
            log.info("shutting down: closing every session with 1001")

    asyncio.run(main())
