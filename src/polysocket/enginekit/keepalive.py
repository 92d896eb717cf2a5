"""Keepalive pings for engines whose library has none to offer with a separate timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from polysocket.transport import ConnectionOptions, KeepaliveTimeout

__all__ = ["Keepalive"]


class Keepalive:
    """A ping every ``interval`` seconds; no pong within ``timeout``: ``on_lost(error)``, a
    :class:`~polysocket.transport.KeepaliveTimeout` the engine ends the connection with
    (``TransportClosed.error``; the core reports 1011 for it).

    Any pong counts (pings may carry no payload to match). The engine calls :meth:`pong`
    for every pong it receives and :meth:`stop` when the closing handshake begins or the
    connection ends. ``paused()``, if given, says that this side has stopped reading (a
    backlog of unread messages): a pong may then sit unread, so it is not held against
    the peer.

    ``ping()`` must queue the ping without waiting for the write buffer to drain: the pong
    wait starts when it returns, so a peer that stopped reading while this side sends (its
    TCP window closed, our ping stuck behind the data) is still dropped in time.
    """

    @classmethod
    def start(
        cls,
        options: ConnectionOptions,
        ping: Callable[[], None],
        on_lost: Callable[[KeepaliveTimeout], None],
        paused: Callable[[], bool] = lambda: False,
    ) -> Keepalive | None:
        """The keepalive ``options`` ask for (``ping_interval``, ``ping_timeout``), or None."""
        interval, timeout = options.ping_interval, options.keepalive_timeout
        if interval is None or timeout is None:
            return None
        return cls(ping, interval, timeout, on_lost, paused)

    __slots__ = (
        "_awaiting",
        "_interval",
        "_loop",
        "_next_ping",
        "_on_lost",
        "_paused",
        "_ping",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        ping: Callable[[], None],
        interval: float,
        timeout: float,
        on_lost: Callable[[KeepaliveTimeout], None],
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self._ping = ping
        self._interval = interval
        self._timeout = timeout
        self._on_lost = on_lost
        self._paused = paused
        self._awaiting = False  # a ping is out, no pong yet
        # One timer at a time, no task: an idle connection costs a TimerHandle, not a task,
        # its coroutine and an Event.
        self._loop = asyncio.get_running_loop()
        self._next_ping = self._loop.time() + interval
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            self._next_ping, self._ping_due
        )

    def pong(self) -> None:
        if self._awaiting:
            self._awaiting = False
            self._wait_for_next_ping()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ping_due(self) -> None:
        self._next_ping = self._loop.time() + self._interval
        try:
            self._ping()
        except Exception:  # the connection is going away: nothing left to keep alive
            self._timer = None
            return
        self._awaiting = True
        self._timer = self._loop.call_later(self._timeout, self._pong_due)

    def _pong_due(self) -> None:
        if self._awaiting and not self._paused():
            self._timer = None
            self._on_lost(KeepaliveTimeout(self._timeout))
            return
        self._awaiting = False  # paused: an unread pong is not held against the peer
        self._wait_for_next_ping()

    def _wait_for_next_ping(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._loop.call_at(
                max(self._next_ping, self._loop.time()), self._ping_due
            )
