"""The ``memory`` backplane: one process, no broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from ..backplane import Backplane, BackplaneLink, Delivery
from ..errors import BackplaneError
from ..hookspecs import hookimpl


class MemoryBackplane(Backplane):
    """``memory://``: one process, today's behaviour; the default. Every link of a process
    shares one bus, so a node hears only itself (and skips that): broadcast, ``sendTo`` and
    ``getSessions`` reach the process's own sessions. It needs no broker and never fails."""

    name = "memory"
    schemes = frozenset({"memory"})

    def __init__(self) -> None:
        self._subscribers: dict[str, list[_MemoryLink]] = {}

    async def connect(self, url: str, *, timeout: float) -> BackplaneLink:
        return _MemoryLink(self._subscribers)


#: Messages a memory link holds for a subscriber that is not reading; above it the oldest
#: are dropped (at most once, as on a broker).
MEMORY_LINK_QUEUE = 10_000


class _MemoryLink(BackplaneLink):
    def __init__(self, subscribers: dict[str, list[_MemoryLink]]) -> None:
        self._subscribers = subscribers
        self._channels: list[str] = []
        self._inbox: asyncio.Queue[Delivery | None] = asyncio.Queue(MEMORY_LINK_QUEUE)
        self._closed = False

    async def subscribe(self, channels: Sequence[str]) -> None:
        for channel in channels:
            if channel not in self._channels:
                self._channels.append(channel)
                self._subscribers.setdefault(channel, []).append(self)

    async def publish(self, channel: str, data: bytes) -> None:
        if self._closed:
            raise BackplaneError("memory backplane: the link is closed")
        for link in self._subscribers.get(channel, ()):
            link._deliver((channel, data))

    def _deliver(self, delivery: Delivery | None) -> None:
        if self._inbox.full():
            self._inbox.get_nowait()
        self._inbox.put_nowait(delivery)

    async def messages(self) -> AsyncIterator[Delivery]:
        while True:
            delivery = await self._inbox.get()
            if delivery is None:
                return
            yield delivery

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for channel in self._channels:
            links = self._subscribers.get(channel, [])
            if self in links:
                links.remove(self)
        self._deliver(None)


@hookimpl
def polysocket_register_backplanes(register: Callable[[Backplane], None]) -> None:
    register(MemoryBackplane())
