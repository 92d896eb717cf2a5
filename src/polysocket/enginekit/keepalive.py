"""Keepalive pings for engines whose library has none to offer with a separate timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from polysocket.transport import ConnectionOptions

__all__ = ["Keepalive"]


class Keepalive:
    """A ping every ``interval`` seconds; no pong within ``timeout``: ``on_lost(error)``.

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
        on_lost: Callable[[TimeoutError], None],
        paused: Callable[[], bool] = lambda: False,
    ) -> Keepalive | None:
        """The keepalive ``options`` ask for (``ping_interval``, ``ping_timeout``), or None."""
        interval, timeout = options.ping_interval, options.keepalive_timeout
        if interval is None or timeout is None:
            return None
        return cls(ping, interval, timeout, on_lost, paused)

    def __init__(
        self,
        ping: Callable[[], None],
        interval: float,
        timeout: float,
        on_lost: Callable[[TimeoutError], None],
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self._ping = ping
        self._interval = interval
        self._timeout = timeout
        self._on_lost = on_lost
        self._paused = paused
        self._pong = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def pong(self) -> None:
        self._pong.set()

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self._interval
        while True:
            await asyncio.sleep(max(0.0, next_ping - loop.time()))
            next_ping = loop.time() + self._interval
            self._pong.clear()
            try:
                self._ping()
            except Exception:  # the connection is going away: nothing left to keep alive
                return
            try:
                async with asyncio.timeout(self._timeout):
                    await self._pong.wait()
            except TimeoutError:
                if self._paused():
                    continue
                self._on_lost(
                    TimeoutError(f"keepalive ping timeout: no pong within {self._timeout} s")
                )
                return
