"""One open connection driven by the core: reader, writer, close bookkeeping.

The same machinery serves client connections and (later) server sessions. It runs on an
event loop; ``send`` and ``close`` may be called from any thread.

Outgoing messages go into one queue under a lock (so one thread's messages leave in call
order). The sender that finds the queue idle starts a writer task for the burst: on the loop
at once, from another thread through the loop's coalesced wake-ups (one self-pipe write for a
batch of connections). The writer sends until the queue is empty, then ends, so an idle
connection has none. It waits on the engine's flow control, so a slow peer fills the queue;
the queue holds at most ``write_limit`` bytes (one message always fits in an empty queue).
Over it, ``send()`` off the loop blocks its own thread up to ``send_timeout`` and then raises
:class:`SendTimeoutError`; on the loop it cannot wait and raises at once, and ``send_async()``
awaits room instead. ``offer()`` (what ``broadcast`` uses) never waits: a connection with no
room is closed with 1008 and what it had queued is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .context import current_call
from .dispatch import MESSAGE_OVERHEAD, Dispatcher, ErrorText, Event
from .enginekit.closecodes import CloseCode, valid_close_code
from .enginekit.frames import server_frame
from .errors import ConnectionClosedError, SendTimeoutError
from .handlers import Handler
from .hotpath import Flag, wakeups_for
from .managed import ManagedTransport, close_bound
from .transport import ConnectionOptions, KeepaliveTimeout, TransportClosed

log = logging.getLogger("polysocket.connection")

#: The close reason of a connection closed because its send queue was over ``write_limit``.
TOO_SLOW = "too slow: send queue over write_limit"

#: Users get plain ints, never an IntEnum.
ABNORMAL = int(CloseCode.ABNORMAL)
#: How a keepalive timeout ends a connection, on every engine (onError says more).
KEEPALIVE_CODE = int(CloseCode.INTERNAL_ERROR)
KEEPALIVE_REASON = "keepalive ping timeout"


def check_message(message: Any) -> str | bytes:
    if isinstance(message, str):
        # isascii() is O(1) in CPython, so only non-ASCII text pays for this. Without it the
        # engine's own UTF-8 encoding fails later, in the writer, and the connection is lost.
        if not message.isascii():
            try:
                message.encode()
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"send() got text that cannot be sent: {exc.reason} at position"
                    f" {exc.start} ({message[exc.start]!r}); a text message travels as UTF-8,"
                    " so fix the text (it usually comes from a lossy decode) or send bytes"
                ) from None
        return message
    if isinstance(message, bytes):
        return message
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    raise TypeError(
        f"send() takes str (text) or bytes/bytearray/memoryview (binary), not"
        f" {type(message).__name__}; convert it first, e.g. send(str(value))"
    )


def check_close(code: int, reason: str) -> None:
    if not isinstance(code, int) or not valid_close_code(code):
        raise ValueError(
            f"close code {code!r} cannot be sent; use 1000 (normal), 1001-1003, 1007-1014,"
            " or an application code from 3000 to 4999"
        )
    if len(reason.encode()) > 123:
        raise ValueError("close reason is longer than 123 bytes (UTF-8); shorten it")


def close_outcome(closed: TransportClosed, requested: tuple[int, str] | None) -> tuple[int, str]:
    """The close code and reason to report, the same way on every engine.

    The initiator's code wins: when this side asked to close and the peer answered, the
    code we sent; when the peer closed, the code it sent; with no close frame, 1006. A
    keepalive timeout is 1011 whatever the engine's code for it (aborted, or its own frame).
    """
    if isinstance(closed.error, KeepaliveTimeout):
        return KEEPALIVE_CODE, KEEPALIVE_REASON
    if closed.error is not None:
        return closed.code or ABNORMAL, closed.reason or str(closed.error)
    if closed.code is None or closed.code == ABNORMAL:
        return ABNORMAL, closed.reason
    if requested is not None:
        return requested
    return closed.code, closed.reason


_CLOSE = object()


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    #: close() was called: nothing more is sent, messages still arrive.
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """The core's side of one connection. Create it on the loop, then call ``start()``.

    Sending: whoever queues into an empty, idle queue owns the sending (``_writing``) and
    starts a writer task, which sends the burst (and what is queued meanwhile) and ends with
    the queue empty. From another thread (a handler thread) the start goes through
    :class:`~polysocket.hotpath.LoopWakeups` (one self-pipe write per batch of connections).
    A task per burst measured cheaper than sending each message at once on the loop (the
    replies to a burst go out together) and than a writer task per connection woken by an
    Event (aiohttp, 64 connections: 8.5 against 9.4 us per message with async handlers, 9.0
    against 11.1 with plain ones). Nothing of this exists while the connection is idle: no
    writer task, and the queues, Conditions and Events are made when first needed.
    """

    __slots__ = (
        "__weakref__",
        "_batch",
        "_close_deadline",
        "_close_requested",
        "_close_timeout",
        "_dropped_while_closing",
        "_ended",
        "_ended_on_loop",
        "_handshaking",
        "_lock",
        "_loop",
        "_loop_thread",
        "_on_ended",
        "_outbox",
        "_pos",
        "_queued_bytes",
        "_reader",
        "_report_end",
        "_room",
        "_room_on_loop",
        "_send_error",
        "_send_timeout",
        "_transport",
        "_wakeups",
        "_write_limit",
        "_writer",
        "_writing",
        "close_code",
        "close_reason",
        "dispatcher",
        "state",
        "unsent",
    )

    def __init__(
        self,
        transport: ManagedTransport,
        handler: Handler,
        session: Any,
        loop: asyncio.AbstractEventLoop,
        options: ConnectionOptions,
        on_ended: Callable[[], None],
        replies: bool = False,
        dispatcher: Dispatcher | None = None,
        report_end: Callable[[int, str, BaseException | None], None] | None = None,
    ) -> None:
        """``dispatcher``: one that outlives this connection (a reconnecting client's, so that
        its callbacks stay in order across connections). ``report_end``: called at the end,
        on the loop, with the close code, reason and error, instead of queueing ``onError``
        and ``onClose`` (the reconnecting client decides what the end means)."""
        self._transport = transport
        self._loop = loop
        self._close_timeout = options.close_timeout
        self._write_limit = options.write_limit
        self._send_timeout = options.send_timeout
        self._on_ended = on_ended
        self._report_end = report_end
        if dispatcher is None:
            dispatcher = Dispatcher(
                handler,
                session,
                loop,
                self._reply if replies else None,
                self._reply_async if replies else None,
                options.max_queue,
                self.reply_now if replies else None,
            )
        self.dispatcher = dispatcher
        self._ended_on_loop: asyncio.Future[None] | None = None  # made when awaited
        self._lock = threading.Lock()
        #: Senders blocked for room wait on it (made when the first one must).
        self._room: threading.Condition | None = None
        #: Messages queued for sending (a list, made on the first send, taken whole by the
        #: sender), and the burst being sent with the position of the next message in it
        #: (what a drop for slowness discards, on the loop).
        self._outbox: list[Any] | None = None
        self._batch: list[Any] | None = None
        self._pos = 0
        #: Bytes in the outbox and in the burst, the one being sent included.
        self._queued_bytes = 0
        #: Someone owns the sending: a wake-up on its way, or a writer task.
        self._writing = False
        self._wakeups = wakeups_for(loop)
        #: Set on the loop when room is made or sending ends (``send_async`` waits on it).
        self._room_on_loop: asyncio.Event | None = None
        self.state = State.CONNECTING
        self._close_requested: tuple[int, str] | None = None
        #: The writer has reached the close frame: the closing handshake has begun.
        self._handshaking = False
        self._close_deadline: asyncio.TimerHandle | None = None
        self._ended = Flag()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._send_error: Exception | None = None
        #: Messages queued for sending that the end left unsent (one being written then
        #: included: whether the peer got it is unknown), set at the end.
        self.unsent = 0
        #: Messages dropped because they arrived while closing with the backlog full.
        self._dropped_while_closing = 0
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._loop_thread = threading.get_ident()

    def _opened(self) -> None:
        dispatcher = self.dispatcher
        # else a handler thread woken for nothing (unless the dispatcher counts the opens)
        if dispatcher.counts_opens or dispatcher.has_callback("onopen"):
            self.dispatcher.push(Event("onopen"))

    def start(self) -> None:
        self.state = State.OPEN
        self._opened()
        self._reader = self._loop.create_task(self._read_loop())

    async def run(self) -> None:
        """Start, and read in the calling task until the connection has ended: what the
        server's session task does, so that a session holds no reader task of its own.

        Cancelled, it drops the connection (which ends as lost, 1006: ``onClose`` runs) and
        raises the cancellation.
        """
        self.state = State.OPEN
        self._opened()
        try:  # the read loop inlined: an idle session holds one coroutine frame less
            await self._transport.read_forever(self._deliver)
        except TransportClosed as closed:
            self._end(closed)
        except asyncio.CancelledError:
            self._transport.abort()
            if not self._ended.is_set():
                self._end(self._transport.ended or TransportClosed(None))
            raise

    @property
    def ended(self) -> Flag:
        """Set once the connection has ended (``wait(timeout)`` from any thread)."""
        return self._ended

    @property
    def ended_on_loop(self) -> asyncio.Future[None]:
        """Resolved on the loop when the connection has ended (the server's shutdown awaits
        it). Made on first use: an idle connection holds no future."""
        if self._ended_on_loop is None:
            self._ended_on_loop = self._loop.create_future()
            if self._ended.is_set():
                self._ended_on_loop.set_result(None)
        return self._ended_on_loop

    # -- any thread ------------------------------------------------------------------------

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for sending and not yet handed to the engine in full."""
        return self._queued_bytes

    def _fits(self, size: int) -> bool:
        # One message always fits in an empty queue, however big (max_size bounds it).
        queued = self._queued_bytes
        return queued == 0 or queued + size <= self._write_limit

    def _enqueue(self, message: object, size: int) -> bool:
        """Queue (the lock held); True if the caller now owns the sending."""
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = []
        outbox.append(message)
        self._queued_bytes += size
        if self._writing:
            return False
        self._writing = True
        return True

    def _notify_room(self) -> None:
        """Wake blocked senders (the lock held)."""
        if self._room is not None:
            self._room.notify_all()

    def send(self, message: Any) -> None:
        """Queue ``message``. Off the loop, wait up to ``send_timeout`` for room; on the loop
        (``async def`` callbacks), raise :class:`SendTimeoutError` at once when there is none."""
        message = check_message(message)
        size = len(message)
        on_loop = threading.get_ident() == self._loop_thread
        deadline: float | None = None
        with self._lock:
            while True:
                if self.state is not State.OPEN:
                    raise self._closed_error()
                if self._fits(size):
                    break
                if on_loop:
                    raise self._no_room_on_loop()
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._send_timeout
                elif now >= deadline:
                    raise self._timed_out()
                if self._room is None:
                    self._room = threading.Condition(self._lock)
                self._room.wait(deadline - now)
            owner = self._enqueue(message, size)
        if owner:
            self._start_sending(on_loop)

    async def send_async(self, message: Any) -> None:
        """Queue ``message``, awaiting room up to ``send_timeout``; from any event loop."""
        message = check_message(message)
        if asyncio.get_running_loop() is not self._loop:  # another loop (the asyncio API user)
            future = asyncio.run_coroutine_threadsafe(self.send_async(message), self._loop)
            return await asyncio.wrap_future(future)
        await self._send_on_loop(message)

    async def _send_on_loop(self, message: str | bytes) -> None:
        size = len(message)
        deadline: float | None = None
        while True:
            with self._lock:
                if self.state is not State.OPEN:
                    raise self._closed_error()
                if self._fits(size):
                    owner = self._enqueue(message, size)
                    break
            if deadline is None:
                deadline = self._loop.time() + self._send_timeout
            left = deadline - self._loop.time()
            if left <= 0:
                raise self._timed_out()
            # No await since the check: room made meanwhile (on this loop) is not missed.
            room = self._room_on_loop
            if room is None:
                room = self._room_on_loop = asyncio.Event()
            room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await room.wait()
        if owner:
            self._start_writer()

    def offer(self, message: str | bytes) -> bool:
        """Queue a checked message without ever waiting (``broadcast``). With no room, the
        connection is closed with 1008 (:data:`TOO_SLOW`): what it had queued is dropped,
        and it is aborted if the close frame cannot get out within ``close_timeout``. False
        then."""
        size = len(message)
        with self._lock:
            if self.state is not State.OPEN:
                raise self._closed_error()
            if not self._fits(size):
                self._too_slow()
                return False
            owner = self._enqueue(message, size)
        if owner:
            self._start_sending(threading.get_ident() == self._loop_thread)
        return True

    def offer_frame(self, message: str | bytes, frame: bytes) -> bool:
        """:meth:`offer` on the loop thread, with ``message`` already encoded as ``frame``:
        written straight to the engine's socket when nothing of ours waits before it (no
        queue, no writer), and a socket buffer that would go over ``write_limit`` with it
        closes the connection with 1008 as a full queue does. Otherwise :meth:`offer`."""
        if self.state is State.OPEN and not self._writing and not self._queued_bytes:
            written = self._transport.write_frame(frame, self._write_limit)
            if written:
                return True
            if written is False:
                with self._lock:
                    if self.state is State.OPEN:
                        self._too_slow()
                return False
        return self.offer(message)

    def _too_slow(self) -> None:
        """Close with 1008, dropping what is queued (the lock held)."""
        self.state = State.CLOSING
        self._close_requested = (int(CloseCode.POLICY_VIOLATION), TOO_SLOW)
        self._notify_room()
        self._loop.call_soon_threadsafe(self._drop_queued)

    def _start_sending(self, on_loop: bool) -> None:
        """Send what the caller, now owning the sending, queued: a writer task for the
        burst, started at once on the loop, else through the loop's coalesced wake-ups
        (one self-pipe write for a batch of connections)."""
        if on_loop:
            self._start_writer()
        else:
            self._wakeups.add(self._start_writer)

    def _start_writer(self) -> None:
        """On the loop: send the burst. Straight to the socket when the engine takes our
        frames (a server's: ``FrameWriter``) and its buffer has room: no task and no await,
        which is what a reply costs most of the time. Else (a client, compression, a full
        buffer, the close frame) a writer task sends what is left, awaiting the engine's flow
        control; it runs once the caller yields to the loop, so what the caller queues
        meanwhile goes in the same burst."""
        if self._transport.writes_frames and self._write_now():
            return
        self._writer = self._loop.create_task(self._write_loop())

    def _write_now(self) -> bool:
        """Write the queued bursts as frames until none is left (True: the sending given up)
        or one cannot go now (False: ``_batch`` from ``_pos`` on is the writer task's)."""
        write, limit = self._transport.write_frame, self._write_limit
        sent = 0
        while (batch := self._take_burst(sent)) is not None:
            sent = 0
            for pos, message in enumerate(batch):
                if message is _CLOSE or not write(server_frame(message), limit):
                    self._pos = pos
                    self._made_room(sent)
                    return False
                sent += len(message)
            self._pos = len(batch)
        if self._room_on_loop is not None:
            self._room_on_loop.set()
        return True

    def _timed_out(self) -> SendTimeoutError:
        queued, limit = self._queued_bytes, self._write_limit
        return SendTimeoutError(
            f"send() waited send_timeout={self._send_timeout} s for room and got none:"
            f" {queued} bytes are still queued for this connection (write_limit={limit})"
            " because the peer reads too slowly. The message was not sent and the connection"
            " stays open: retry later, drop the message or close the connection; raise"
            " send_timeout= or write_limit= if such a slow peer is expected.",
            queued=queued,
            write_limit=limit,
        )

    def _no_room_on_loop(self) -> SendTimeoutError:
        queued, limit = self._queued_bytes, self._write_limit
        return SendTimeoutError(
            f"send() cannot wait on the event loop (in an async def callback) and {queued}"
            f" bytes are already queued for this connection (write_limit={limit}): the peer"
            " reads too slowly. The message was not sent; use `await session.send_async(...)`"
            " (or client.send_async), which waits up to send_timeout for room.",
            queued=queued,
            write_limit=limit,
        )

    def _reply(self, result: Any) -> None:
        if not isinstance(result, str | bytes | bytearray | memoryview):
            raise TypeError(
                f"onMessage returned a {type(result).__name__}; return str or bytes to reply,"
                " or None to send nothing"
            )
        try:
            self.send(result)
        except ConnectionClosedError:  # the peer left first: nobody to reply to, no fault
            log.info("dropped onMessage's reply: the connection is already closed")

    def reply_now(self, result: Any) -> bool:
        """What an ``async def`` onMessage returned, on the loop: queue it if there is room
        (True, also when the connection is closed already: dropped) and send it at once if
        the queue was idle; False: no room, await :meth:`_reply_async`. Costs no coroutine
        in the usual case."""
        kind = result.__class__
        if kind is not str and kind is not bytes:
            return False  # checked (or refused) by _reply_async
        message = check_message(result) if kind is str else result
        with self._lock:
            if self.state is not State.OPEN:
                closed = True
            elif self._fits(len(message)):
                closed = False
                owner = self._enqueue(message, len(message))
            else:
                return False
        if closed:
            log.info("dropped onMessage's reply: the connection is already closed")
        elif owner:
            self._start_writer()
        return True

    async def _reply_async(self, result: Any) -> None:
        """What an ``async def`` onMessage returned: awaits room like ``send_async``."""
        if not isinstance(result, str | bytes | bytearray | memoryview):
            raise TypeError(
                f"onMessage returned a {type(result).__name__}; return str or bytes to reply,"
                " or None to send nothing"
            )
        try:
            await self._send_on_loop(check_message(result))
        except ConnectionClosedError:
            log.info("dropped onMessage's reply: the connection is already closed")

    def request_close(self, code: int = 1000, reason: str = "") -> bool:
        """Queue the close after what was already sent; False if a close was already queued."""
        check_close(code, reason)
        with self._lock:
            if self.state is State.CLOSING or self.state is State.CLOSED:
                return False
            self.state = State.CLOSING
            self._close_requested = (int(code), reason)
            owner = self._enqueue(_CLOSE, 0)
            self._notify_room()
        self._loop.call_soon_threadsafe(self._closing_started, owner)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close, then wait for the closing handshake and, outside callbacks, for onClose.

        On the loop thread it only starts the close. Inside a callback it does not wait for
        ``onClose``, which runs on a handler thread after the current callback returns. The
        close frame goes after what is queued; if it cannot get out within ``close_timeout``
        (the peer reads nothing), the connection is aborted.
        """
        self.request_close(code, reason)
        if threading.get_ident() == self._loop_thread:
            return
        if current_call.get() is None:  # onClose runs after the end: one wait, one wake-up
            self.dispatcher.finished.wait(close_bound(self._close_timeout) + self._close_timeout)
        else:
            self._ended.wait(close_bound(self._close_timeout))

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSING or self.state is State.CLOSED

    @property
    def close_requested(self) -> bool:
        """Whether this side asked to close (``close()``, or a drop for slowness)."""
        return self._close_requested is not None

    def abort(self) -> None:
        """Drop the connection without a closing handshake (on the loop thread): the reader
        then gets the end, and the connection ends as usual (1006)."""
        self._transport.abort()

    def _closed_error(self) -> ConnectionClosedError:
        if self.state is State.CLOSED:
            return ConnectionClosedError(
                f"the connection is closed (code {self.close_code}"
                f"{', ' + repr(self.close_reason) if self.close_reason else ''});"
                " open a new one to send more",
                code=self.close_code,
                reason=self.close_reason or "",
            )
        return ConnectionClosedError(
            "the connection is closing (close() was called); open a new one to send more"
        )

    # -- loop thread -----------------------------------------------------------------------

    def _closing_started(self, owner: bool) -> None:
        self.dispatcher.release()
        if self._room_on_loop is not None:
            self._room_on_loop.set()  # send_async() waiters: closing now
        if owner:
            self._start_writer()
        # What is queued goes first, but a peer that reads nothing keeps the writer inside the
        # engine's send() forever, before the close frame: close_timeout bounds that too.
        if self._close_deadline is None:
            self._close_deadline = self._loop.call_later(
                self._close_timeout, self._abort_unless_closing
            )

    def _drop_queued(self) -> None:
        """Closed for slowness (``offer``): drop what is queued, then send the close frame.

        On the loop, so the writer task, if any, is waiting inside the engine's send() of one
        message (which finishes) or for its turn.
        """
        with self._lock:
            batch, pos = self._batch or [], self._pos
            dropped = [m for m in (*batch[pos:], *(self._outbox or ())) if m is not _CLOSE]
            del batch[pos:]  # the writer, if inside a send(), finds its burst done
            if self._outbox is not None:
                self._outbox.clear()
            self._queued_bytes -= sum(len(m) for m in dropped)
            owner = self._enqueue(_CLOSE, 0)
        log.info(
            "closing a connection with 1008: its send queue is over write_limit=%d bytes"
            " (the peer reads too slowly); dropped %d queued message(s)",
            self._write_limit,
            len(dropped),
        )
        self._closing_started(owner)

    def _abort_unless_closing(self) -> None:
        """close_timeout after close(): abort if the close frame is still stuck behind what
        was queued (once it is out, ManagedTransport bounds the closing handshake)."""
        if self.state is not State.CLOSED and not self._handshaking:
            log.info(
                "the close frame could not be sent within close_timeout=%s s (the peer reads"
                " nothing); aborting the connection",
                self._close_timeout,
            )
            self._transport.abort()

    def _deliver(self, message: str | bytes) -> Awaitable[None] | None:
        dispatcher = self.dispatcher
        if self.state is not State.OPEN and dispatcher.backlog > dispatcher.max_queue:
            # Closing: the reader no longer waits for the handler (it must reach the peer's
            # close frame, and a callback may be waiting in close()), so what arrives past
            # max_queue is dropped, not queued: a peer that keeps sending cannot grow us.
            if not self._dropped_while_closing:
                log.warning(
                    "messages arriving after close() while the handler is %d bytes behind"
                    " (over max_queue) are dropped until the connection ends",
                    dispatcher.backlog,
                )
            self._dropped_while_closing += 1
            return None
        over = dispatcher.push(message, len(message) + MESSAGE_OVERHEAD)
        if over and self.state is State.OPEN:
            return dispatcher.wait_for_backlog()  # request_close() ends the wait
        return None

    async def _read_loop(self) -> None:
        try:
            await self._transport.read_forever(self._deliver)
        except TransportClosed as closed:  # an engine's bug included (see ManagedTransport)
            self._end(closed)

    def _take_burst(self, sent: int = 0) -> list[Any] | None:
        """Count ``sent`` bytes as sent, then take the queued messages, to send now; None
        (and the sending given up) when there are none."""
        with self._lock:
            if sent:
                self._queued_bytes -= sent
                self._notify_room()
            outbox = self._outbox
            if not outbox:
                self._writing = False
                self._batch = None
                return None
            self._outbox = []
            self._batch, self._pos = outbox, 0
            return outbox

    async def _write_loop(self) -> None:
        """The writer task: send what is queued, awaiting the engine's flow control, until
        the queue is empty (then it ends: an idle connection has no writer task)."""
        # The engine's own send: this connection's state already refuses sends after
        # close() or the end, and the writer stops at the first TransportClosed.
        send = self._transport.raw.send
        sent = 0
        try:
            batch = self._batch
            while True:
                # by position: _drop_queued may cut the burst while a message is in send()
                if batch is None or self._pos >= len(batch):
                    batch = self._take_burst(sent)
                    sent = 0
                    if batch is None:
                        return
                message = batch[self._pos]
                self._pos += 1
                if message is _CLOSE:
                    self._handshaking = True
                    # ManagedTransport bounds it by close_timeout; never raises.
                    await self._transport.close(*(self._close_requested or (1000, "")))
                    return
                await send(message)
                sent += len(message)
        except TransportClosed:  # from send(): that message is not sent either (``unsent``)
            self._pos -= 1
            return
        except Exception as exc:
            self._pos -= 1
            self._send_failed(exc)
        finally:
            self._made_room(sent)
            if self._writer is asyncio.current_task():
                self._writer = None

    def _send_failed(self, exc: Exception) -> None:
        log.error("engine send() failed; aborting the connection", exc_info=exc)
        self._transport.abort()
        self._send_error = exc

    def _made_room(self, sent: int) -> None:
        if sent:
            with self._lock:
                self._queued_bytes -= sent
                self._notify_room()
        if self._room_on_loop is not None:
            self._room_on_loop.set()

    def _end(self, closed: TransportClosed) -> None:
        code, reason = close_outcome(closed, self._close_requested)
        with self._lock:
            # The writer took the close marker: it is in the closing handshake.
            handshaking = self.state is State.CLOSING and self._handshaking
            self.state = State.CLOSED
            self.close_code, self.close_reason = code, reason
            batch = self._batch or ()
            start = self._pos - 1 if self._writer is not None and self._pos else self._pos
            self.unsent = sum(m is not _CLOSE for m in (*batch[start:], *(self._outbox or ())))
            if self._outbox is not None:
                self._outbox.clear()
            self._notify_room()
        if self._room_on_loop is not None:
            self._room_on_loop.set()
        if self._close_deadline is not None:
            self._close_deadline.cancel()
        # A writer in the middle of the closing handshake finishes on its own; any other
        # would wait forever for its send (the connection is gone) or the close it will
        # never reach.
        if self._writer is not None and not handshaking:
            self._writer.cancel()
        self._on_ended()
        self._ended.set()
        if self._ended_on_loop is not None:
            self._ended_on_loop.set_result(None)
        error = closed.error or self._send_error
        if self._report_end is not None:
            self._report_end(code, reason, error)
            return
        if error is not None:
            self.dispatcher.push(Event("onerror", error=ErrorText.of(error)))
        self.dispatcher.push(Event("onclose", close_code=code, close_reason=reason))


class ConnectionHandle:
    """What users hold of one connection, client or server session: sending, closing and
    its state, each delegated to the core's :class:`Connection`."""

    __slots__ = ()  # a server session is slotted: idle connections are the memory that counts
    _connection: Connection

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send text (``str``) or binary (bytes-like); thread-safe.

        While more than ``write_limit`` bytes wait to be sent (the peer reads slowly) it
        blocks this thread, up to ``send_timeout`` seconds, then raises
        :class:`SendTimeoutError` (the connection stays open). On polysocket's event loop
        (``async def`` callbacks) it cannot wait and raises at once: ``await send_async()``
        there. Raises ``TypeError`` for anything else and ``ConnectionClosedError`` once closed.
        """
        self._connection.send(message)

    async def send_async(self, message: str | bytes | bytearray | memoryview) -> None:
        """Like :meth:`send`, awaiting room (up to ``send_timeout``) instead of blocking;
        for ``async def`` callbacks and any other event loop."""
        await self._connection.send_async(message)

    @property
    def buffered_amount(self) -> int:
        """Bytes waiting to be sent (at most about ``write_limit``)."""
        return self._connection.buffered_amount

    @property
    def backlog(self) -> int:
        """Bytes of received messages waiting for ``onMessage`` (about ``max_queue`` at
        most: over it, the connection stops reading until the handler catches up)."""
        return self._connection.dispatcher.backlog

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after flushing what was sent; idempotent, safe from any thread or callback."""
        self._connection.close(code, reason)

    @property
    def closed(self) -> bool:
        return self._connection.closed
