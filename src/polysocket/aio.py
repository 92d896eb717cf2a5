"""The asyncio API: ``async with polysocket.connect(uri) as ws`` on the caller's own loop,
and ``async for ws in polysocket.connect(uri, reconnect=True)`` to reconnect.

A reader task of the core reads every connection from the moment it opens, whether or not
anyone awaits ``recv()``, so the engine keeps answering pings (aiohttp's, for one, answers
them only inside its ``receive()``), sees the peer's close frame and reports a keepalive
timeout while the caller is busy elsewhere. What it reads waits in a buffer bounded as the
sync API's handler queue is: ``max_queue`` bytes (each message counted with
:data:`~polysocket.dispatch.MESSAGE_OVERHEAD`); above it the reader pauses, so the engine
stops reading the socket (TCP backpressure), until ``recv()`` is down to a quarter. While
paused, pings go unanswered on engines that answer them only when read, as in the sync API:
a caller that must stay connected while it leaves megabytes unread raises ``max_queue``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Generator
from typing import Any

from .client import check_uri, open_transport
from .connection import check_close, check_message, close_outcome
from .dispatch import MESSAGE_OVERHEAD
from .errors import ConnectError, ConnectionClosedError
from .managed import ABORT_GRACE, ManagedTransport
from .options import client_options
from .plugins import registry as engines
from .reconnect import ReconnectPolicy, retryable
from .transport import ClientOptions, Message, TransportClosed

log = logging.getLogger("polysocket.aio")

__all__ = ["AsyncConnection", "connect"]

log = logging.getLogger("polysocket.aio")


class AsyncConnection:
    """An open connection for asyncio code. One task may ``recv`` at a time.

    Create it on the loop that uses it (``connect`` does): its reader task runs there until
    the connection ends (see the module).
    """

    def __init__(self, transport: ManagedTransport, uri: str, engine: str, options: ClientOptions):
        self._transport = transport
        self._options = options
        self._close_requested: tuple[int, str] | None = None
        self.uri = uri
        #: Where the handshake completed: ``uri``, or another after redirects.
        self.connected_uri = transport.connected_uri or uri
        self.engine = engine
        self.subprotocol = transport.subprotocol
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._inbox: deque[Message] = deque()
        self._inbox_bytes = 0
        self._max_queue = options.max_queue
        self._dropped = 0  # arrived after close() with the buffer full
        self._end: TransportClosed | None = None
        #: Set when a message arrives or the connection ends (what recv() waits on).
        self._arrived = asyncio.Event()
        #: The reader's pause while the buffer is over max_queue; resolved by recv() or close().
        self._room: asyncio.Future[None] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        message = check_message(message)
        if self._close_requested is not None or self.close_code is not None:
            raise self._closed_error()
        try:
            await self._transport.send(message)
        except TransportClosed as closed:
            await self._reader_verdict()
            self._ended(self._end or closed)
            raise self._closed_error() from None

    async def _reader_verdict(self) -> None:
        """Let the reader find out how the connection ended (a send only sees that it did):
        it reads the peer's close frame or the engine's error, such as a keepalive timeout.
        A paused reader reads nothing more; an engine that never ends it is not waited for."""
        if self._end is None and self._room is None:
            await asyncio.wait([self._reader], timeout=ABORT_GRACE)

    async def recv(self) -> Message:
        """The next message; raises ``ConnectionClosedError`` once the connection has ended
        and every message that arrived before the end was received."""
        while not self._inbox:
            if self._end is not None:
                self._ended(self._end)
                raise self._closed_error() from self._end.error
            self._arrived.clear()
            await self._arrived.wait()
        message = self._inbox.popleft()
        self._inbox_bytes -= len(message) + MESSAGE_OVERHEAD
        room = self._room
        if room is not None and self._inbox_bytes <= self._max_queue // 4:
            self._resume()
        return message

    async def __aiter__(self) -> AsyncIterator[Message]:
        """Messages until the connection closes; a normal close (1000/1001) ends quietly."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosedError as exc:
                if exc.code in (1000, 1001):
                    return
                raise

    async def close(self, code: int = 1000, reason: str = "") -> None:
        check_close(code, reason)
        if self._close_requested is None:
            self._close_requested = (int(code), reason)
        # The reader must reach the peer's close frame: no pause from now on.
        self._resume()
        await self._transport.close(code, reason)  # bounded by close_timeout; never raises
        # Ended by now: our code once the peer answered, 1006 when it never did (as the
        # blocking API reports it).
        self._ended(self._transport.ended or TransportClosed(None))

    # -- the reader task ----------------------------------------------------------------------

    def _deliver(self, message: Message) -> asyncio.Future[None] | None:
        closing = self._close_requested is not None
        if closing and self._inbox_bytes > self._max_queue:
            # Nobody is bound to read after close(): past max_queue, drop rather than grow.
            if not self._dropped:
                log.warning(
                    "messages arriving after close() with %d bytes unread (over max_queue)"
                    " are dropped until the connection ends",
                    self._inbox_bytes,
                )
            self._dropped += 1
            return None
        self._inbox.append(message)
        self._inbox_bytes += len(message) + MESSAGE_OVERHEAD
        self._arrived.set()
        if self._inbox_bytes > self._max_queue and not closing:
            self._room = asyncio.get_running_loop().create_future()
            return self._room
        return None

    def _resume(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    async def _read(self) -> None:
        try:
            await self._transport.read_forever(self._deliver)
        except TransportClosed as closed:
            self._end = closed
            self._ended(closed)
        except asyncio.CancelledError:  # the loop is shutting down: drop the connection
            self._transport.abort()
            self._end = self._transport.ended or TransportClosed(None)
            self._ended(self._end)
            raise
        finally:
            self._arrived.set()

    def _ended(self, closed: TransportClosed) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = close_outcome(closed, self._close_requested)

    def _closed_error(self) -> ConnectionClosedError:
        return ConnectionClosedError(
            f"the connection is closed (code {self.close_code}); open a new one",
            code=self.close_code,
            reason=self.close_reason or "",
        )

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class connect:
    """Open a connection: ``ws = await connect(uri)`` or ``async with connect(uri) as ws``;
    or one after another: ``async for ws in connect(uri, reconnect=True)``.

    The engine and options are checked at once, before any network traffic.
    """

    def __init__(self, uri: str, engine: str | None = None, **options: Any) -> None:
        self._engine = engines.get(engine)
        self._options = client_options(self._engine, options)
        check_uri(uri, self._engine)
        self._uri = uri
        self._connection: AsyncConnection | None = None

    async def _open(self) -> AsyncConnection:
        transport = await open_transport(self._engine, self._uri, self._options)
        return AsyncConnection(transport, self._uri, self._engine.name, self._options)

    def __await__(self) -> Generator[Any, None, AsyncConnection]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncConnection:
        self._connection = await self._open()
        return self._connection

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def __aiter__(self) -> AsyncIterator[AsyncConnection]:
        """A new connection after each loss, as websockets' ``async for ws in connect()``.

        The first connection is tried at once; after a failed attempt or a lost connection,
        attempt ``n`` waits the ``reconnect=`` policy's delay (the default policy when
        ``reconnect=`` is not given: iterating asks for reconnection). Each connection is
        closed when its iteration ends. The iteration ends after ``ws.close()`` in the loop
        body, and after a 1000/1001 close from the server unless the policy retries those;
        it raises :class:`ConnectError` for a refusal other than 500/502/503/504 and once
        ``max_attempts`` attempts in a row failed.
        """
        policy = self._options.reconnect or ReconnectPolicy()
        attempt = 0  # attempts since the last open
        while True:
            if attempt:
                delay = policy.delay(attempt)
                log.info("reconnecting to %s in %.2f s (attempt %d)", self._uri, delay, attempt)
                await asyncio.sleep(delay)
            try:
                ws = await self._open()
            except ConnectError as exc:
                if not retryable(exc.status):
                    raise
                if attempt and policy.gives_up_after(attempt):
                    raise ConnectError(
                        f"gave up reconnecting to {self._uri} after {attempt} attempt(s)"
                        f" (max_attempts={policy.max_attempts}); the last one: {exc}",
                        status=exc.status,
                    ) from exc
                log.info("connecting to %s failed: %s", self._uri, exc)
                attempt += 1
                continue
            try:
                yield ws
                ours = ws._close_requested is not None
            finally:
                await ws.close()  # idempotent; bounded by close_timeout
            if ours or not policy.retries_close(ws.close_code):
                return
            attempt = 1
