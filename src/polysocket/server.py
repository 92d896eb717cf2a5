"""The endpoint server (SPEC section 4): routing, sessions, broadcast, live reload.

The engine owns the sockets; everything else happens here, once for every engine: which
request gets which answer, the session registry, dispatch to handlers, and reloading the
registry folder while the server runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import cluster as clusters
from . import endpoints as registry_folder
from . import page
from .auth import Admitted, Authenticator, Gate, Principal, is_loopback, origin_list
from .backplane import backplane_url, is_single_process
from .connection import Connection, ConnectionHandle, check_message
from .enginekit.admission import MAX_HEADER_LINES, install_accept_error_filter
from .enginekit.closecodes import CloseCode
from .enginekit.frames import server_frame
from .errors import ConnectionClosedError, EngineUnavailableError
from .hotpath import Flag
from .managed import ABORT_GRACE, ManagedTransport
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

T = TypeVar("T")

__all__ = [
    "EndpointServer",
    "RemoteSession",
    "ServerSession",
    "broadcast",
    "get_sessions",
    "run_server",
    "send_to",
    "serve",
]

RemoteSession = clusters.RemoteSession

SAMPLE_ROOT = Path(__file__).parent / "sample"
ENDPOINTS_PATH = "/websockets/v4/endpoints"
RELOAD_INTERVAL = 0.5
#: Seconds ``broadcast()`` from outside the server's loop waits for the loop to take it.
BROADCAST_WAIT = 10.0
#: Seconds a client refused for ``max_connections`` is told to wait (``Retry-After``).
RETRY_AFTER = 5


class ServerSession(ConnectionHandle):
    """One client connected to an endpoint; ``getSession()`` in a server callback.
    ``principal`` is who the authenticator said opened it (``None`` without one)."""

    __slots__ = ("_connection", "endpoint", "id", "principal", "remote_address", "request_headers")

    def __init__(
        self, endpoint: str, request: HttpRequest, principal: Principal | None = None
    ) -> None:
        self.id = uuid.uuid4().hex
        self.endpoint = endpoint
        self.remote_address = request.remote_address
        self.request_headers: Mapping[str, str] = request.headers
        self.principal = principal
        self._connection: Connection

    @property
    def node(self) -> str:
        """The cluster node that holds this session: this process (:func:`cluster.node_id`)."""
        return clusters.node_id()

    def __repr__(self) -> str:
        return f"<ServerSession {self.id[:8]} endpoint={self.endpoint} {self.remote_address}>"


class _Sessions:
    """Open sessions of every server in this process, by endpoint, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, dict[str, ServerSession]] = {}
        self._by_id: dict[str, ServerSession] = {}

    def add(self, session: ServerSession) -> None:
        with self._lock:
            self._by_endpoint.setdefault(session.endpoint, {})[session.id] = session
            self._by_id[session.id] = session

    def remove(self, session: ServerSession) -> None:
        with self._lock:
            members = self._by_endpoint.get(session.endpoint)
            if members is not None:
                members.pop(session.id, None)
                if not members:
                    del self._by_endpoint[session.endpoint]
            self._by_id.pop(session.id, None)

    def of(self, endpoint: str) -> list[ServerSession]:
        with self._lock:
            return list(self._by_endpoint.get(endpoint, {}).values())

    def get(self, session_id: str) -> ServerSession | None:
        return self._by_id.get(session_id)

    def rows(self) -> list[tuple[str, str]]:
        """``(id, endpoint)`` of every session (the cluster's snapshots and heartbeats)."""
        with self._lock:
            return [(session.id, session.endpoint) for session in self._by_id.values()]


sessions = _Sessions()


def get_sessions(endpoint: str) -> list[ServerSession | RemoteSession]:
    """The open sessions of ``endpoint``: this process's, oldest first, then (in a cluster)
    a :class:`RemoteSession` for each one on another node, from the presence view (see
    :mod:`polysocket.cluster`). Never waits for the broker."""
    local: list[ServerSession | RemoteSession] = list(sessions.of(endpoint))
    cluster = clusters.current()
    if cluster is not None:
        local.extend(cluster.remote_sessions(endpoint))
    return local


def send_to(session_id: str, message: str | bytes) -> bool:
    """Send ``message`` to the session ``session_id`` wherever it is in the cluster: here
    at once (as ``broadcast`` delivers: never waits, a session over ``write_limit`` is closed
    with 1008), else published to the node that holds it. ``False`` when no node is known to
    hold it (it closed, or never was); ``True`` once delivered here or queued for its node
    (while the broker is down a message for another node is skipped and counted, as a
    broadcast is)."""
    checked = check_message(message)
    session = sessions.get(session_id)
    if session is not None:
        return _deliver_to(session, checked)
    cluster = clusters.current()
    return cluster is not None and cluster.send_to(session_id, checked)


def _deliver_to(session: ServerSession, message: str | bytes, wait: bool = True) -> bool:
    frame = server_frame(message)
    if threading.get_ident() == session._connection._loop_thread:
        reached, _ = _offer_all([session], message, frame)
    elif not wait:  # the cluster's receiver: never blocks its loop on another one
        with contextlib.suppress(RuntimeError):
            session._connection._loop.call_soon_threadsafe(_offer_all, [session], message, frame)
        return True
    else:
        reached, _ = _offer_all_on(session._connection._loop, [session], message, frame)
    return reached > 0


class _LocalSide:
    """This process's sessions as a cluster sees them (:class:`cluster.LocalSide`)."""

    def deliver(self, endpoint: str, message: str | bytes) -> int:
        return _broadcast_here(endpoint, message, wait=False)

    def deliver_to(self, session_id: str, message: str | bytes) -> bool:
        session = sessions.get(session_id)
        return session is not None and _deliver_to(session, message, wait=False)

    def sessions(self) -> list[tuple[str, str]]:
        return sessions.rows()


LOCAL_SIDE = _LocalSide()


def broadcast(endpoint: str, message: str | bytes) -> int:
    """Send ``message`` to every open session of ``endpoint``; return how many of this
    process's sessions got it.

    In a cluster (a backplane other than ``memory://``) the message is also queued, once,
    for the other nodes, which deliver it to their own sessions of the endpoint (in the
    order this process broadcast them; see :mod:`polysocket.cluster`); the return value
    counts only this process's sessions, as it cannot wait for the others.

    The message is encoded once and the same frame written to each session's socket, on the
    server's event loop, in one pass (from another thread: one hand-over to the loop, which
    this call waits for, :data:`BROADCAST_WAIT` at most). A session with messages of its own
    still queued, or whose engine cannot take the frame, gets it queued behind them instead.
    It never waits for a peer: a session that would go over ``write_limit`` (its client
    reads too slowly) is closed with 1008 instead, its queued messages dropped (see
    ``Connection.offer_frame``); one log line per call counts them.
    """
    checked = check_message(message)
    cluster = clusters.current()
    if cluster is None:
        return _broadcast_here(endpoint, checked)
    return _broadcast_here(endpoint, checked, publish=cluster)


def _broadcast_here(
    endpoint: str,
    checked: str | bytes,
    wait: bool = True,
    publish: clusters.Cluster | None = None,
) -> int:
    """Deliver to this process's sessions of ``endpoint``; how many got it. Sessions on
    another loop get it through that loop: waited for, unless ``wait`` is false (the
    cluster's receiver, which must not block its loop on another one: their count is then
    not known and not counted).

    ``publish``: the cluster to queue the message for as well. It is queued in the same
    step as the delivery to the sessions on the cluster's loop, so that concurrent
    broadcasts (handlers on several threads) reach the other nodes in the order they
    reached this node's sessions."""
    members = sessions.of(endpoint)
    if publish is not None:
        home = publish.loop

        def queue() -> None:
            publish.broadcast(endpoint, checked)

    if not members:
        if publish is not None:
            queue()
        return 0
    frame = server_frame(checked)
    by_loop: dict[asyncio.AbstractEventLoop, list[ServerSession]] = {}
    for session in members:
        by_loop.setdefault(session._connection._loop, []).append(session)
    if publish is not None and home not in by_loop:
        queue()
    reached = too_slow = 0
    for loop, group in by_loop.items():
        then = queue if publish is not None and loop is home else None
        if threading.get_ident() == group[0]._connection._loop_thread:
            got, slow = _offer_all(group, checked, frame)
            if then is not None:
                then()
        elif not wait:
            with contextlib.suppress(RuntimeError):  # a closed loop: its sessions are gone
                loop.call_soon_threadsafe(_offer_all, group, checked, frame)
            continue
        else:
            got, slow = _offer_all_on(loop, group, checked, frame, then)
        reached, too_slow = reached + got, too_slow + slow
    if too_slow:
        log.warning(
            "broadcast to %s: %d of %d sessions closed with 1008, reading too slowly"
            " (send queue over write_limit)",
            endpoint,
            too_slow,
            len(members),
        )
    return reached


def _offer_all(group: list[ServerSession], message: str | bytes, frame: bytes) -> tuple[int, int]:
    """On the sessions' loop: (sessions that got the message, sessions closed as too slow)."""
    reached = too_slow = 0
    for session in group:
        try:
            if session._connection.offer_frame(message, frame):
                reached += 1
            else:
                too_slow += 1
        except ConnectionClosedError:
            continue  # closing or closed already: the others still get it
    return reached, too_slow


def _offer_all_on(
    loop: asyncio.AbstractEventLoop,
    group: list[ServerSession],
    message: str | bytes,
    frame: bytes,
    then: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """``_offer_all`` on ``loop``, waited for; ``then()`` right after it, in the same
    callback."""
    done: concurrent.futures.Future[tuple[int, int]] = concurrent.futures.Future()

    def offer() -> None:
        try:
            result = _offer_all(group, message, frame)
            if then is not None:
                then()
            done.set_result(result)
        except BaseException as exc:  # reaches the caller, not the loop
            done.set_exception(exc)

    try:
        loop.call_soon_threadsafe(offer)
    except RuntimeError:  # the loop is closed: its sessions are gone
        return 0, 0
    try:
        return done.result(BROADCAST_WAIT)
    except TimeoutError:
        log.warning(
            "broadcast: the server's event loop did not take the message within %s s (it is"
            " blocked); %d session(s) get it when it does",
            BROADCAST_WAIT,
            len(group),
        )
        return 0, 0


class EndpointServer:
    """A running server: a registry folder served through one engine."""

    def __init__(
        self,
        root: Path,
        engine: Engine,
        options: ServerOptions,
        subprotocols: Sequence[str],
        reload: bool,
        *,
        origins: Sequence[str] | None = None,
        authenticate: Authenticator | None = None,
        debug: bool = False,
        allow_module_handlers: bool = False,
        import_timeout: float = registry_folder.IMPORT_TIMEOUT,
        backplane: str | None = None,
        cluster: str | None = None,
        presence_expiry: float = clusters.DEFAULT_PRESENCE_EXPIRY,
    ) -> None:
        self.root = root
        self.engine = engine
        self._options = options
        self._subprotocols = tuple(subprotocols)
        self._reload = reload
        self._allow_modules = allow_module_handlers
        self._import_timeout = import_timeout
        # the snapshot comes first: a file changed while scanning shows up as a change
        self._seen = registry_folder.snapshot(root.resolve()) if root.is_dir() else {}
        self.scan = self._scan(root, None)
        self._server: Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Open sessions' connections, each with the handler it runs (for the shutdown log).
        self._connections: dict[Connection, registry_folder.Endpoint] = {}
        # Admission (max_connections): sessions running, by endpoint, and handshakes accepted
        # by route() whose session has not started, by id(request) in the order accepted. A
        # pending handshake ends when its session starts, when the engine drops the request,
        # or open_timeout after it was accepted (the engine drops the connection by then).
        self._running: Counter[str] = Counter()
        self._pending: dict[int, tuple[weakref.ref[HttpRequest], str, float]] = {}
        self.host = "127.0.0.1"
        self.debug = debug
        checked = None if origins is None else origin_list(origins, "origins=")
        self.gate = Gate(checked, authenticate, engines.authenticate, engines.authenticator_names)
        # route() admits a handshake and session() runs it, with the same request object:
        # the principal waits here in between, and goes when the request does (a handshake
        # the engine never completes leaves nothing behind).
        self._principals: dict[int, Principal] = {}
        # Checked now (an unknown scheme, a missing library, a bad name fail here), joined
        # at start.
        self.backplane_url = backplane_url(backplane)
        engines.backplane(self.backplane_url)
        self.cluster_name = clusters.cluster_name(cluster)
        if (
            isinstance(presence_expiry, bool)
            or not isinstance(presence_expiry, int | float)
            or presence_expiry <= 0
        ):
            raise TypeError(
                f"presence_expiry must be a positive number of seconds, not {presence_expiry!r}"
            )
        self._presence_expiry = float(presence_expiry)
        self._joined = False
        #: The process's cluster once started (``None``: a single-process backplane).
        self.cluster: clusters.Cluster | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self, host: str, port: int) -> None:
        self.host = host
        # one warning per out-of-descriptors episode, not a traceback per accept attempt
        install_accept_error_filter(asyncio.get_running_loop())
        await self.join_cluster()
        try:
            self._server = await self.engine.serve(host, port, self, self._options)
        except BaseException:
            await self.leave_cluster()
            raise
        self.watch()
        log.info(
            "serving %d endpoint(s) from %s on %s with %s",
            len(self.scan.endpoints),
            self.root,
            self.url,
            self.engine.name,
        )
        authenticators = self.gate.authenticators()
        if authenticators:
            log.info("authenticating handshakes with %s", ", ".join(authenticators))
        if self.gate.origins.allowed is None and not is_loopback(host):
            log.warning(
                "serving on %s, which other machines can reach, with no origin list: a page"
                " on any web site may open WebSockets here in its visitors' names. Allow only"
                " your sites' origins with --origin URL (serve(origins=[...])), or '*' to"
                " silence this.",
                host,
            )

    async def join_cluster(self) -> None:
        """Join the process's cluster (with a backplane other than ``memory://``), waiting
        up to the connect timeout for the broker; a broker down is an outage, not a failure
        (see :mod:`polysocket.cluster`). ``start()`` calls it; an ASGI application at its
        lifespan's startup. Raises :class:`BackplaneError` when another server of this
        process uses another backplane or cluster."""
        if self._joined or is_single_process(self.backplane_url):
            return  # memory://: nothing to join, nothing held
        choice = clusters.claim(self.backplane_url, self.cluster_name)
        self._joined = True
        try:
            self.cluster = await clusters.join(choice, LOCAL_SIDE, self._presence_expiry)
        except BaseException:
            await self.leave_cluster()
            raise

    async def leave_cluster(self) -> None:
        """Leave the cluster (the last server of the process closes its link, telling the
        other nodes, which drop this one at once)."""
        if self._joined:
            self._joined = False
            self.cluster = None
            await clusters.release()

    def watch(self) -> None:
        """Start what the registry needs while it is served, on the running loop: the
        live-reload watcher (with ``reload``). ``start()`` calls it after the engine listens;
        an ASGI application (:mod:`polysocket.asgi`), which listens on no socket of its own,
        calls it at its lifespan's startup. ``close()`` stops it."""
        if self._reload and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    # -- the ServerApp side of the engine contract -------------------------------------------

    def route(self, request: HttpRequest) -> HttpResponse | Accept:
        if request.header_lines > MAX_HEADER_LINES:
            return _text(
                431,
                f"the request has {request.header_lines} header lines; this server reads at"
                f" most {MAX_HEADER_LINES}\n",
            )
        if request.bad_target is not None:
            return _text(400, f"bad request target: {request.bad_target}\n")
        if request.path.startswith(page.SERVICE_PATH):
            name = request.path[len(page.SERVICE_PATH) :]
            endpoint = self.scan.endpoints.get(name)
            if endpoint is None:
                if not self.debug:  # the names are listed at /, not to every prober
                    return _text(404, f"no endpoint {name!r} here; the endpoints are listed at /\n")
                known = ", ".join(self.scan.endpoints) or "none"
                return _text(404, f"no endpoint {name!r} here; known endpoints: {known}\n")
            if not request.upgrade:
                return _text(
                    426,
                    f"{request.path} is a WebSocket endpoint: connect with a WebSocket client"
                    f" (ws://{request.headers.get('host', 'HOST')}{request.path}).\n",
                    {"Upgrade": "websocket"},
                )
            admitted = self.gate.admit(request, name, endpoint.origins, endpoint.roles)
            if not isinstance(admitted, Admitted):
                return admitted
            if admitted.principal is not None:
                key = id(request)
                self._principals[key] = admitted.principal
                weakref.finalize(request, self._principals.pop, key, None)
            self._expire_pending()
            full = self._full(name, endpoint.max_connections)
            if full is not None:
                return _text(503, full, {"Retry-After": str(RETRY_AFTER)})
            self._pending[id(request)] = (
                weakref.ref(request),
                name,
                time.monotonic() + self._options.open_timeout,
            )
            chosen = next((p for p in request.subprotocols if p in self._subprotocols), None)
            return Accept(chosen)
        if request.method != "GET":
            return _text(405, "only GET is served here\n", {"Allow": "GET"})
        if request.path == "/":
            return HttpResponse(
                200, page.render(self.scan, debug=self.debug), "text/html; charset=utf-8"
            )
        if request.path == ENDPOINTS_PATH:
            return HttpResponse(200, self.listing(), "application/json")
        return _text(404, f"nothing at {request.path}; the endpoints are listed at /\n")

    def _expire_pending(self) -> None:
        """Forget the pending handshakes past open_timeout: the oldest first, as they were
        accepted with the same timeout (so the dict stays bounded with no limit set too)."""
        now = time.monotonic()
        while self._pending:
            key, (_, _, expires) = next(iter(self._pending.items()))
            if expires >= now:
                break
            del self._pending[key]

    def _full(self, name: str, endpoint_limit: int | None) -> str | None:
        """Why a handshake for endpoint ``name`` is refused for ``max_connections``, or
        ``None`` when there is room. Counts running sessions and pending handshakes."""
        server_limit = self._options.max_connections
        if server_limit is None and endpoint_limit is None:
            return None
        for key, (ref, _, _) in list(self._pending.items()):
            if ref() is None:  # the engine dropped the connection before the session
                del self._pending[key]
        pending = Counter(endpoint for _, endpoint, _ in self._pending.values())
        if server_limit is not None:
            total = self._running.total() + pending.total()
            if total >= server_limit:
                return (
                    f"server busy: it takes at most {server_limit} WebSocket connections at"
                    f" once (max_connections) and has {total}; try again later\n"
                )
        if endpoint_limit is not None:
            here = self._running[name] + pending[name]
            if here >= endpoint_limit:
                return (
                    f"endpoint {name!r} busy: it takes at most {endpoint_limit} connections at"
                    f" once (max_connections in its descriptor) and has {here}; try again later\n"
                )
        return None

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        # The contract: when this returns, the connection is closed; engines only await it.
        managed = ManagedTransport(transport, self._options.close_timeout)
        name = request.path[len(page.SERVICE_PATH) :]
        self._pending.pop(id(request), None)
        self._running[name] += 1
        try:
            connection = self._connection(name, request, managed)
            if connection is None:  # the endpoint was removed between the handshake and now
                await managed.close(CloseCode.GOING_AWAY, "endpoint removed")
            else:  # this task reads the connection until it ends (no reader task per session)
                await connection.run()
        except asyncio.CancelledError:
            managed.abort()
            raise
        except Exception:
            log.exception("session on %s failed", request.path)
            await managed.close(CloseCode.INTERNAL_ERROR, "session failed")
        else:
            await managed.close()  # already closed unless the connection never started
        finally:
            self._running[name] -= 1
            if not self._running[name]:
                del self._running[name]

    def _connection(
        self, name: str, request: HttpRequest, transport: ManagedTransport
    ) -> Connection | None:
        """The session's connection, registered; not a coroutine, so that an idle session
        holds one coroutine frame less (each is some 200 bytes)."""
        endpoint = self.scan.endpoints.get(name)
        if endpoint is None:
            return None
        session = ServerSession(name, request, self._principals.pop(id(request), None))
        connection = Connection(
            transport,
            endpoint.handler,
            session,
            asyncio.get_running_loop(),
            self._options,
            on_ended=functools.partial(self._forget, session),
            replies=True,
        )
        session._connection = connection
        sessions.add(session)
        self._connections[connection] = endpoint
        cluster = clusters.current()
        if cluster is not None:
            cluster.session_opened(session.id, name)
        return connection

    def _forget(self, session: ServerSession) -> None:
        sessions.remove(session)
        self._connections.pop(session._connection, None)
        cluster = clusters.current()
        if cluster is not None:
            cluster.session_closed(session.id)

    def listing(self) -> bytes:
        """The JSON list: each endpoint's name, description and path, and how many
        descriptors have problems; in debug mode also handler specs, descriptor files and
        the problems themselves (which may show file paths)."""
        endpoints: list[dict[str, Any]] = [
            {"endpoint": e.name, "description": e.description, "path": page.SERVICE_PATH + e.name}
            for e in self.scan.endpoints.values()
        ]
        listing: dict[str, Any] = {
            "endpoints": endpoints,
            "problem_count": len(self.scan.problems),
        }
        if self.debug:
            for shown, e in zip(endpoints, self.scan.endpoints.values(), strict=True):
                shown["handler"] = e.handler.spec
                shown["file"] = str(e.file.relative_to(self.scan.root))
            listing["problems"] = [
                {
                    "error": str(p),
                    "files": [str(Path(f).relative_to(self.scan.root)) for f in p.files],
                }
                for p in self.scan.problems
            ]
        return json.dumps(listing, indent=2).encode()

    # -- live reload ---------------------------------------------------------------------

    def _scan(self, root: Path, previous: registry_folder.Scan | None) -> registry_folder.Scan:
        return registry_folder.scan(
            root,
            previous=previous,
            allow_modules=self._allow_modules,
            import_timeout=self._import_timeout,
        )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                now = await _in_daemon_thread(lambda: registry_folder.snapshot(self.scan.root))
            except OSError as exc:  # out of descriptors, say: a partial view is no change
                log.debug("cannot look at the registry folder now (%s); trying again", exc)
                continue
            if now != self._seen:
                self._seen = now
                try:
                    await self.reload()
                except Exception:  # the watcher must outlive a bad moment on disk
                    log.exception("reloading the registry failed; serving the previous one")

    async def reload(self) -> None:
        """Read the registry folder again; close sessions of endpoints that disappeared.

        It reads on a daemon thread of its own (not the loop's executor, which
        ``asyncio.run`` waits for at exit): a handler module that hangs at import costs the
        reload ``import_timeout`` and is listed as a problem; it never holds up shutdown."""
        previous = self.scan
        fresh = await _in_daemon_thread(lambda: self._scan(previous.root, previous))
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
        """Close every session with 1001 at once, give ``onClose`` a chance, stop listening.

        Bounded as a whole, however many handlers are stuck: the closing handshakes and every
        ``onClose`` get ``close_timeout`` from the start, together. A connection still open
        then (say one whose peer does not read, so that the close frame cannot leave) is
        aborted, and the deadline moves :data:`ABORT_GRACE` later for its ``onClose``. A
        handler still inside a callback at the deadline is left running on its handler
        thread, a daemon thread that ends with the process; one warning says how many
        sessions, and which handlers."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        loop = asyncio.get_running_loop()
        close_timeout = self._options.close_timeout
        deadline = loop.time() + close_timeout
        if self.cluster is not None and clusters.sole_member():
            self.cluster.leaving = True  # its goodbye will drop every session at once
        open_connections = dict(self._connections)
        for connection in open_connections:
            connection.request_close(CloseCode.GOING_AWAY, "server shutting down")
        if open_connections:
            ending = {
                asyncio.ensure_future(asyncio.shield(c.ended_on_loop)): c for c in open_connections
            }
            _, pending = await asyncio.wait(ending, timeout=close_timeout)
            if pending:
                for waiter in pending:
                    ending[waiter].abort()
                deadline += ABORT_GRACE
                _, pending = await asyncio.wait(pending, timeout=ABORT_GRACE)
            for waiter in pending:
                waiter.cancel()
            await asyncio.to_thread(
                _wait_all,
                [c.dispatcher.finished for c in open_connections],
                deadline - loop.time(),
            )
            stuck = [
                f"{e.handler.source} (endpoint {e.name!r})"
                for c, e in open_connections.items()
                if not c.dispatcher.finished.is_set()
            ]
            if stuck:
                counts = ", ".join(f"{n} x {h}" for h, n in sorted(Counter(stuck).items()))
                log.warning(
                    "shutdown: %d session(s) still in a handler callback after"
                    " close_timeout=%g s; their onClose will not run and their handler"
                    " threads are left behind (daemon threads, gone when the process exits):"
                    " %s",
                    len(stuck),
                    self._options.close_timeout,
                    counts,
                )
        if self._server is not None:
            await self._server.close()
        await self.leave_cluster()


async def _in_daemon_thread(function: Callable[[], T]) -> T:
    """``function()`` on a new daemon thread, awaited. Unlike ``asyncio.to_thread`` nothing
    waits for it at exit: a cancelled caller leaves it to finish (or hang) on its own."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the caller was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = function(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="polysocket-registry", daemon=True).start()
    return await future


def _wait_all(events: list[Flag], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for event in events:
        event.wait(max(0.0, deadline - time.monotonic()))


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, text.encode(), "text/plain; charset=utf-8", dict(headers or {}))


class serve:
    """Serve a registry folder: ``async with polysocket.serve(root, port=0) as server``.

    ``root=None`` serves the bundled sample (the seed's echo endpoint and a chat). Handlers
    are files under the folder; a handler named as a module (``"pkg.mod"``, imported from
    ``sys.path``) is a descriptor problem unless ``allow_module_handlers=True``. A handler
    module that takes longer than ``import_timeout`` seconds to load is a descriptor problem
    too (it is not served; its import is left running on a daemon thread).

    ``origins``: the ``Origin`` values that may open a session (``scheme://host[:port]`` or
    ``"*"``; the server's own origin and requests without ``Origin`` always may); ``None``
    allows every origin. ``authenticate``: a quick synchronous callable, a
    :class:`~polysocket.auth.Handshake` in, a :class:`~polysocket.auth.Principal` or ``None``
    (401) out. ``debug``: show handler specs, files and problems to HTTP clients.

    ``backplane``: the URL of the broker that links the servers of a cluster
    (``"redis://127.0.0.1:6379/0"``; default ``$POLYSOCKET_BACKPLANE``, else ``memory://``,
    one process); ``cluster``: the cluster's name, the prefix of its channels (default
    ``$POLYSOCKET_CLUSTER``, else ``polysocket``); ``presence_expiry``: seconds after which a
    node not heard from is dropped with its sessions. See :mod:`polysocket.cluster`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        engine: str | None = None,
        reload: bool = True,
        *,
        origins: Sequence[str] | None = None,
        authenticate: Authenticator | None = None,
        debug: bool = False,
        allow_module_handlers: bool = False,
        import_timeout: float = registry_folder.IMPORT_TIMEOUT,
        backplane: str | None = None,
        cluster: str | None = None,
        presence_expiry: float = clusters.DEFAULT_PRESENCE_EXPIRY,
        **options: Any,
    ) -> None:
        if (
            isinstance(import_timeout, bool)
            or not isinstance(import_timeout, int | float)
            or import_timeout <= 0
        ):
            raise TypeError(
                f"import_timeout must be a positive number of seconds, not {import_timeout!r}"
            )
        chosen = engines.get(engine)
        if "server" not in chosen.capabilities:
            capable = [row.name for row in engines.statuses() if "server" in row.capabilities]
            raise EngineUnavailableError(
                f"engine {chosen.name!r} cannot serve; engines that can: {', '.join(capable)}"
            )
        checked, subprotocols = server_options(chosen, options)
        folder = Path(root) if root is not None else SAMPLE_ROOT
        self._server = EndpointServer(
            folder,
            chosen,
            checked,
            subprotocols,
            reload,
            origins=origins,
            authenticate=authenticate,
            debug=debug,
            allow_module_handlers=allow_module_handlers,
            import_timeout=float(import_timeout),
            backplane=backplane,
            cluster=cluster,
            presence_expiry=presence_expiry,
        )
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
    """Serve until SIGINT or SIGTERM, then close every session with 1001 and return.
    Takes :class:`serve`'s arguments (``backplane=``, ``cluster=`` among them)."""

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
