"""One picows connection as a polysocket ``Transport``, the same class on both sides.

picows hands its listener single frames, inside the protocol's ``buffer_updated``, and leaves
the rest of RFC 6455 to it. This module is that rest:

- messages: continuation frames are reassembled; a text message is decoded as it arrives
  (invalid UTF-8 fails the connection with 1007); ``max_size`` counts the whole message, not
  one frame (1009 with :class:`MessageTooBigError`); reserved bits and continuation frames out
  of place fail it with 1002;
- the closing handshake: picows never answers a close frame; this transport echoes the
  peer's, sends its own on ``close()``, and drops the TCP connection once it is done or
  ``close_timeout`` has passed;
- flow control: ``receive()`` pulls from a queue; past ``QUEUE_HIGH`` unread messages (or
  ``QUEUE_HIGH_BYTES``) the socket is not read any more until the reader has caught up.
  ``send()`` writes the frame and then waits while the socket's write buffer is over its
  high-water mark (picows' ``pause_writing``/``resume_writing``);
- keepalive: picows' own auto-ping wants its reply timeout at most its interval and answers a
  missing pong with a 1001 close frame; this transport pings every ``ping_interval`` seconds
  and treats a pong missing for ``ping_timeout`` seconds as a lost connection.

picows answers pings itself (``enable_auto_pong``), checks opcodes, masking, control-frame
sizes, close codes and the UTF-8 of close reasons, and rejects a single frame over
``max_frame_size`` (set to ``max_size``) before it has buffered it. When it fails a
connection it sends the close frame on its own; ``_lost_outcome`` reads that from
``close_handshake``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
from collections import deque
from typing import Any

from picows import WSListener, WSMsgType, WSTransport
from polysocket.enginekit import valid_close_code
from polysocket.transport import (
    ClientOptions,
    Message,
    MessageTooBigError,
    ProtocolViolation,
    ServerOptions,
    TransportClosed,
)

_log = logging.getLogger("polysocket_picows")

_NO_STATUS = 1005
_PROTOCOL_ERROR = 1002
_INVALID_DATA = 1007
_MESSAGE_TOO_BIG = 1009
_INTERNAL_ERROR = 1011

#: Unread messages (or bytes) past which the socket is not read any more.
QUEUE_HIGH = 256
QUEUE_HIGH_BYTES = 4 * 1024 * 1024
#: ... and below which it is read again.
QUEUE_LOW = QUEUE_HIGH // 4
QUEUE_LOW_BYTES = QUEUE_HIGH_BYTES // 4

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG


def frame_limit(max_size: int | None) -> int:
    """picows' ``max_frame_size`` for a ``max_size`` (None: no limit)."""
    return max_size if max_size is not None else 2**62


class _Listener(WSListener):  # type: ignore[misc]
    """picows' callbacks, forwarded to the transport (which never lets them raise)."""

    def __init__(self, owner: PicowsTransport) -> None:
        super().__init__()
        self.owner = owner

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.owner._connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        try:
            self.owner._frame(frame)
        except Exception as exc:  # a bug here must fail this connection, not picows
            _log.exception("picows frame handling failed")
            self.owner._fail(_INTERNAL_ERROR, exc)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.owner._disconnected_cb()

    def pause_writing(self) -> None:
        self.owner._writable.clear()

    def resume_writing(self) -> None:
        self.owner._writable.set()


class PicowsTransport:
    """A picows ``WSTransport`` behind polysocket's ``Transport`` contract.

    Create it before the handshake and give picows ``listener`` (``ws_connect``'s listener
    factory, or the server's ``WSUpgradeResponseWithListener``).
    """

    def __init__(self, options: ClientOptions | ServerOptions, *, client: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._max_size = options.max_size
        self._close_timeout = options.close_timeout
        self._ping_interval = options.ping_interval
        self._keepalive_timeout = options.keepalive_timeout
        self.subprotocol: str | None = None
        self.listener = _Listener(self)
        #: Called once the handshake is complete (the server starts the session then).
        self.on_open: Any = None
        self._ws: Any = None  # picows WSTransport, from on_ws_connected

        # receiving
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._discard = False  # close() found nobody reading: drop what arrives
        self._reading_paused = False
        self._frag_type: Any = None  # opcode of the fragmented message in progress
        self._frag_parts: list[Any] = []
        self._frag_size = 0
        self._decoder: Any = None

        # ending
        self._ended: TransportClosed | None = None
        self._close_sent = False  # a close frame of ours went out (close(), echo or failure)
        self._failing = False  # this side failed the connection
        self._abandoned = False  # connect() was cancelled before the handshake completed
        self._disconnected = asyncio.Event()
        self._close_task: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._reaper: asyncio.Future[Any] | None = None

        # sending
        self._writable = asyncio.Event()
        self._writable.set()

        # keepalive
        self._pong = asyncio.Event()
        self._keepalive: asyncio.Task[None] | None = None
        self._keepalive_error: TimeoutError | None = None

    # -- the Transport contract -------------------------------------------------------------

    async def send(self, message: Message) -> None:
        ws = self._ws
        if self._ended is not None or self._close_sent or ws.is_close_frame_sent:
            raise TransportClosed(self._ended.code if self._ended is not None else None)
        if ws.is_disconnected:
            raise TransportClosed(None)
        # picows writes at once (straight to the socket when its buffer is empty) and
        # silently drops frames after a close frame: hence the checks above.
        ws.send(_TEXT if isinstance(message, str) else _BINARY, message)
        if not self._writable.is_set():
            await self._writable.wait()
            if self._disconnected.is_set():
                raise TransportClosed(self._ended.code if self._ended is not None else None)

    async def receive(self) -> Message:
        while True:
            if self._queue:
                message = self._queue.popleft()
                self._queued_bytes -= len(message)
                if (
                    self._reading_paused
                    and len(self._queue) <= QUEUE_LOW
                    and self._queued_bytes <= QUEUE_LOW_BYTES
                ):
                    self._resume_reading()
                return message
            if self._ended is not None:
                raise self._ended
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(code, reason))
        await asyncio.shield(self._close_task)

    async def _close(self, code: int, reason: str) -> None:
        ws = self._ws
        if (
            self._ended is None
            and not self._close_sent
            and not ws.is_close_frame_sent
            and not ws.is_disconnected
        ):
            self._close_sent = True
            if self._waiter is None:
                # Nobody is reading: read on and discard, so the peer's close frame gets in.
                self._discard = True
                self._queue.clear()
                self._queued_bytes = 0
            self._resume_reading()
            ws.send_close(code, reason.encode())
        if self._disconnected.is_set():
            return
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._disconnected.wait()
        except TimeoutError:
            self.abort()
            # abort() ends the connection on the loop's next iteration
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._disconnected.wait()

    def abort(self) -> None:
        ws = self._ws
        if ws is not None and not ws.is_disconnected:
            ws.disconnect(graceful=False)

    def abandon(self) -> None:
        """``connect()`` was cancelled: drop the connection, now or once it is open."""
        self._abandoned = True
        self.abort()

    # -- picows' side ---------------------------------------------------------------------------

    def _connected(self, ws: WSTransport) -> None:
        self._ws = ws
        if self._abandoned:  # connect() gave up already: nobody will ever use this one
            ws.disconnect(graceful=False)
            return
        if self._ping_interval is not None and self._keepalive_timeout is not None:
            self._keepalive = self._loop.create_task(
                self._keepalive_loop(self._ping_interval, self._keepalive_timeout)
            )
        if self.on_open is not None:
            self.on_open()

    def _frame(self, frame: Any) -> None:
        kind = frame.msg_type
        if self._ended is not None:
            # Failed, or the peer's close frame came: nothing after it counts, except the
            # peer's answer to the close frame we failed the connection with.
            if kind == _CLOSE and self._failing:
                self._drop()
            return
        if self._ws.is_close_frame_sent and not self._close_sent:
            return  # picows failed the connection itself; it drops TCP shortly
        if kind == _PONG:
            self._pong.set()
            return
        if kind == _PING:
            return  # answered by picows (enable_auto_pong)
        if kind == _CLOSE:
            self._peer_close(frame)
            return
        if self._discard:
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._violation(_PROTOCOL_ERROR, "the peer set reserved bits (no extension agreed)")
            return
        if kind == _CONTINUATION:
            if self._frag_type is None:
                self._violation(_PROTOCOL_ERROR, "a continuation frame with nothing to continue")
                return
            self._continue(frame)
            return
        # TEXT or BINARY: a new message
        if self._frag_type is not None:
            self._violation(
                _PROTOCOL_ERROR, "a new message began before the fragmented one was finished"
            )
            return
        if self._too_big(frame.payload_size):
            return
        if frame.fin:
            if kind == _TEXT:
                try:
                    message: Message = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError as exc:
                    self._invalid_text(exc)
                    return
            else:
                message = frame.get_payload_as_bytes()
            self._deliver(message)
            return
        self._frag_type = kind
        self._frag_size = frame.payload_size
        if kind == _TEXT:
            self._decoder = codecs.getincrementaldecoder("utf-8")()
            self._frag_parts = []
            self._add_text(frame.get_payload_as_memoryview(), final=False)
        else:
            self._frag_parts = [frame.get_payload_as_bytes()]

    def _continue(self, frame: Any) -> None:
        self._frag_size += frame.payload_size
        if self._too_big(self._frag_size):
            return
        if self._frag_type == _TEXT:
            if not self._add_text(frame.get_payload_as_memoryview(), final=bool(frame.fin)):
                return
        else:
            self._frag_parts.append(frame.get_payload_as_bytes())
        if frame.fin:
            parts, self._frag_parts = self._frag_parts, []
            kind, self._frag_type, self._decoder = self._frag_type, None, None
            self._deliver("".join(parts) if kind == _TEXT else b"".join(parts))

    def _add_text(self, payload: Any, *, final: bool) -> bool:
        # Decoded fragment by fragment: invalid UTF-8 fails the connection as soon as it shows.
        try:
            self._frag_parts.append(self._decoder.decode(payload, final))
        except UnicodeDecodeError as exc:
            self._invalid_text(exc)
            return False
        return True

    def _too_big(self, size: int) -> bool:
        if self._max_size is not None and size > self._max_size:
            self._fail(_MESSAGE_TOO_BIG, MessageTooBigError(self._max_size, size))
            return True
        return False

    def _invalid_text(self, exc: UnicodeDecodeError) -> None:
        error = ProtocolViolation(_INVALID_DATA, f"a text message is not valid UTF-8 ({exc})")
        self._fail(_INVALID_DATA, error)

    def _violation(self, code: int, text: str) -> None:
        self._fail(code, ProtocolViolation(code, text))

    def _deliver(self, message: Message) -> None:
        if self._discard:
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._wake()
        if (
            not self._reading_paused
            and self._close_task is None
            and (len(self._queue) >= QUEUE_HIGH or self._queued_bytes >= QUEUE_HIGH_BYTES)
        ):
            self._reading_paused = True
            self._ws.underlying_transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if not self._ws.is_disconnected:
                self._ws.underlying_transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _peer_close(self, frame: Any) -> None:
        # picows has checked the reason's UTF-8 and refuses most invalid codes below 3000,
        # but lets 0, 1006 and codes from 5000 through.
        self._reset_fragments()
        if frame.payload_size >= 2:
            code = int(frame.get_close_code())
            if not valid_close_code(code):
                self._violation(_PROTOCOL_ERROR, f"the peer sent the invalid close code {code}")
                self._drop()  # its close frame is answered: the handshake is over
                return
        else:
            code = _NO_STATUS
        reason = frame.get_close_reason() or ""
        ws = self._ws
        if not self._close_sent:
            # The peer started the closing handshake: answer it (picows does not).
            self._close_sent = True
            if code == _NO_STATUS:
                # send_close() always writes a status code; echo the empty close frame.
                ws.send(_CLOSE, b"")
            else:
                ws.send_close(code)
        # Else: the answer to our close frame.
        self._end(TransportClosed(code, reason))
        self._drop()

    def _fail(self, code: int, error: BaseException) -> None:
        """Fail the connection (RFC 6455 7.1.7): close frame, then wait for the peer's."""
        if self._ended is not None:
            return
        self._failing = True
        self._reset_fragments()
        self._end(TransportClosed(code, error=error))
        ws = self._ws
        if not self._close_sent and not ws.is_close_frame_sent and not ws.is_disconnected:
            self._close_sent = True
            ws.send_close(code, _FAIL_REASONS.get(code, b""))
        self._resume_reading()  # the peer's close frame must get in
        if self._deadline is None and not ws.is_disconnected:
            self._deadline = self._loop.call_later(self._close_timeout, self.abort)

    def _drop(self) -> None:
        """The closing handshake is complete: close TCP (after what is buffered is written)."""
        ws = self._ws
        if ws.is_disconnected:
            return
        ws.disconnect(graceful=True)
        if self._deadline is None:
            # a peer that stopped reading would keep our buffered bytes (and the socket) forever
            self._deadline = self._loop.call_later(self._close_timeout, self.abort)

    def _reset_fragments(self) -> None:
        self._frag_type = None
        self._frag_parts = []
        self._frag_size = 0
        self._decoder = None

    def _end(self, closed: TransportClosed) -> None:
        if self._ended is None:
            self._ended = closed
            self._wake()

    def _disconnected_cb(self) -> None:
        self._disconnected.set()
        self._writable.set()  # senders waiting for room: the connection is gone
        if self._deadline is not None:
            self._deadline.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._end(self._lost_outcome())
        if self._client:
            # picows keeps the error that made it fail the connection for wait_disconnected();
            # retrieve it so asyncio does not log it as never retrieved.
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        try:
            await self._ws.wait_disconnected()
        except Exception as exc:
            _log.debug("picows ended the connection with %r", exc)

    def _lost_outcome(self) -> TransportClosed:
        """How a connection that ended without a completed closing handshake ended."""
        if self._keepalive_error is not None:
            return TransportClosed(None, error=self._keepalive_error)
        handshake = self._ws.close_handshake
        sent = handshake.sent if handshake is not None else None
        if sent is not None and not self._close_sent:
            # picows failed the connection with this close frame: a frame over max_frame_size,
            # a reserved opcode, an unmasked client frame, a bad close code...
            code = int(sent.code)
            if code == _MESSAGE_TOO_BIG:
                return TransportClosed(code, error=MessageTooBigError(self._max_size))
            return TransportClosed(code, error=ProtocolViolation(code, sent.reason or "picows"))
        return TransportClosed(None)

    async def _keepalive_loop(self, interval: float, timeout: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._ended is not None or self._close_sent:
                return
            self._pong.clear()
            self._ws.send_ping(b"polysocket")
            try:
                async with asyncio.timeout(timeout):
                    await self._pong.wait()
            except TimeoutError:
                if self._ended is not None or self._close_sent:
                    return
                if self._reading_paused:
                    continue  # we stopped reading ourselves: the pong may be unread
                self._keepalive_error = TimeoutError(
                    f"keepalive ping timeout: no pong within {timeout} s"
                )
                self.abort()
                return


_FAIL_REASONS = {
    _PROTOCOL_ERROR: b"protocol error",
    _INVALID_DATA: b"invalid UTF-8 in a text message",
    _MESSAGE_TOO_BIG: b"message too big",
    _INTERNAL_ERROR: b"internal error",
}
