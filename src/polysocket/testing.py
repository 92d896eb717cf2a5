"""An in-memory engine for tests, in the spirit of httpx's ``MockTransport``.

``MemoryEngine(peer)`` connects without a network: each connection runs ``peer(end)`` as a
task, where ``end`` is the other side of the connection (:class:`MemoryPeer`). Register it
with ``polysocket.testing.install(engine)`` and use it like any engine::

    async def echo(end):
        async for message in end:
            await end.send(message)

    with polysocket.testing.install(MemoryEngine(echo)):
        client = polysocket.createWebsocket("ws://test/", handler, engine="memory")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from .errors import ConnectError
from .hookspecs import hookimpl
from .plugins import registry
from .transport import ClientOptions, Engine, Message, MessageTooBigError, TransportClosed

__all__ = ["MemoryEngine", "MemoryPeer", "install"]


@dataclass
class _Close:
    code: int | None
    reason: str = ""


@dataclass
class _Pipe:
    """One direction of a connection."""

    queue: asyncio.Queue[Message | _Close] = field(default_factory=asyncio.Queue)
    ended: _Close | None = None


class _End:
    """Shared by both ends: reads one pipe, writes the other."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe, max_size: int | None) -> None:
        self._in = inbound
        self._out = outbound
        self._max_size = max_size
        self._close_sent: _Close | None = None
        self._receiving = False
        self.closed = asyncio.Event()

    async def send(self, message: Message) -> None:
        if self._close_sent is not None or self._in.ended is not None:
            raise TransportClosed(self._in.ended.code if self._in.ended else None)
        await asyncio.sleep(0)  # a real socket write yields too
        self._out.queue.put_nowait(message)

    async def receive(self) -> Message:
        if self._in.ended is not None:
            raise TransportClosed(self._in.ended.code, self._in.ended.reason)
        self._receiving = True
        try:
            item = await self._in.queue.get()
        finally:
            self._receiving = False
        if isinstance(item, _Close):
            self._in.ended = item
            if self._close_sent is None and item.code is not None:
                self._send_close(item.code, item.reason)
            self.closed.set()
            raise TransportClosed(item.code, item.reason)
        if self._max_size is not None and len(item) > self._max_size:
            self._send_close(1009, "message too big")
            self._in.ended = _Close(1009, "message too big")
            self.closed.set()
            raise TransportClosed(1009, error=MessageTooBigError(self._max_size, len(item)))
        return item

    def _send_close(self, code: int | None, reason: str) -> None:
        self._close_sent = _Close(code, reason)
        self._out.queue.put_nowait(_Close(code, reason))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_sent is None and self._in.ended is None:
            self._send_close(code, reason)
        if not self._receiving:  # nobody reads: read up to the answer ourselves
            with contextlib.suppress(TransportClosed):
                while not self.closed.is_set():
                    await self.receive()
        await self.closed.wait()

    def abort(self) -> None:
        """Drop the connection: the other end sees no close frame (code 1006)."""
        if self._close_sent is None:
            self._send_close(None, "")
        if self._in.ended is None:
            self._in.ended = _Close(None)
            self._in.queue.put_nowait(_Close(None))
        self.closed.set()


class MemoryTransport(_End):
    subprotocol: str | None = None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Only sends the close frame, as the contract allows: the core reads up to the
        peer's answer."""
        if self._close_sent is None and self._in.ended is None:
            self._send_close(code, reason)


class MemoryPeer(_End):
    """The far end of an in-memory connection, handed to the engine's ``peer`` coroutine."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe, uri: str, options: ClientOptions):
        super().__init__(inbound, outbound, None)
        self.uri = uri
        self.options = options

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except TransportClosed:
                return


Peer = Callable[[MemoryPeer], Awaitable[None]]


class MemoryEngine(Engine):
    """An engine whose connections end in ``peer`` coroutines instead of a network."""

    library = "polysocket"
    install_hint = "polysocket"

    def __init__(
        self,
        peer: Peer,
        name: str = "memory",
        capabilities: frozenset[str] = frozenset({"client", "headers", "subprotocols"}),
        refuse: int | None = None,
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.capabilities = capabilities  # type: ignore[misc]
        self._peer = peer
        self._refuse = refuse
        self.peers: list[MemoryPeer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self, uri: str, options: ClientOptions) -> MemoryTransport:
        if self._refuse is not None:
            raise ConnectError(f"{uri} refused the handshake", status=self._refuse)
        to_peer, to_client = _Pipe(), _Pipe()
        transport = MemoryTransport(to_client, to_peer, options.max_size)
        peer = MemoryPeer(to_peer, to_client, uri, options)
        self.peers.append(peer)
        task = asyncio.get_running_loop().create_task(self._peer(peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return transport


@contextlib.contextmanager
def install(engine: Engine) -> Iterator[Engine]:
    """Register ``engine`` as a plugin for the duration of the ``with`` block."""

    class Plugin:
        @hookimpl
        def polysocket_register_engines(self, register: Callable[[Engine], None]) -> None:
            register(engine)

    plugin_name = f"polysocket.testing:{engine.name}"
    registry.register_plugin(Plugin(), plugin_name)
    try:
        yield engine
    finally:
        registry.unregister_plugin(plugin_name)
