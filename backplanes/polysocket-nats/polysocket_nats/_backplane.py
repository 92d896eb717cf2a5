"""The NATS backplane and its link, on nats-py."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polysocket.backplane import Backplane, BackplaneLink, Delivery
from polysocket.errors import BackplaneError

from ._names import SCHEMES, NatsURL, parse_url, subject_of
from ._parts import PART_HEADER, Reassembly, new_token, split

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger("polysocket.backplanes.nats")

#: Messages a link holds for a ``messages()`` reader that is behind; more are dropped (and
#: counted in :attr:`NatsLink.dropped`), as NATS itself drops for a slow consumer.
INBOX_MESSAGES = 65_536
#: The same bound in payload bytes.
INBOX_BYTES = 64 * 1024 * 1024
#: How often the client pings the server, and how many pings may go unanswered before the
#: link counts as lost: a server that vanishes without closing the TCP connection (a host
#: switched off) is noticed within about PING_INTERVAL * (MAX_OUTSTANDING_PINGS + 1) s.
PING_INTERVAL = 5
MAX_OUTSTANDING_PINGS = 2
#: How long subscribe() waits for the server to confirm the subscriptions.
SUBSCRIBE_TIMEOUT = 5
#: How long aclose() waits for nats-py to flush and close before it lets go.
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class LinkSettings:
    """What a :class:`NatsBackplane` gives each of its links (see the module's constants)."""

    inbox_messages: int
    inbox_bytes: int
    ping_interval: int
    max_outstanding_pings: int


class NatsBackplane(Backplane):
    """``nats://[user:password@]host[:port][,host2[:port2]...]`` (``tls://`` for TLS with the
    system's trust store): core NATS publish/subscribe through nats-py, one connection per
    link. See the distribution's README for what is NATS's own and what is added here."""

    name = "nats"
    schemes = SCHEMES
    library = "nats"
    install_hint = "polysocket-nats"

    def __init__(
        self,
        *,
        inbox_messages: int = INBOX_MESSAGES,
        inbox_bytes: int = INBOX_BYTES,
        ping_interval: int = PING_INTERVAL,
        max_outstanding_pings: int = MAX_OUTSTANDING_PINGS,
    ) -> None:
        self.settings = LinkSettings(
            inbox_messages, inbox_bytes, ping_interval, max_outstanding_pings
        )

    def library_version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("nats-py")
        except PackageNotFoundError:
            return None

    async def connect(self, url: str, *, timeout: float) -> BackplaneLink:
        """Connect to one of the servers of ``url``: each is tried once, in random order (as
        NATS clients do, so that nodes spread over a NATS cluster), all within ``timeout``.
        nats-py's own reconnection is off: a lost connection ends the link and the core opens
        another one."""
        target = parse_url(url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        failures: list[str] = []
        for server in random.sample(target.servers, len(target.servers)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures.append(f"{_hostport(server)}: not tried, no time left")
                continue
            link = NatsLink(target, server, self.settings)
            try:
                await asyncio.wait_for(link._open(remaining), remaining)
            except (TimeoutError, OSError, BackplaneError, _nats_error()) as error:
                await link.aclose()
                # nats-py ends a failed connect with NoServersError; what it met before says why.
                cause = error if isinstance(error, BackplaneError) else link._last_error or error
                failures.append(f"{_hostport(server)}: {_describe(cause, remaining)}")
                continue
            return link
        raise BackplaneError(
            f"nats backplane: cannot connect to {target.shown} within {timeout:g} s"
            f" ({'; '.join(failures)}). Check that nats-server runs there and takes this"
            " URL's credentials; the cluster tries again with backoff."
        )


def _nats_error() -> type[Exception]:
    from nats.errors import Error

    return Error


async def _sent(client: Client, timeout: float) -> None:
    """Wait until nats-py's flusher task has written its buffer to the socket. nats-py's
    ``flush()`` writes its PING straight to the socket, ahead of commands still in the buffer:
    without this wait the server may answer the PING before it has seen the SUB, and messages
    published right after ``subscribe()`` returned are not delivered (seen under load)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    spins = 0
    while client.pending_data_size > 0:
        if loop.time() > deadline:
            raise TimeoutError
        spins += 1
        await asyncio.sleep(0 if spins < 100 else 0.001)  # the flusher runs at the next turn


def _server_info(client: Client) -> dict[str, Any]:
    """The server's INFO as nats-py keeps it (a private attribute: nats-py has no public
    accessor; a missing one reads as an empty INFO, so a tls:// link fails closed)."""
    info = getattr(client, "_server_info", None)
    return info if isinstance(info, dict) else {}


def _hostport(server: str) -> str:
    return server.partition("://")[2]


def _describe(error: BaseException, waited: float | None = None) -> str:
    if isinstance(error, TimeoutError) and waited is not None:
        return f"no answer within {waited:.3g} s"
    text = str(error).strip() or type(error).__name__
    return text.removeprefix("nats: ")


class NatsLink(BackplaneLink):
    """One nats-py connection. Every subscription feeds one bounded inbox in the order the
    client reads the messages from the socket, so ``messages()`` keeps the server's order
    across channels too (what one link publishes, on any channels, arrives in that order)."""

    def __init__(self, target: NatsURL, server: str, settings: LinkSettings) -> None:
        self._target = target
        self._server = server
        self._client: Client | None = None
        self._subscribed: set[str] = set()
        self._inbox: deque[Delivery] = deque()
        self._inbox_bytes = 0
        self._settings = settings
        self._arrived = asyncio.Event()
        self._ended = False
        self._closing = False
        self._lost: str | None = None
        #: What nats-py last reported: a failed connect ends in NoServersError, this says why.
        self._last_error: Exception | None = None
        self._dropping = False
        #: Messages dropped because ``messages()`` was behind by more than the inbox holds.
        self.dropped = 0
        self._token = new_token()
        self._sequence = 0
        self._reassembly = Reassembly(settings.inbox_bytes)

    def __repr__(self) -> str:
        return f"<NatsLink {_hostport(self._server)}>"

    @property
    def server(self) -> str:
        """The server this link is connected to (``host:port``)."""
        return _hostport(self._server)

    async def _open(self, timeout: float) -> None:
        from nats.aio.client import Client

        self._client = Client()
        await self._client.connect(
            servers=[self._server],
            # An int for nats-py's annotations; connect() bounds the whole attempt anyway.
            connect_timeout=max(1, math.ceil(timeout)),
            # nats-py tries a server of its pool until it has failed more than
            # max_reconnect_attempts times, even with allow_reconnect=False; 0 means "no
            # limit". 1 is the least: two attempts, back to back (reconnect_time_wait=0).
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            ping_interval=self._settings.ping_interval,
            max_outstanding_pings=self._settings.max_outstanding_pings,
            # The core skips a node's own messages: NATS need not send them back at all.
            no_echo=True,
            name="polysocket",
            user=self._target.user,
            password=self._target.password,
            token=self._target.token,
            flush_timeout=timeout,
            error_cb=self._on_error,
            disconnected_cb=self._on_gone,
            closed_cb=self._on_gone,
        )
        # nats-py upgrades to TLS when the server's INFO asks for it, whatever the URL's
        # scheme: a tls:// URL must not end up in plaintext with a server that does not.
        if self._target.scheme == "tls" and not _server_info(self._client).get("tls_required"):
            raise BackplaneError(
                "the server does not offer TLS (its INFO has no tls_required); use nats://"
                " for a plaintext server, or enable TLS on it"
            )

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        log.debug("nats backplane %s: %s", self.server, _describe(error))

    async def _on_gone(self) -> None:
        if self._ended:
            return
        if not self._closing:
            client = self._client
            cause = client.last_error if client is not None else None
            why = f": {_describe(cause)}" if cause is not None else ""
            self._lost = f"nats backplane: lost the connection to {self.server}{why}"
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._arrived.set()

    @property
    def lost_parts(self) -> int:
        """Messages sent in parts that could not be put back together (a part missing)."""
        return self._reassembly.lost

    def _deliver(self, channel: str, msg: Msg) -> None:
        """nats-py's read loop calls this for every message of every subscription, in order."""
        if self._ended:
            return
        data = msg.data
        part = msg.headers.get(PART_HEADER) if msg.headers else None
        if part is not None:
            whole = self._reassembly.add(channel, part, data)
            if whole is None:
                return
            data = whole
        if (
            len(self._inbox) >= self._settings.inbox_messages
            or self._inbox_bytes + len(data) > self._settings.inbox_bytes
        ):
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "nats backplane %s: the reader is behind by %d messages (%d bytes);"
                    " messages are dropped until it catches up (delivery is at most once)",
                    self.server,
                    len(self._inbox),
                    self._inbox_bytes,
                )
            return
        self._inbox.append((channel, data))
        self._inbox_bytes += len(data)
        self._arrived.set()

    def _check(self) -> Client:
        if self._lost is not None:
            raise BackplaneError(self._lost)
        if self._closing or self._client is None or self._client.is_closed:
            raise BackplaneError(f"nats backplane {self.server}: the link is closed")
        return self._client

    async def subscribe(self, channels: Sequence[str]) -> None:
        client = self._check()
        new = [channel for channel in dict.fromkeys(channels) if channel not in self._subscribed]
        try:
            for channel in new:
                await client.subscribe(subject_of(channel), future=_Funnel(self, channel))
                self._subscribed.add(channel)
            await _sent(client, SUBSCRIBE_TIMEOUT)
            # PING/PONG: the server has taken every SUB written before the PING.
            await client.flush(timeout=SUBSCRIBE_TIMEOUT)
        except (OSError, TimeoutError, _nats_error()) as error:
            raise BackplaneError(
                f"nats backplane {self.server}: subscribing failed: {_describe(error)}"
            ) from error

    async def publish(self, channel: str, data: bytes) -> None:
        """Append the message to nats-py's outbound buffer, which its flusher task writes to
        the one TCP connection in order. It does not wait for the server (a flush is a
        PING/PONG round trip per message); the buffer is bounded by nats-py's ``pending_size``
        (2 MiB), above which ``publish`` waits for the socket to take it. A message over the
        server's ``max_payload`` goes in parts (see :mod:`polysocket_nats._parts`)."""
        client = self._check()
        subject = subject_of(channel)
        try:
            if len(data) <= client.max_payload:
                await client.publish(subject, data)
                return
            if not _server_info(client).get("headers"):
                raise BackplaneError(
                    f"nats backplane {self.server}: a message of {len(data)} bytes is over the"
                    f" server's max_payload ({client.max_payload}) and the server takes no"
                    " headers to send it in parts: use nats-server 2.2 or later, or raise"
                    " its max_payload"
                )
            self._sequence += 1
            for part, header in split(data, client.max_payload, self._token, self._sequence):
                await client.publish(subject, part, headers={PART_HEADER: header})
        except _nats_error() as error:
            raise BackplaneError(
                f"nats backplane {self.server}: publishing to {channel!r} failed:"
                f" {_describe(error)}"
            ) from error

    async def messages(self) -> AsyncIterator[Delivery]:
        while True:
            while self._inbox:
                channel, data = self._inbox.popleft()
                self._inbox_bytes -= len(data)
                if not self._inbox:
                    self._dropping = False
                yield channel, data
            if self._ended:
                if self._lost is not None:
                    raise BackplaneError(self._lost)
                return
            self._arrived.clear()
            await self._arrived.wait()

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        client = self._client
        try:
            if client is not None and not client.is_closed:
                await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
        except Exception as error:  # closing must not fail: the link is gone either way
            log.debug("nats backplane %s: closing: %s", self.server, _describe(error))
        finally:
            self._end()


class _Funnel(asyncio.Future[Any]):
    """The ``future=`` of a nats-py subscription: nats-py hands each message of such a
    subscription to ``future.set_result`` from its read loop, in the order it parses them
    (and skips its per-subscription queue and task). One funnel per channel, all into the
    link's single inbox: the server's order across channels survives, which a queue and a
    task per subscription would not keep."""

    def __init__(self, link: NatsLink, channel: str) -> None:
        super().__init__()
        self._link = link
        self._channel = channel

    def set_result(self, result: Msg) -> None:
        self._link._deliver(self._channel, result)
