"""One open connection driven by the core: reader, writer, close bookkeeping.

The same machinery serves client connections and (later) server sessions. It runs on an
event loop; ``send`` and ``close`` may be called from any thread.

Outgoing messages go into one queue under a lock (so one thread's messages leave in call
order); the first message of a burst wakes the writer task once, and the writer sends the
whole burst. Senders block while too much is queued, and the writer itself waits on the
engine's flow control, so a slow peer slows the sender down instead of growing memory.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .context import current_call
from .dispatch import BACKLOG_HIGH, Dispatcher, ErrorText, Event
from .enginekit.closecodes import CloseCode, valid_close_code
from .errors import ConnectionClosedError
from .handlers import Handler
from .managed import ManagedTransport, close_bound
from .transport import TransportClosed

log = logging.getLogger("polysocket.connection")

#: Queued outgoing bytes above which ``send`` blocks, and below which it resumes.
OUTBOX_HIGH = 1 << 20
OUTBOX_LOW = 1 << 18

#: Users get plain ints, never an IntEnum.
ABNORMAL = int(CloseCode.ABNORMAL)


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
    code we sent; when the peer closed, the code it sent; with no close frame, 1006.
    """
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
    """The core's side of one connection. Create it on the loop, then call ``start()``."""

    def __init__(
        self,
        transport: ManagedTransport,
        handler: Handler,
        session: Any,
        loop: asyncio.AbstractEventLoop,
        close_timeout: float,
        on_ended: Callable[[], None],
        replies: bool = False,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._close_timeout = close_timeout
        self._on_ended = on_ended
        self.dispatcher = Dispatcher(handler, session, loop, self._reply if replies else None)
        #: Resolved on the loop when the connection has ended (for the server's session task).
        self.ended_on_loop: asyncio.Future[None] = loop.create_future()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._outbox: deque[Any] = deque()
        self._queued_bytes = 0
        self._writer_awake = False
        self._wake_writer = asyncio.Event()
        self.state = State.CONNECTING
        self._close_requested: tuple[int, str] | None = None
        self.ended = threading.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._send_error: Exception | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._loop_thread = threading.get_ident()

    def start(self) -> None:
        self.state = State.OPEN
        self.dispatcher.push(Event("onopen"))
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())

    # -- any thread ------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        message = check_message(message)
        size = len(message)
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            while self._queued_bytes >= OUTBOX_HIGH and not on_loop and self.state is State.OPEN:
                self._room.wait()
            if self.state is not State.OPEN:
                raise self._closed_error()
            self._outbox.append(message)
            self._queued_bytes += size
            if self._writer_awake:
                return
            self._writer_awake = True
        self._loop.call_soon_threadsafe(self._wake_writer.set)

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

    def request_close(self, code: int = 1000, reason: str = "") -> bool:
        """Queue the close after what was already sent; False if a close was already queued."""
        check_close(code, reason)
        with self._lock:
            if self.state is State.CLOSING or self.state is State.CLOSED:
                return False
            self.state = State.CLOSING
            self._close_requested = (int(code), reason)
            self._outbox.append(_CLOSE)
            self._room.notify_all()
            wake = not self._writer_awake
            self._writer_awake = True
        self._loop.call_soon_threadsafe(self._closing_started, wake)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close, then wait for the closing handshake and, outside callbacks, for onClose.

        On the loop thread it only starts the close. Inside a callback it does not wait for
        ``onClose``, which runs on a handler thread after the current callback returns.
        """
        self.request_close(code, reason)
        if threading.get_ident() == self._loop_thread:
            return
        self.ended.wait(close_bound(self._close_timeout))
        if current_call.get() is None:
            self.dispatcher.finished.wait(self._close_timeout)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSING or self.state is State.CLOSED

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

    def _closing_started(self, wake: bool) -> None:
        self.dispatcher.release()
        if wake:
            self._wake_writer.set()

    def _deliver(self, message: str | bytes) -> Awaitable[None] | None:
        dispatcher = self.dispatcher
        dispatcher.push(message)
        if dispatcher.backlog > BACKLOG_HIGH and self.state is State.OPEN:
            return dispatcher.wait_for_backlog()  # request_close() ends the wait
        return None

    async def _read_loop(self) -> None:
        try:
            await self._transport.read_forever(self._deliver)
        except TransportClosed as closed:  # an engine's bug included (see ManagedTransport)
            self._end(closed)

    async def _write_loop(self) -> None:
        # The engine's own send: this connection's state already refuses sends after
        # close() or the end, and the writer stops at the first TransportClosed.
        send = self._transport.raw.send
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while True:
                with self._lock:
                    if not self._outbox:
                        self._writer_awake = False
                        break
                    batch = self._outbox
                    self._outbox = deque()
                sent = 0
                try:
                    for message in batch:
                        if message is _CLOSE:
                            # ManagedTransport bounds it by close_timeout; never raises.
                            await self._transport.close(*(self._close_requested or (1000, "")))
                            return
                        await send(message)
                        sent += len(message)
                except TransportClosed:
                    return
                except Exception as exc:
                    log.exception("engine send() failed; aborting the connection")
                    self._transport.abort()
                    self._send_error = exc
                    return
                finally:
                    self._made_room(sent)

    def _made_room(self, sent: int) -> None:
        with self._lock:
            self._queued_bytes -= sent
            if self._queued_bytes < OUTBOX_LOW:
                self._room.notify_all()

    def _end(self, closed: TransportClosed) -> None:
        code, reason = close_outcome(closed, self._close_requested)
        with self._lock:
            # The writer took the close marker: it is in the closing handshake.
            handshaking = self.state is State.CLOSING and _CLOSE not in self._outbox
            self.state = State.CLOSED
            self.close_code, self.close_reason = code, reason
            self._outbox.clear()
            self._room.notify_all()
        # A writer in the middle of the closing handshake finishes on its own; any other
        # would wait forever for a wake-up (the close marker it was to send is gone).
        if self._writer is not None and not handshaking:
            self._writer.cancel()
        self._on_ended()
        self.ended.set()
        self.ended_on_loop.set_result(None)
        error = closed.error or self._send_error
        if error is not None:
            self.dispatcher.push(Event("onerror", error=ErrorText.of(error)))
        self.dispatcher.push(Event("onclose", close_code=code, close_reason=reason))
