"""A client that reconnects: ``createWebsocket(uri, handler, reconnect=True)``.

One client, one id, one handler queue, many connections in turn. Every connection it opens
shares the client's :class:`~polysocket.dispatch.Dispatcher`, so its callbacks stay in order
across connections on the handler's thread: the messages of a lost connection, then
``onError`` about the loss, then ``onOpen`` of the next one and its messages.

After an unexpected loss (anything but our ``close()``, and but a 1000/1001 close from the
server unless the policy retries those) the client stays in ``getClients()`` and one task on
the loop (never more than one per client) waits the policy's delay and tries again, each try
bounded by ``open_timeout``; every failed try is reported to ``onError`` with the next delay.
``onClose`` runs once, when the client is closed for good: ``close()`` (at once during a wait),
a normal close from the server, or giving up (``max_attempts`` used, or a refusal that
retrying will not cure: an HTTP status other than 500/502/503/504).

What was queued for sending and not sent when a connection broke is not sent again: the
``onError`` that reports the loss counts it. Resending it before ``onOpen`` has run would put
old messages in front of what ``onOpen`` sends to set the new connection up (a login, a
subscription); the handler knows what still matters and resends it from ``onOpen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from .client import WebsocketClient, clients, open_transport
from .connection import Connection, State, check_close
from .context import current_call
from .dispatch import Dispatcher, ErrorText, Event
from .errors import ConnectError, ConnectionClosedError
from .handlers import Handler
from .managed import ManagedTransport, close_bound
from .reconnect import ReconnectPolicy, retryable
from .transport import ClientOptions, Engine

log = logging.getLogger("polysocket.client")

__all__ = ["ReconnectingClient"]


def _nothing() -> None:
    pass


#: Closings of connections made after the client was closed (referenced until done).
_discarding: set[asyncio.Task[None]] = set()


def _discard(transport: ManagedTransport) -> None:
    """Close a connection that came too late (the client was closed meanwhile) with a closing
    handshake, bounded by ``close_timeout``: an abort would skip the engine's own cleanup,
    which runs when its ``receive()`` ends (aiohttp closes its session there)."""
    task = asyncio.ensure_future(transport.close(1000, "client closed"))
    _discarding.add(task)
    task.add_done_callback(_discarding.discard)


def _discard_if_opened(attempt: asyncio.Task[ManagedTransport]) -> None:
    """An attempt that connected after all while the client was closed: close it."""
    if not attempt.cancelled() and attempt.exception() is None:
        _discard(attempt.result())


class ReconnectingClient(WebsocketClient):
    """A :class:`WebsocketClient` with ``reconnect=``: see the module. Made on the loop."""

    def __init__(
        self,
        id: str,
        uri: str,
        handler: Handler,
        engine: Engine,
        options: ClientOptions,
        policy: ReconnectPolicy,
    ) -> None:
        super().__init__(id, uri, handler, engine.name)
        self._engine_impl = engine
        self._resolved = handler
        self._options = options
        self._policy = policy
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        #: Notified (the lock held) when a new connection is in place or the client is
        #: closed for good: what a send() waiting out a reconnection waits for.
        self._changed = threading.Condition(self._lock)
        #: The same, for send_async() on the loop (made by the first one that waits).
        self._changed_on_loop: asyncio.Event | None = None
        #: close() was called, or the client gave up: no connection is opened any more.
        self._final = False
        #: onClose is queued (once).
        self._finished = False
        #: The pending reconnection (at most one), on the loop.
        self._task: asyncio.Task[None] | None = None
        #: The attempt the pending reconnection is at, for send()'s error.
        self._attempt = 0
        #: How the last connection ended: what onClose reports after a reconnection ends.
        self._lost: tuple[int, str] = (1006, "")
        self.dispatcher = Dispatcher(handler, self, self._loop, max_queue=options.max_queue)
        self.dispatcher.counts_opens = True

    @classmethod
    def start(
        cls,
        id: str,
        uri: str,
        handler: Handler,
        engine: Engine,
        options: ClientOptions,
        transport: ManagedTransport,
    ) -> ReconnectingClient:
        """The client on its first connection, registered, its ``onOpen`` queued."""
        assert options.reconnect is not None
        client = cls(id, uri, handler, engine, options, options.reconnect)
        connection = client._connect(transport)
        clients.add(client)
        connection.start()
        log.debug("client %s connected to %s with %s (reconnecting)", id, uri, engine.name)
        return client

    # -- any thread ------------------------------------------------------------------------

    @property
    def reconnects(self) -> int:
        # Counted where the handler runs, so a callback sees the count of the connection its
        # event came from, however far behind the handler is.
        return max(0, self.dispatcher.opens - 1)

    @property
    def closed(self) -> bool:
        """True once closed for good (``close()``, or the client gave up); False while
        reconnecting."""
        return self._final

    @property
    def buffered_amount(self) -> int:
        """Bytes waiting to be sent on the current connection; 0 while reconnecting (what
        the lost one had queued is not sent: the loss's onError counts it)."""
        connection = self._connection
        return 0 if connection.state is State.CLOSED else connection.buffered_amount

    @property
    def reconnecting(self) -> bool:
        """True while the client waits for a new connection."""
        return not self._final and self._connection.state is State.CLOSED

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """As :meth:`WebsocketClient.send`; while reconnecting it waits up to
        ``send_timeout`` for the new connection, then raises ``ConnectionClosedError``
        (at once on polysocket's loop, where it cannot wait: ``await send_async()`` there)."""
        deadline: float | None = None
        while True:
            connection = self._connection
            try:
                connection.send(message)
                return
            except ConnectionClosedError:
                if self._final:
                    raise
            if threading.get_ident() == self._loop_thread:
                raise self._reconnecting_error(on_loop=True) from None
            with self._lock:
                while self._connection is connection and not self._final:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self._options.send_timeout
                    elif now >= deadline:
                        raise self._reconnecting_error() from None
                    self._changed.wait(deadline - now)

    async def send_async(self, message: str | bytes | bytearray | memoryview) -> None:
        """As :meth:`WebsocketClient.send_async`; while reconnecting it awaits the new
        connection up to ``send_timeout``, then raises ``ConnectionClosedError``."""
        if asyncio.get_running_loop() is not self._loop:  # another loop (an asyncio program)
            future = asyncio.run_coroutine_threadsafe(self.send_async(message), self._loop)
            return await asyncio.wrap_future(future)
        deadline = self._loop.time() + self._options.send_timeout
        while True:
            connection = self._connection
            try:
                await connection.send_async(message)
                return
            except ConnectionClosedError:
                if self._final:
                    raise
            while self._connection is connection and not self._final:
                left = deadline - self._loop.time()
                if left <= 0:
                    raise self._reconnecting_error() from None
                changed = self._changed_on_loop
                if changed is None:
                    changed = self._changed_on_loop = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await changed.wait()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: the connection as :meth:`WebsocketClient.close` does, or, while
        reconnecting, end the reconnection at once. ``onClose`` runs once; after a lost
        connection it reports how that one ended (1006 when it just dropped)."""
        connection = self._begin_close(code, reason)
        if threading.get_ident() == self._loop_thread:
            return
        timeout = self._options.close_timeout
        if current_call.get() is None:
            self.dispatcher.finished.wait(close_bound(timeout) + timeout)
        else:  # onClose runs after this callback: wait only for the connection
            connection.ended.wait(close_bound(timeout))

    def _request_close(self, code: int, reason: str) -> None:
        self._begin_close(code, reason)

    def _begin_close(self, code: int, reason: str) -> Connection:
        check_close(code, reason)
        with self._lock:
            self._final = True
            self._changed.notify_all()
            connection = self._connection
        if not connection.request_close(code, reason):
            # Ended already (a reconnection is pending), or closing: the loop sorts it out.
            self._loop.call_soon_threadsafe(self._close_on_loop, code, reason)
        return connection

    def _reconnecting_error(self, on_loop: bool = False) -> ConnectionClosedError:
        code, reason = self._lost
        timeout = self._options.send_timeout
        how = (
            "send() cannot wait on the event loop (in an async def callback): use"
            " `await client.send_async(...)`, which waits up to send_timeout"
            if on_loop
            else f"send() waited send_timeout={timeout} s for the new connection"
        )
        return ConnectionClosedError(
            f"the connection to {self.uri} was lost ({code}) and the client is reconnecting"
            f" (attempt {self._attempt}); {how}. The message was not sent: send it again"
            " later (onOpen runs when the client is back), or raise send_timeout=",
            code=code,
            reason=reason,
        )

    # -- loop thread -----------------------------------------------------------------------

    def _connect(self, transport: ManagedTransport) -> Connection:
        """Make the connection over ``transport`` the client's current one (not started)."""

        def ended(code: int, reason: str, error: BaseException | None) -> None:
            self._connection_ended(connection, code, reason, error)

        connection = Connection(
            transport,
            self._resolved,
            self,
            self._loop,
            self._options,
            on_ended=_nothing,
            dispatcher=self.dispatcher,
            report_end=ended,
        )
        with self._lock:
            self._connection = connection
            self._attempt = 0
            self._changed.notify_all()
        self._notify_loop()
        return connection

    def _notify_loop(self) -> None:
        changed, self._changed_on_loop = self._changed_on_loop, None
        if changed is not None:
            changed.set()

    def _connection_ended(
        self, connection: Connection, code: int, reason: str, error: BaseException | None
    ) -> None:
        self._lost = (code, reason)
        if self._final or connection.close_requested or not self._policy.retries_close(code):
            self._finish(code, reason, error)
            return
        self._attempt = 1
        delay = self._policy.delay(1)
        dropped = ""
        if connection.unsent:
            dropped = (
                f"; {connection.unsent} message(s) queued for sending were not sent (resend"
                " what still matters from onOpen)"
            )
        if error is not None:
            report = ErrorText(f"{ErrorText.of(error)}{dropped}; reconnecting", error)
        else:
            how = (
                "no close frame: 1006"
                if code == 1006
                else f"the server closed it with {code}{' ' + repr(reason) if reason else ''}"
            )
            report = ErrorText.of(
                ConnectionClosedError(
                    f"the connection to {self.uri} was lost ({how}){dropped}; reconnecting",
                    code=code,
                    reason=reason,
                )
            )
        self._report(f"{report}: attempt 1 in {delay:.2f} s", report.exception)
        log.info("client %s lost its connection to %s (%s); reconnecting", self.id, self.uri, code)
        self._task = self._loop.create_task(self._reconnect(delay))

    def _report(self, text: str, exception: BaseException | None) -> None:
        self.dispatcher.push(Event("onerror", error=ErrorText(text, exception)))

    async def _reconnect(self, delay: float) -> None:
        policy, attempt = self._policy, 1
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    transport = await self._try_once()
                except ConnectError as exc:
                    if not retryable(exc.status):
                        self._give_up(
                            f"the server refused the reconnection ({exc}); not retrying: only"
                            " 500, 502, 503 and 504 are retried",
                            exc,
                        )
                        return
                    if policy.gives_up_after(attempt):
                        self._give_up(
                            f"gave up reconnecting to {self.uri} after {attempt} attempt(s)"
                            f" (max_attempts={policy.max_attempts}); the last one: {exc}",
                            exc,
                        )
                        return
                    attempt += 1
                    self._attempt = attempt
                    delay = policy.delay(attempt)
                    self._report(
                        f"ConnectError: reconnect attempt {attempt - 1} failed: {exc};"
                        f" attempt {attempt} in {delay:.2f} s",
                        exc,
                    )
                    continue
                if self._final:  # close() came while it connected
                    _discard(transport)
                    return
                log.info("client %s reconnected to %s", self.id, self.uri)
                self._task = None
                self._connect(transport).start()
                return
        except asyncio.CancelledError:
            return  # close(): _close_on_loop ends the client
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _try_once(self) -> ManagedTransport:
        """One attempt, in a task of its own: one cancelled after it connected (by close())
        closes what it connected."""
        opening = open_transport(self._engine_impl, self.uri, self._options)
        attempt = self._loop.create_task(opening)
        try:
            return await attempt
        except asyncio.CancelledError:
            attempt.add_done_callback(_discard_if_opened)
            raise

    def _give_up(self, text: str, exc: BaseException) -> None:
        log.warning("client %s: %s", self.id, text)
        self._report(f"ConnectError: {text}; the client is closed", exc)
        self._finish(*self._lost, None)

    def _close_on_loop(self, code: int, reason: str) -> None:
        """close() found no open connection: end a pending reconnection now."""
        task = self._task
        if task is not None:
            self._task = None
            task.cancel()
        connection = self._connection
        if connection.state is State.CLOSED:
            self._finish(*self._lost, None)
        else:  # one the reconnection put in place just as close() came: close it too
            connection.request_close(code, reason)

    def _finish(self, code: int, reason: str, error: BaseException | None) -> None:
        """Closed for good: out of the registry, then onError (if any) and onClose, once."""
        with self._lock:
            if self._finished:
                return
            self._finished = self._final = True
            self._changed.notify_all()
        self._notify_loop()
        clients.remove(self)
        if error is not None:
            self.dispatcher.push(Event("onerror", error=ErrorText.of(error)))
        self.dispatcher.push(Event("onclose", close_code=code, close_reason=reason))

    def __repr__(self) -> str:
        state = "closed" if self._final else "reconnecting" if self.reconnecting else "open"
        return f"<WebsocketClient {self.id} {self.uri} engine={self.engine} {state}>"
