"""Clusters: ``broadcast``, ``sendTo`` and ``getSessions`` across processes and hosts.

Servers started with the same backplane URL and cluster name (``serve(backplane=...,
cluster=...)``, ``polysocket serve --backplane URL --cluster NAME``, ``$POLYSOCKET_BACKPLANE``,
``$POLYSOCKET_CLUSTER``) form a cluster; each process is one *node*, named
``hostname/pid/4hex``. The broker (a :class:`~polysocket.backplane.Backplane`) only moves
bytes; everything below is done here, once for every broker.

Semantics:

- ``broadcast(endpoint, message)`` delivers to this process's sessions of ``endpoint`` at once
  (as without a cluster) and returns how many of *those* got it; it also queues one publish to
  the other nodes, which deliver it to their own sessions of the endpoint. While the broker is
  up, every session of the endpoint on every node gets each message exactly once, and the
  messages of one publishing node arrive in the order they were broadcast there (the order
  its own sessions got them: the message is queued in the same loop step as it is delivered
  here, so broadcasts from handlers on several threads keep one order everywhere). One task per
  node publishes, draining a bounded queue (:data:`OUTBOUND_LIMIT` messages,
  :data:`OUTBOUND_BYTES` bytes) in order; a
  message that finds it full is not sent to the other nodes, and is counted (one log line per
  overflow episode).
- ``sendTo(session_id, message)`` delivers to the session here if it is here, else publishes
  it to the node that holds it (from the presence view). It returns ``False`` when no node is
  known to hold the id (a session that closed meanwhile, as for a closed local session) and
  ``True`` once it is delivered here or handed to the publishing queue (a message for another
  node while the broker is down, or the queue full, is skipped and counted as a broadcast is).
- ``getSessions(endpoint)`` lists this process's :class:`~polysocket.server.ServerSession`
  objects, then a :class:`RemoteSession` for each session of the endpoint on another node,
  each with ``.id``, ``.endpoint``, ``.node`` and ``.send()`` (through ``sendTo``). It reads
  an in-memory *presence view* and never waits for the broker. The view is kept by events: a
  node announces each session it opens and closes, sends a heartbeat every
  ``presence_expiry / 4`` seconds with its session count, and says goodbye when it closes (the
  others drop it at once). A node not heard from within ``presence_expiry`` seconds (default
  :data:`DEFAULT_PRESENCE_EXPIRY`) is dropped with its sessions (a node killed with SIGKILL).
  A node that misses events (a gap in a node's sequence numbers, an unknown node, a heartbeat
  whose count differs from the view) asks that node for a snapshot, sent in chunks of
  :data:`SNAPSHOT_CHUNK` sessions.
- Broker down: local delivery goes on; messages for other nodes are skipped and counted. One
  warning says the backplane is lost, one says it is back and how many messages were skipped
  meanwhile. The link is reopened with :class:`~polysocket.reconnect.ReconnectPolicy`'s
  backoff (:data:`BACKOFF`); once back the node announces itself again and every node sends
  it a snapshot, and asks for its own, so presence is rebuilt. Delivery across nodes is
  at-most-once during an outage, as with socket.io's Redis adapter.

With a single-process backplane (``memory://``, the default) no cluster is started: nothing
is published, and the three functions behave exactly as in one process. A process belongs to
one cluster: a second server in the same process must use the same backplane URL and cluster
name (it then shares the node), or :class:`~polysocket.errors.BackplaneError` says so.

Channels: ``NAME:all`` (broadcasts and presence events, each with the node's sequence number)
and ``NAME:node:NODE`` (``sendTo`` deliveries, snapshot requests and snapshots for one node).
Redis pub/sub channels are global to the server whatever the database number: two clusters
sharing a broker must have different names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backplane import Backplane, BackplaneLink, backplane_url
from .errors import BackplaneError, ConnectionClosedError
from .plugins import registry
from .proxies import without_credentials
from .reconnect import ReconnectPolicy

log = logging.getLogger("polysocket.cluster")

__all__ = [
    "CLUSTER_VARIABLE",
    "DEFAULT_CLUSTER",
    "DEFAULT_PRESENCE_EXPIRY",
    "Cluster",
    "RemoteSession",
    "cluster_name",
    "node_id",
]

#: The variable naming the cluster when ``cluster=`` (``--cluster``) is not given.
CLUSTER_VARIABLE = "POLYSOCKET_CLUSTER"
#: The cluster name (channel prefix) by default.
DEFAULT_CLUSTER = "polysocket"
#: Seconds after which a node not heard from is dropped with its sessions.
DEFAULT_PRESENCE_EXPIRY = 5.0
#: Seconds a connection attempt to the broker may take.
CONNECT_TIMEOUT = 5.0
#: Messages waiting to be published, at most; more are skipped (and counted).
OUTBOUND_LIMIT = 10_000
#: Bytes waiting to be published, at most (a message alone may be bigger); more are skipped.
OUTBOUND_BYTES = 64 * 1024 * 1024
#: Messages handed to the backplane at once (``publish_many``: one round trip on Redis).
PUBLISH_BATCH = 500
#: Sessions per snapshot message.
SNAPSHOT_CHUNK = 1_000
#: Seconds ``close()`` waits for the goodbye (and what is queued before it) to leave.
LEAVE_TIMEOUT = 2.0
#: Reconnection to the broker: quicker than a client's (a node's peers wait for it), and
#: jittered so that the nodes of a cluster do not all come back at once.
BACKOFF = ReconnectPolicy(initial_delay=0.5, factor=2.0, max_delay=10.0, jitter=0.5)
#: Seconds a link must have lived for the backoff to start over when it is lost.
STABLE_LINK = 10.0

_node: tuple[int, str] | None = None


def node_id() -> str:
    """This process's node name, ``hostname/pid/4hex`` (new in a forked child)."""
    global _node
    pid = os.getpid()
    if _node is None or _node[0] != pid:
        # the host name as channel names may carry it (NATS subjects take no spaces, '*', '>')
        host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
        _node = (pid, f"{host or 'host'}/{pid}/{secrets.token_hex(2)}")
    return _node[1]


def cluster_name(given: str | None = None) -> str:
    """The cluster name a server uses: ``given``, else ``$POLYSOCKET_CLUSTER``, else
    :data:`DEFAULT_CLUSTER`. Letters, digits and ``-_.`` only (it prefixes channel names)."""
    name = given or os.environ.get(CLUSTER_VARIABLE) or DEFAULT_CLUSTER
    if not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(
            f"cluster name {name!r}: use letters, digits, '-', '_' and '.' only"
            " (it is the prefix of the backplane's channel names)"
        )
    return name


class LocalSide(Protocol):
    """What a cluster needs from this process's sessions (the endpoint server's table)."""

    def deliver(self, endpoint: str, message: str | bytes) -> int:
        """Give ``message`` to every local session of ``endpoint``; on the cluster's loop."""

    def deliver_to(self, session_id: str, message: str | bytes) -> bool:
        """Give ``message`` to the local session ``session_id``; False if it is not here."""

    def sessions(self) -> list[tuple[str, str]]:
        """``(session id, endpoint)`` of every local session."""


@dataclass(frozen=True, slots=True)
class RemoteSession:
    """A session on another node of the cluster, as ``getSessions`` lists it."""

    id: str
    endpoint: str
    node: str
    _send: Callable[[str, str | bytes], bool] = field(repr=False, compare=False)

    def send(self, message: str | bytes) -> None:
        """Send ``message`` to this session, through its node (``sendTo``). Raises
        :class:`ConnectionClosedError` when the session is no longer in the cluster."""
        if not self._send(self.id, message):
            raise ConnectionClosedError(f"session {self.id} on node {self.node} is gone")


@dataclass
class _Node:
    """What this node knows of another one."""

    heard: float
    sessions: dict[str, str] = field(default_factory=dict)  # id -> endpoint
    last_seq: int | None = None
    synced: bool = False
    asked: float | None = None  # when a snapshot was last asked for
    snapshot: tuple[str, int, list[list[str]]] | None = None  # (id, parts received, sessions)


def _encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


def _decode(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, payload = data.partition(b"\n")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("not a cluster message")
    return header, payload


def _message_parts(message: str | bytes) -> tuple[str, bytes]:
    return ("t", message.encode()) if isinstance(message, str) else ("b", bytes(message))


def _message_of(kind: Any, payload: bytes) -> str | bytes:
    return payload.decode() if kind == "t" else payload


class Cluster:
    """This process's membership in a cluster: the backplane link, the publishing queue and
    the presence view. The endpoint server makes one per process (:func:`join`); tests and
    embedders may make several with their own :class:`LocalSide` and ``node``."""

    def __init__(
        self,
        url: str,
        name: str,
        local: LocalSide,
        *,
        presence_expiry: float = DEFAULT_PRESENCE_EXPIRY,
        node: str | None = None,
        backplane: Backplane | None = None,
        outbound_limit: int = OUTBOUND_LIMIT,
        outbound_bytes: int = OUTBOUND_BYTES,
    ) -> None:
        if isinstance(presence_expiry, bool) or not presence_expiry > 0:
            raise ValueError(f"presence_expiry must be a positive number, not {presence_expiry!r}")
        self.url = url
        self.name = name
        self.node = node or node_id()
        self.presence_expiry = float(presence_expiry)
        self.heartbeat = self.presence_expiry / 4
        self._backplane = backplane or registry.backplane(url)
        self._local = local
        self._all = f"{name}:all"
        self._own_channel = self.channel_of(self.node)
        self._outbound_limit = outbound_limit
        self._outbound_bytes_limit = outbound_bytes
        self._lock = threading.Lock()
        self._outbound: deque[tuple[str, bytes]] = deque()
        self._outbound_bytes = 0
        self._seq = 0
        self._nodes: dict[str, _Node] = {}
        self._by_endpoint: dict[str, dict[str, str]] = {}  # endpoint -> {id: node}
        self._node_of: dict[str, str] = {}  # session id -> node
        self._link: BackplaneLink | None = None
        self._up = False
        self._down_since: float | None = None
        self._overflowing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._wake_pending = False
        self._publishing = False
        self._runner: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Event | None = None
        self._closing = False
        #: Set when the node's last server closes: the goodbye drops all its sessions from the
        #: other nodes' views at once, so closing sessions are not announced one by one.
        self.leaving = False
        #: Messages for other nodes not sent: broker down, or the queue full.
        self.skipped = 0
        self._skipped_in_outage = 0
        #: Outages so far (each logged once).
        self.outages = 0

    def channel_of(self, node: str) -> str:
        return f"{self.name}:node:{node}"

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the cluster runs on (``None`` before :meth:`start`)."""
        return self._loop

    # -- life ------------------------------------------------------------------------------

    async def start(self, wait: float = CONNECT_TIMEOUT) -> None:
        """Connect on the running loop and keep connected until :meth:`close`; wait up to
        ``wait`` seconds for the first attempt (a broker down at start is an outage: the
        server serves its own sessions and reconnects)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._runner = self._loop.create_task(self._run(), name=f"polysocket-cluster {self.name}")
        self._sweeper = self._loop.create_task(self._sweep(), name="polysocket-cluster expiry")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._first_attempt.wait()

    async def close(self) -> None:
        """Say goodbye (the other nodes drop this one at once), then close the link."""
        if self._closing:
            return
        if self._up:
            self._enqueue_all({"t": "bye"})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LEAVE_TIMEOUT):
                    while (self._outbound or self._publishing) and self._up:
                        await asyncio.sleep(0.01)
        self._closing = True
        tasks = {task for task in (self._runner, self._sweeper) if task is not None}
        for task in tasks:
            task.cancel()
        if tasks:  # not `await task`: that would swallow a cancellation of close() itself
            await asyncio.wait(tasks, timeout=LEAVE_TIMEOUT + CONNECT_TIMEOUT)
        await self._drop_link()

    async def _drop_link(self) -> None:
        link, self._link = self._link, None
        self._up = False
        if link is not None:
            await link.aclose()

    async def _run(self) -> None:
        assert self._first_attempt is not None
        attempt = 0
        while not self._closing:
            try:
                link = await self._backplane.connect(self.url, timeout=CONNECT_TIMEOUT)
                try:
                    await link.subscribe([self._all, self._own_channel])
                except BaseException:
                    await link.aclose()
                    raise
            except Exception as exc:  # BackplaneError; anything else is a plugin's bug
                if not isinstance(exc, BackplaneError) and self._down_since is None:
                    log.error("cluster %r: the backplane's connect failed", self.name, exc_info=exc)
                self._went_down(exc)
                self._first_attempt.set()
                attempt += 1
                await asyncio.sleep(BACKOFF.delay(attempt))
                continue
            linked_at = time.monotonic()
            self._link = link
            self._came_up()
            self._first_attempt.set()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._receive(link))
                    group.create_task(self._publish(link))
                    group.create_task(self._beat())
            except* BackplaneError as errors:
                self._went_down(errors.exceptions[0])
            except* Exception as errors:  # a plugin's bug, or ours: the node must go on
                log.error(
                    "cluster %r: the backplane link failed unexpectedly; reconnecting",
                    self.name,
                    exc_info=errors.exceptions[0],
                )
                self._went_down(errors.exceptions[0])
            finally:
                await self._drop_link()
            if not self._closing:
                # a link that failed at once (a flapping broker, a broken plugin) does not
                # start the backoff over
                stable = time.monotonic() - linked_at > STABLE_LINK
                attempt = 1 if stable else attempt + 1
                await asyncio.sleep(BACKOFF.delay(attempt))

    def _went_down(self, error: BaseException) -> None:
        with self._lock:
            self._up = False
            dropped = len(self._outbound)
            self._outbound.clear()
            self._outbound_bytes = 0
            self.skipped += dropped
            self._skipped_in_outage += dropped
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self.outages += 1
        if first and not self._closing:
            log.warning(
                "cluster %r: the backplane %s is unreachable (%s); delivering to this node's"
                " sessions only, reconnecting with backoff",
                self.name,
                without_credentials(self.url),
                error,
            )

    def _came_up(self) -> None:
        with self._lock:
            self._up = True
            since, self._down_since = self._down_since, None
            skipped, self._skipped_in_outage = self._skipped_in_outage, 0
            # every other node's view is rebuilt from its snapshot; each gets a full expiry
            # to be heard from again
            now = time.monotonic()
            for state in self._nodes.values():
                state.synced = False
                state.last_seq = None
                state.asked = None
                state.heard = now
        if since is not None:
            log.warning(
                "cluster %r: the backplane %s is back after %.1f s; %d message(s) for other"
                " nodes were skipped meanwhile; rebuilding presence",
                self.name,
                without_credentials(self.url),
                time.monotonic() - since,
                skipped,
            )
        else:
            log.info(
                "cluster %r: node %s joined through %s",
                self.name,
                self.node,
                without_credentials(self.url),
            )
        # first thing on the link: who we are (the others send us their snapshots and ask
        # for ours), then our sessions to everyone
        self._enqueue_all({"t": "hello"})

    # -- outbound -------------------------------------------------------------------------

    def _enqueue(self, channel: str, header: dict[str, Any], payload: bytes = b"") -> bool:
        """Queue a message; False (and counted) when the broker is down or the queue full.
        Any thread."""
        with self._lock:
            if not self._up:
                self.skipped += 1
                self._skipped_in_outage += 1
                return False
            full = len(self._outbound) >= self._outbound_limit or (
                self._outbound_bytes > 0
                and self._outbound_bytes + len(payload) > self._outbound_bytes_limit
            )
            if full:
                self.skipped += 1
                first_overflow = not self._overflowing
                self._overflowing = True
            else:
                header["n"] = self.node
                if channel == self._all:
                    self._seq += 1
                    header["s"] = self._seq
                data = _encode(header, payload)
                self._outbound.append((channel, data))
                self._outbound_bytes += len(data)
                if self._wake_pending:
                    return True
                self._wake_pending = True
        if full:
            if first_overflow:
                log.warning(
                    "cluster %r: the publishing queue is full (%d messages or %d MiB wait;"
                    " the broker is slow); messages for other nodes are skipped until it"
                    " drains",
                    self.name,
                    self._outbound_limit,
                    self._outbound_bytes_limit // (1024 * 1024),
                )
            return False
        loop = self._loop
        if loop is None or self._wake is None:
            return True
        try:
            if threading.get_ident() == self._loop_thread:
                self._wake.set()
            else:
                loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed
            pass
        return True

    def _enqueue_all(self, header: dict[str, Any], payload: bytes = b"") -> bool:
        return self._enqueue(self._all, header, payload)

    async def _publish(self, link: BackplaneLink) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                self._wake_pending = False
            while True:
                with self._lock:
                    if not self._outbound:
                        if self._overflowing:
                            self._overflowing = False
                        break
                    count = min(len(self._outbound), PUBLISH_BATCH)
                    batch = [self._outbound.popleft() for _ in range(count)]
                    self._outbound_bytes -= sum(len(data) for _, data in batch)
                    self._publishing = True
                try:
                    if count == 1:
                        await link.publish(*batch[0])
                    else:
                        await link.publish_many(batch)
                except BackplaneError:
                    with self._lock:  # lost with the link (some may have gone: at most once)
                        self.skipped += count
                        self._skipped_in_outage += count
                    raise
                finally:
                    self._publishing = False

    async def _beat(self) -> None:
        while True:
            self._enqueue_all({"t": "h", "c": len(self._local.sessions())})
            await asyncio.sleep(self.heartbeat)

    async def _sweep(self) -> None:
        """Drop the nodes not heard from within the expiry; broker up or down."""
        while True:
            await asyncio.sleep(self.heartbeat)
            self._expire()

    # -- what the endpoint server calls ----------------------------------------------------

    def broadcast(self, endpoint: str, message: str | bytes) -> None:
        """Queue ``message`` for the other nodes' sessions of ``endpoint``; any thread."""
        kind, payload = _message_parts(message)
        self._enqueue_all({"t": "b", "e": endpoint, "k": kind}, payload)

    def send_to(self, session_id: str, message: str | bytes) -> bool:
        """Queue ``message`` for the remote session ``session_id``; False if no node is known
        to hold it."""
        with self._lock:
            node = self._node_of.get(session_id)
        if node is None:
            return False
        kind, payload = _message_parts(message)
        self._enqueue(self.channel_of(node), {"t": "d", "i": session_id, "k": kind}, payload)
        return True

    def session_opened(self, session_id: str, endpoint: str) -> None:
        self._enqueue_all({"t": "j", "i": session_id, "e": endpoint})

    def session_closed(self, session_id: str) -> None:
        if not self.leaving:
            self._enqueue_all({"t": "l", "i": session_id})

    def remote_sessions(self, endpoint: str) -> list[RemoteSession]:
        with self._lock:
            found = list(self._by_endpoint.get(endpoint, {}).items())
        send = self.send_to
        return [RemoteSession(sid, endpoint, node, send) for sid, node in found]

    def nodes(self) -> list[str]:
        """The other nodes in the presence view."""
        with self._lock:
            return sorted(self._nodes)

    # -- inbound --------------------------------------------------------------------------

    async def _receive(self, link: BackplaneLink) -> None:
        async for channel, data in link.messages():
            try:
                header, payload = _decode(data)
                sender = header["n"]
            except (ValueError, KeyError, TypeError):
                log.debug("cluster %r: ignored a message that is not one of ours", self.name)
                continue
            if sender == self.node:
                continue
            try:
                if channel == self._all:
                    self._on_shared(sender, header, payload)
                else:
                    self._on_direct(sender, header, payload)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("cluster %r: a malformed message from %s: %s", self.name, sender, exc)
        if not self._closing:  # a link's messages() ends only by raising, or after aclose()
            raise BackplaneError(f"the {self._backplane.name} backplane's messages ended")

    def _on_shared(self, sender: str, header: dict[str, Any], payload: bytes) -> None:
        kind = header["t"]
        if kind == "b":
            self._local.deliver(header["e"], _message_of(header.get("k"), payload))
        now = time.monotonic()
        with self._lock:
            state = self._nodes.get(sender)
            if kind == "bye":
                if state is not None:
                    self._forget_locked(sender)
                    log.info("cluster %r: node %s left", self.name, sender)
                return
            if state is None:
                state = self._nodes[sender] = _Node(heard=now)
                log.info("cluster %r: node %s seen", self.name, sender)
            seq = header.get("s")
            gap = state.last_seq is not None and seq != state.last_seq + 1
            state.last_seq = seq
            state.heard = now
            if gap:
                state.synced = False
            if kind == "j":
                self._add_locked(sender, state, header["i"], header["e"])
            elif kind == "l":
                self._remove_locked(header["i"])
                state.sessions.pop(header["i"], None)
            elif kind == "h" and state.synced and header.get("c") != len(state.sessions):
                state.synced = False
            elif kind == "hello":  # it (re)connected: it knows nothing of us, we of it
                state.synced = False
                state.asked = None
            ask = not state.synced and (
                state.asked is None or now - state.asked > self.presence_expiry
            )
            if ask:
                state.asked = now
        if kind == "hello":
            self._send_snapshot(sender)
        if ask:
            self._enqueue(self.channel_of(sender), {"t": "q"})

    def _on_direct(self, sender: str, header: dict[str, Any], payload: bytes) -> None:
        kind = header["t"]
        if kind == "d":
            self._local.deliver_to(header["i"], _message_of(header.get("k"), payload))
        elif kind == "q":
            self._send_snapshot(sender)
        elif kind == "s":
            self._on_snapshot(sender, header)

    def _send_snapshot(self, to: str) -> None:
        """Our sessions, in chunks, to ``to``'s channel (in order after everything we
        published before: the view it builds is the one at this point of our sequence)."""
        rows = [[sid, endpoint] for sid, endpoint in self._local.sessions()]
        parts = max(1, -(-len(rows) // SNAPSHOT_CHUNK))
        snapshot = secrets.token_hex(4)
        channel = self.channel_of(to)
        for part in range(parts):
            chunk = rows[part * SNAPSHOT_CHUNK : (part + 1) * SNAPSHOT_CHUNK]
            header = {"t": "s", "id": snapshot, "p": part, "of": parts, "ss": chunk}
            if not self._enqueue(channel, header):
                return

    def _on_snapshot(self, sender: str, header: dict[str, Any]) -> None:
        snapshot, part, parts, rows = header["id"], header["p"], header["of"], header["ss"]
        with self._lock:
            state = self._nodes.get(sender)
            if state is None:
                state = self._nodes[sender] = _Node(heard=time.monotonic())
            state.heard = time.monotonic()
            if part == 0:
                state.snapshot = (snapshot, 0, [])
            if state.snapshot is None or state.snapshot[0] != snapshot:
                return  # the start of this one was missed: the next ask gets another
            _, received, collected = state.snapshot
            if received != part:
                state.snapshot = None
                return
            collected.extend(rows)
            state.snapshot = (snapshot, part + 1, collected)
            if part + 1 < parts:
                return
            state.snapshot = None
            for sid in list(state.sessions):
                self._remove_locked(sid)
            state.sessions = {}
            for sid, endpoint in collected:
                self._add_locked(sender, state, sid, endpoint)
            state.synced = True
            state.asked = None

    def _add_locked(self, node: str, state: _Node, sid: str, endpoint: str) -> None:
        state.sessions[sid] = endpoint
        self._by_endpoint.setdefault(endpoint, {})[sid] = node
        self._node_of[sid] = node

    def _remove_locked(self, sid: str) -> None:
        node = self._node_of.pop(sid, None)
        if node is None:
            return
        state = self._nodes.get(node)
        endpoint = state.sessions.get(sid) if state is not None else None
        if endpoint is not None:
            members = self._by_endpoint.get(endpoint)
            if members is not None:
                members.pop(sid, None)
                if not members:
                    del self._by_endpoint[endpoint]

    def _forget_locked(self, node: str) -> None:
        state = self._nodes.get(node)
        if state is None:
            return
        for sid in list(state.sessions):
            self._remove_locked(sid)
        del self._nodes[node]

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            gone = [n for n, s in self._nodes.items() if now - s.heard > self.presence_expiry]
            for node in gone:
                count = len(self._nodes[node].sessions)
                self._forget_locked(node)
                log.info(
                    "cluster %r: node %s not heard from for %g s: dropped with %d session(s)",
                    self.name,
                    node,
                    self.presence_expiry,
                    count,
                )


# -- the process's cluster ------------------------------------------------------------------

_current: Cluster | None = None
_members = 0
_process_choice: tuple[str, str] | None = None
_choice_lock = threading.Lock()


def current() -> Cluster | None:
    """The cluster this process's servers belong to (``None``: one process, no broker)."""
    return _current


def claim(url: str | None, name: str | None) -> tuple[str, str]:
    """Check that a server with ``url`` and ``name`` (a backplane linking processes) may run
    in this process (one process, one cluster) and hold that choice until :func:`release`;
    the resolved pair. Servers with ``memory://`` claim nothing: they serve this process's
    sessions, which are the node's whatever cluster another server of the process is in."""
    global _members, _process_choice
    resolved = (backplane_url(url), cluster_name(name))
    registry.backplane(resolved[0])  # an unknown scheme or a missing library fails here
    with _choice_lock:
        if _process_choice is not None and _process_choice != resolved and _members:
            held_url, held_name = _process_choice
            raise BackplaneError(
                f"this process already serves with backplane {without_credentials(held_url)!r}"
                f" in cluster {held_name!r}; a process belongs to one cluster, so a server"
                f" with {without_credentials(resolved[0])!r} (cluster {resolved[1]!r}) must"
                " run in a process of its own, or use the same backplane and cluster"
            )
        _process_choice = resolved
        _members += 1
    return resolved


async def join(choice: tuple[str, str], local: LocalSide, presence_expiry: float) -> Cluster | None:
    """Start (or share) the process's cluster for a claimed ``choice``."""
    global _current
    url, name = choice
    if _current is None:
        cluster = Cluster(url, name, local, presence_expiry=presence_expiry)
        _current = cluster
        await cluster.start()
    return _current


def sole_member() -> bool:
    """Whether one server of this process is in the cluster (its close is the node's)."""
    with _choice_lock:
        return _members == 1


async def release() -> None:
    """A server of this process stopped; the last one closes the cluster."""
    global _current, _members, _process_choice
    with _choice_lock:
        _members = max(0, _members - 1)
        last = _members == 0
        if last:
            _process_choice = None
    if last and _current is not None:
        cluster, _current = _current, None
        await cluster.close()


def session_rows(sessions: Iterable[Any]) -> list[tuple[str, str]]:
    return [(s.id, s.endpoint) for s in sessions]
