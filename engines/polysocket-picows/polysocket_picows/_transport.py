"""One picows connection as a polysocket ``Transport``, the same class on both sides.

picows hands its listener single frames, inside the protocol's ``buffer_updated``, and leaves
the rest of RFC 6455 to it. This module is that rest (the core's ``ManagedTransport`` adds
the end state, the idempotent close, draining and ``close_timeout`` on top):

- messages: continuation frames are reassembled; a text message is decoded as it arrives
  (invalid UTF-8 fails the connection with 1007); ``max_size`` counts the whole message, not
  one frame (1009 with :class:`MessageTooBigError`), ``enginekit.MAX_FRAGMENTS`` its frames
  (1009); reserved bits and continuation frames out of place fail it with 1002;
- the closing handshake: picows never answers a close frame, nor drops TCP once the
  handshake is done. This transport echoes the peer's close frame and then closes TCP;
  after failing a connection it waits for the peer's close frame before closing TCP. Both
  drops are bounded by ``close_timeout`` (the core no longer waits once ``receive()`` has
  raised, and a peer that stops reading would keep the socket forever);
- flow control: ``receive()`` pulls from a queue; past ``QUEUE_HIGH`` unread messages (or
  ``QUEUE_HIGH_BYTES``) the socket is not read any more until the reader has caught up.
  ``send()`` writes the frame and then waits while the socket's write buffer is over its
  high-water mark (picows' ``pause_writing``/``resume_writing``);
- keepalive: picows' own auto-ping wants its reply timeout at most its interval and answers a
  missing pong with a 1001 close frame; ``enginekit.Keepalive`` treats a pong missing for
  ``ping_timeout`` seconds as a lost connection instead, unless the queue has stopped reading.

picows answers pings itself (``enable_auto_pong``), checks opcodes, masking, control-frame
sizes, close codes and the UTF-8 of close reasons, and rejects a single frame over
``max_frame_size`` (set to ``max_size``) before it has buffered it. When it fails a
connection it sends the close frame on its own; ``_lost_outcome`` reads that from
``close_handshake``.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport
from polysocket.enginekit import (
    MAX_FRAGMENTS,
    CloseCode,
    Keepalive,
    too_many_fragments,
    valid_close_code,
    write_frame,
)
from polysocket.transport import (
    ConnectionOptions,
    Message,
    MessageTooBigError,
    ProtocolViolation,
    TransportClosed,
)

_log = logging.getLogger("polysocket_picows")

#: Unread messages (or bytes) past which the socket is not read any more. The core bounds its
#: own queue in bytes (``max_queue``); this one comes on top, so it stays small in bytes
#: (aiohttp's is 512 KiB too); many small messages still go through in one read.
QUEUE_HIGH = 256
QUEUE_HIGH_BYTES = 512 * 1024
#: ... and below which it is read again.
QUEUE_LOW = QUEUE_HIGH // 4
QUEUE_LOW_BYTES = QUEUE_HIGH_BYTES // 4

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG

_FAIL_REASONS = {
    CloseCode.PROTOCOL_ERROR: b"protocol error",
    CloseCode.INVALID_DATA: b"invalid UTF-8 in a text message",
    CloseCode.MESSAGE_TOO_BIG: b"message too big",
    CloseCode.INTERNAL_ERROR: b"internal error",
}


def frame_limit(max_size: int | None) -> int:
    """picows' ``max_frame_size`` for a ``max_size`` (None: no limit)."""
    return max_size if max_size is not None else 2**62


class _Listener(WSListener):
    """picows' callbacks, forwarded to the transport (which never lets them raise)."""

    def __init__(self, owner: PicowsTransport) -> None:
        super().__init__()
        self.owner = owner

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.owner._connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        try:
            self.owner._frame(frame)
        except Exception as exc:  # a bug here must fail this connection, not picows
            _log.exception("picows frame handling failed")
            self.owner._fail(CloseCode.INTERNAL_ERROR, exc)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.owner._disconnected()

    def pause_writing(self) -> None:
        self.owner._pause_writing()

    def resume_writing(self) -> None:
        self.owner._resume_writing()


class PicowsTransport:
    """A picows ``WSTransport`` behind polysocket's ``Transport`` contract.

    Create it before the handshake and give picows ``listener`` (``ws_connect``'s listener
    factory, or the server's ``WSUpgradeResponseWithListener``).
    """

    def __init__(self, options: ConnectionOptions, *, client: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._options = options
        self.subprotocol: str | None = None
        self.listener = _Listener(self)
        #: Called once the handshake is complete (the server starts the session then).
        self.on_open: Callable[[], None] | None = None
        self._ws: WSTransport | None = None  # from on_ws_connected

        # receiving (the queue, the fragments and the decoder made when needed: an idle
        # connection holds none of them)
        self._queue: deque[Message] | None = None
        self._queued_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._frag_type: WSMsgType | None = None  # of the fragmented message in progress
        self._frag_parts: list[Any] = []  # str for a text message, bytes for a binary one
        self._frag_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None

        # ending
        self._ended: TransportClosed | None = None  # what receive() raises once drained
        self._close_sent = False  # a close frame of ours went out (close(), echo or failure)
        self._abandoned = False  # connect() was cancelled before the handshake completed
        self._deadline: asyncio.TimerHandle | None = None
        self._reaper: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # while picows' buffer is full
        self._keepalive: Keepalive | None = None
        self._keepalive_error: TimeoutError | None = None

    @property
    def ws(self) -> WSTransport:
        assert self._ws is not None, "used before the handshake completed"
        return self._ws

    # -- the Transport contract -------------------------------------------------------------

    async def send(self, message: Message) -> None:
        ws = self.ws
        # picows silently drops frames after a close frame: say the connection is gone.
        if self._close_sent or ws.is_close_frame_sent or ws.is_disconnected:
            raise TransportClosed(None)
        ws.send(_TEXT if isinstance(message, str) else _BINARY, message)
        if self._drained is not None:
            await asyncio.shield(self._drained)  # a cancelled send leaves it to the others
            if ws.is_disconnected:
                raise TransportClosed(None)

    async def receive(self) -> Message:
        while self._queue is None:
            if self._ended is not None:
                raise self._ended
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        queue = self._queue
        message = queue.popleft()
        self._queued_bytes -= len(message)
        if not queue:
            self._queue = None
        low = len(queue) <= QUEUE_LOW and self._queued_bytes <= QUEUE_LOW_BYTES
        if self._reading_paused and low:
            self._resume_reading()
        return message

    async def close(self, code: int, reason: str) -> None:
        ws = self.ws
        # Not when the peer closed first (answered already) or picows failed the connection.
        if not self._close_sent and not ws.is_close_frame_sent:
            self._closing()
            ws.send_close(WSCloseCode(code), reason.encode())

    def write_frame(self, frame: bytes, limit: int) -> bool | None:
        """``FrameWriter``: for broadcast, on the server side."""
        ws = self._ws
        if self._client or ws is None or self._close_sent or ws.is_close_frame_sent:
            return None
        return write_frame(ws.underlying_transport, frame, limit)

    def abort(self) -> None:
        if self._ws is not None:
            self._ws.disconnect(graceful=False)

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
        paused = lambda: self._reading_paused  # noqa: E731
        self._keepalive = Keepalive.start(self._options, ws.send_ping, self._lost, paused)
        if self.on_open is not None:
            self.on_open()

    def _frame(self, frame: WSFrame) -> None:
        kind = frame.msg_type
        if self._ended is not None:
            # Failed, or the peer's close frame came: nothing after it counts, except the
            # peer's answer to the close frame we failed the connection with.
            if kind == _CLOSE:
                self._drop()
            return
        if self.ws.is_close_frame_sent and not self._close_sent:
            return  # picows failed the connection itself; it drops TCP shortly
        if kind == _PONG:
            if self._keepalive is not None:
                self._keepalive.pong()
        elif kind == _CLOSE:
            self._peer_close(frame)
        elif kind == _PING:
            pass  # answered by picows (enable_auto_pong)
        elif frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._violation("the peer set reserved bits (no extension agreed)")
        elif kind == _CONTINUATION:
            if self._frag_type is None:
                self._violation("a continuation frame with nothing to continue")
            else:
                self._continue(frame)
        elif self._frag_type is not None:  # TEXT or BINARY: a new message
            self._violation("a new message began before the fragmented one was finished")
        elif self._too_big(frame.payload_size):
            pass
        elif not frame.fin:
            self._frag_type = kind
            self._frag_size = 0
            self._continue(frame)
        elif kind == _BINARY:
            self._deliver(frame.get_payload_as_bytes())
        else:
            try:
                self._deliver(frame.get_payload_as_utf8_text())
            except UnicodeDecodeError as exc:
                self._invalid_text(exc)

    def _continue(self, frame: WSFrame) -> None:
        if len(self._frag_parts) >= MAX_FRAGMENTS:  # endless (empty) frames never reach max_size
            self._fail(CloseCode.MESSAGE_TOO_BIG, too_many_fragments())
            return
        self._frag_size += frame.payload_size
        if self._too_big(self._frag_size):
            return
        if self._frag_type == _TEXT:
            # Decoded fragment by fragment: invalid UTF-8 fails the connection as it shows.
            if self._decoder is None:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
            try:
                self._frag_parts.append(
                    self._decoder.decode(frame.get_payload_as_memoryview(), frame.fin)
                )
            except UnicodeDecodeError as exc:
                self._invalid_text(exc)
                return
        else:
            self._frag_parts.append(frame.get_payload_as_bytes())
        if frame.fin:
            parts, kind = self._frag_parts, self._frag_type
            self._reset_fragments()
            self._deliver("".join(parts) if kind == _TEXT else b"".join(parts))

    def _too_big(self, size: int) -> bool:
        max_size = self._options.max_size
        if max_size is not None and size > max_size:
            self._fail(CloseCode.MESSAGE_TOO_BIG, MessageTooBigError(max_size, size))
            return True
        return False

    def _invalid_text(self, exc: UnicodeDecodeError) -> None:
        code = CloseCode.INVALID_DATA
        self._fail(code, ProtocolViolation(code, f"a text message is not valid UTF-8 ({exc})"))

    def _violation(self, text: str) -> None:
        code = CloseCode.PROTOCOL_ERROR
        self._fail(code, ProtocolViolation(code, text))

    def _deliver(self, message: Message) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(message)
        self._queued_bytes += len(message)
        self._wake()
        if not self._reading_paused and (
            len(queue) >= QUEUE_HIGH or self._queued_bytes >= QUEUE_HIGH_BYTES
        ):
            self._reading_paused = True
            self.ws.underlying_transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if not self.ws.is_disconnected:
                self.ws.underlying_transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _peer_close(self, frame: WSFrame) -> None:
        # picows has checked the reason's UTF-8 and refuses most invalid codes below 3000,
        # but lets 0, 1006 and codes from 5000 through.
        self._reset_fragments()
        code = frame.get_close_code().value if frame.payload_size >= 2 else CloseCode.NO_STATUS
        if frame.payload_size >= 2 and not valid_close_code(code):
            self._violation(f"the peer sent the invalid close code {code}")
            self._drop()  # its close frame is answered: the handshake is over
            return
        if not self._close_sent:
            # The peer started the closing handshake: answer it (picows does not).
            self._closing()
            if frame.payload_size < 2:
                self.ws.send(_CLOSE, b"")  # send_close() always writes a status code
            else:
                self.ws.send_close(frame.get_close_code())
        # Else: the answer to our close frame.
        self._end(TransportClosed(code, frame.get_close_reason() or ""))
        self._drop()

    def _fail(self, code: CloseCode, error: BaseException) -> None:
        """Fail the connection (RFC 6455 7.1.7): close frame, then wait for the peer's."""
        if self._ended is not None:
            return
        self._reset_fragments()
        self._end(TransportClosed(code, error=error))
        ws = self.ws
        if not self._close_sent and not ws.is_close_frame_sent:
            self._closing()
            ws.send_close(WSCloseCode(code), _FAIL_REASONS.get(code, b""))
        self._resume_reading()  # the peer's close frame must get in
        self._abort_later()

    def _closing(self) -> None:
        """Our close frame goes out: no pings after it."""
        self._close_sent = True
        if self._keepalive is not None:
            self._keepalive.stop()

    def _drop(self) -> None:
        """The closing handshake is complete: close TCP (after what is buffered is written)."""
        self.ws.disconnect(graceful=True)
        self._abort_later()  # a peer that stopped reading would keep our buffered bytes

    def _abort_later(self) -> None:
        if self._deadline is None and not self.ws.is_disconnected:
            self._deadline = self._loop.call_later(self._options.close_timeout, self.abort)

    def _reset_fragments(self) -> None:
        self._frag_type = None
        self._frag_parts = []
        self._decoder = None

    def _end(self, closed: TransportClosed) -> None:
        if self._ended is None:
            self._ended = closed
            self._wake()

    def _lost(self, error: TimeoutError) -> None:
        self._keepalive_error = error
        self.abort()

    def _pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()

    def _resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _disconnected(self) -> None:
        self._resume_writing()  # senders waiting for room: the connection is gone
        if self._deadline is not None:
            self._deadline.cancel()
        if self._keepalive is not None:
            self._keepalive.stop()
        self._end(self._lost_outcome())
        if self._client:
            # picows keeps the error that made it fail the connection for wait_disconnected();
            # retrieve it so asyncio does not log it as never retrieved.
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        try:
            await self.ws.wait_disconnected()
        except Exception as exc:
            _log.debug("picows ended the connection with %r", exc)

    def _lost_outcome(self) -> TransportClosed:
        """How a connection that ended without a completed closing handshake ended."""
        if self._keepalive_error is not None:
            return TransportClosed(None, error=self._keepalive_error)
        handshake = self.ws.close_handshake
        sent = handshake.sent if handshake is not None else None
        if sent is not None and not self._close_sent:
            # picows failed the connection with this close frame: a frame over max_frame_size,
            # a reserved opcode, an unmasked client frame, a bad close code...
            code = int(sent.code.value)
            if code == CloseCode.MESSAGE_TOO_BIG:
                error: Exception = MessageTooBigError(self._options.max_size)
            else:
                error = ProtocolViolation(code, sent.reason or "picows")
            return TransportClosed(code, error=error)
        return TransportClosed(None)
