"""The asyncio API: ``async with polysocket.connect(uri) as ws`` on the caller's own loop,
and ``async for ws in polysocket.connect(uri, reconnect=True)`` to reconnect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Generator
from typing import Any

from .client import check_uri, open_transport
from .connection import check_close, check_message, close_outcome
from .errors import ConnectError, ConnectionClosedError
from .managed import ManagedTransport
from .options import client_options
from .plugins import registry as engines
from .reconnect import ReconnectPolicy, retryable
from .transport import ClientOptions, Message, TransportClosed

log = logging.getLogger("polysocket.aio")

__all__ = ["AsyncConnection", "connect"]


class AsyncConnection:
    """An open connection for asyncio code. One task may ``recv`` at a time."""

    def __init__(self, transport: ManagedTransport, uri: str, engine: str, options: ClientOptions):
        self._transport = transport
        self._options = options
        self._close_requested: tuple[int, str] | None = None
        self.uri = uri
        self.engine = engine
        self.subprotocol = transport.subprotocol
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        message = check_message(message)
        if self._close_requested is not None or self.close_code is not None:
            raise self._closed_error()
        try:
            await self._transport.send(message)
        except TransportClosed as closed:
            self._ended(closed)
            raise self._closed_error() from None

    async def recv(self) -> Message:
        """The next message; raises ``ConnectionClosedError`` once the connection has ended."""
        try:
            return await self._transport.receive()
        except TransportClosed as closed:
            self._ended(closed)
            raise self._closed_error() from closed.error

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
        await self._transport.close(code, reason)  # bounded by close_timeout; never raises
        # Ended by now: our code once the peer answered, 1006 when it never did (as the
        # blocking API reports it).
        self._ended(self._transport.ended or TransportClosed(None))

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
