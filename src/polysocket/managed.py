"""The core's wrapper around every transport an engine opens, client or server.

Engines implement raw send, receive, close-once and abort (:mod:`polysocket.transport`);
this class adds, once for every engine, what the contract promises on top:

- the end is sticky: once ``receive()`` has raised :class:`TransportClosed`, it raises the
  same again, and ``send()`` raises it too; ``send()`` after ``close()`` raises at once;
- ``close()`` is idempotent and safe to call from several tasks: one closing handshake;
- messages that arrive after our close frame still reach a reader that keeps reading; when
  nobody reads, ``close()`` reads and discards them itself, so the peer's close frame is seen;
- ``close_timeout`` bounds the whole handshake, enforced here alone: after it the connection
  is aborted, and after :data:`ABORT_GRACE` more it counts as ended whatever the engine does
  (a reader still waiting in the engine's ``receive()`` then gets the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .transport import FrameWriter, Message, Transport, TransportClosed

log = logging.getLogger("polysocket.transport")

__all__ = ["ABORT_GRACE", "ManagedTransport", "close_bound"]

#: How long an aborted connection may take to end before it is counted as ended anyway.
ABORT_GRACE = 1.0


def close_bound(close_timeout: float) -> float:
    """The longest ``ManagedTransport.close()`` takes: what other waits on a close allow."""
    return close_timeout + ABORT_GRACE


class ManagedTransport:
    """A :class:`Transport` with the contract's duties done by the core (see the module)."""

    __slots__ = (
        "_close_task",
        "_close_timeout",
        "_closing",
        "_drainer",
        "_ended",
        "_raw",
        "_reader",
        "_released",
        "_wake",
        "_write_frame",
        "connected_uri",
        "subprotocol",
    )

    def __init__(self, raw: Transport, close_timeout: float) -> None:
        self._raw = raw
        self._close_timeout = close_timeout
        self.subprotocol = raw.subprotocol
        #: A client's URI after redirects (set by ``client.open_transport``).
        self.connected_uri: str | None = None
        self._ended: TransportClosed | None = None
        self._closing = False
        # The task inside the engine's receive(), if any; released after ABORT_GRACE.
        self._reader: asyncio.Task[Any] | None = None
        self._released = False
        self._close_task: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        # Set when the reader leaves receive() or the connection ends; made by the first
        # close() that waits for the reader (an open connection needs none).
        self._wake: asyncio.Event | None = None
        self._write_frame = raw.write_frame if isinstance(raw, FrameWriter) else None

    @property
    def raw(self) -> Transport:
        """The engine's own transport."""
        return self._raw

    @property
    def ended(self) -> TransportClosed | None:
        """How the connection ended; ``None`` until it has."""
        return self._ended

    async def send(self, message: Message) -> None:
        if self._closing or self._ended is not None:
            raise self._ended or TransportClosed(None)
        await self._raw.send(message)

    @property
    def writes_frames(self) -> bool:
        """Whether the engine takes frames the core encoded (:meth:`write_frame`)."""
        return self._write_frame is not None

    def write_frame(self, frame: bytes, limit: int) -> bool | None:
        """The engine's :meth:`FrameWriter.write_frame`, while open; None otherwise."""
        if self._write_frame is None or self._closing or self._ended is not None:
            return None
        return self._write_frame(frame, limit)

    async def receive(self) -> Message:
        if self._ended is not None:
            raise self._ended
        if self._drainer is not None:  # close() is discarding what is left
            # wait() and not the drainer itself: a drainer cancelled after the grace is no
            # reason to cancel this reader
            await asyncio.wait([self._drainer])
            raise self._ended or TransportClosed(None)
        self._reader = reader = asyncio.current_task()
        try:
            return await self._raw.receive()
        except BaseException as exc:
            raise self._reader_ends(exc, reader) from None
        finally:
            self._reader = None
            if self._closing and self._wake is not None:
                self._wake.set()

    async def read_forever(self, deliver: Callable[[Message], Awaitable[None] | None]) -> None:
        """Hand every message to ``deliver`` until the end, then raise :class:`TransportClosed`.

        The per-message path of the core's reader: one call for the connection's life
        instead of a wrapped ``receive()`` per message. ``deliver`` returns an awaitable when
        the reader must pause (a backlog); the reader counts as receiving meanwhile, so
        ``close()`` leaves the messages to it (the owner ends the pause when it closes).
        """
        if self._ended is not None:
            raise self._ended
        receive = self._raw.receive
        self._reader = reader = asyncio.current_task()
        try:
            while True:
                paused = deliver(await receive())
                if paused is not None:
                    await paused
        except BaseException as exc:
            raise self._reader_ends(exc, reader) from None
        finally:
            self._reader = None
            if self._wake is not None:
                self._wake.set()

    def _reader_ends(self, exc: BaseException, reader: asyncio.Task[Any] | None) -> BaseException:
        """What a reader raises when the engine's ``receive()`` raised ``exc``: the sticky end
        for a :class:`TransportClosed` or an engine bug; for a cancellation, the end if
        ``close()`` let go of the reader, else the cancellation itself."""
        if isinstance(exc, TransportClosed):
            return self._end(exc)
        if isinstance(exc, Exception):
            return self._engine_failed(exc)
        if isinstance(exc, asyncio.CancelledError):
            return self._let_go(reader) or exc
        return exc

    def _let_go(self, reader: asyncio.Task[Any] | None) -> TransportClosed | None:
        """The end a cancelled reader raises when close() let go of it (an engine whose
        receive() ignored abort()); ``None``: a real cancellation, from someone else too."""
        ended = self._ended
        if self._released and ended is not None and reader and reader.uncancel() == 0:
            return ended
        return None

    def _engine_failed(self, exc: Exception) -> TransportClosed:
        """An engine's receive() raised something else than the contract allows: a bug,
        which costs this connection (reported through ``onError``), never the loop."""
        log.error("engine receive() failed; dropping the connection", exc_info=exc)
        self._raw.abort()
        return self._end(TransportClosed(None, error=exc))

    def _end(self, closed: TransportClosed) -> TransportClosed:
        if self._ended is None:
            self._ended = closed
            if self._wake is not None:
                self._wake.set()
        return self._ended

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(code, reason))
        await asyncio.shield(self._close_task)

    def abort(self) -> None:
        self._raw.abort()

    async def _close(self, code: int, reason: str) -> None:
        self._closing = True
        if self._ended is not None:
            return
        try:
            async with asyncio.timeout(self._close_timeout):
                with contextlib.suppress(TransportClosed):  # gone already: receive() says how
                    await self._raw.close(code, reason)
                await self._until_ended()
            return
        except TimeoutError:
            log.info(
                "closing handshake not done within close_timeout=%s s; aborting",
                self._close_timeout,
            )
        except Exception as exc:  # the engine failed to send the close frame: drop it
            log.info("closing handshake failed (%s); aborting", exc)
        self._raw.abort()
        try:
            async with asyncio.timeout(ABORT_GRACE):
                await self._until_ended()
        except TimeoutError:
            log.warning("engine did not end an aborted connection; counting it as ended")
            self._end(TransportClosed(None))
            if self._drainer is not None:
                self._drainer.cancel()
            if self._reader is not None:
                self._released = True
                self._reader.cancel()

    async def _until_ended(self) -> None:
        while self._ended is None:
            if self._reader is not None:  # the core's reader gets the end (and the messages before)
                if self._wake is None:
                    self._wake = asyncio.Event()
                self._wake.clear()
                await self._wake.wait()
                # A reader that takes the next message at once is back in receive() by now.
                continue
            if self._drainer is None:
                self._drainer = asyncio.ensure_future(self._drain())
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        receive = self._raw.receive
        try:
            while True:
                await receive()
        except TransportClosed as closed:
            self._end(closed)
        except Exception as exc:
            self._engine_failed(exc)
