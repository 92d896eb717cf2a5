"""The connection of both sides: aiohttp's WebSocket response under the engine contract.

aiohttp's ``close()`` waits for the peer's close frame, dropping the messages before it (the
core closes, then receives them), and closes TCP. aiohttp calls it itself to fail a connection
(a message too big, a broken frame) while the peer may still be sending: the TCP close resets,
and a reset can destroy the close frame before the peer reads it (it sees 1006, not 1009). So
both sides mix in :class:`CloseFrameOnly`, and the transport owns TCP.

The keepalive is ``enginekit.Keepalive``, not aiohttp's heartbeat: that one pings only when the
peer has sent nothing for an interval, so a peer that sends but never reads (nor answers) kept
its connection. The transport answers pings itself (``autoping=False``), without awaiting the
write buffer's drain: a reader stuck there would see no pong.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from polysocket import enginekit as kit
from polysocket.enginekit import CloseCode, Keepalive, valid_close_code
from polysocket.transport import (
    ConnectionOptions,
    Message,
    MessageTooBigError,
    ProtocolViolation,
    TransportClosed,
)

#: Unanswered pings kept (see AiohttpTransport._pings).
PINGS_KEPT = 16

if TYPE_CHECKING:
    from ._client import ClientWebSocket
    from ._server import ServerWebSocket


def msg_limit(max_size: int | None) -> int:
    """aiohttp refuses a message of exactly ``max_msg_size`` bytes, ``max_size`` allows it."""
    return max_size + 1 if max_size else 0  # 0: no limit, to both


class _Frames(Protocol):  # what CloseFrameOnly needs of aiohttp's classes
    close_sent: bool

    async def send_frame(self, message: bytes, opcode: aiohttp.WSMsgType) -> None: ...


class CloseFrameOnly:
    """``close()`` sends the close frame, once: the engine calls it to close and to answer the
    peer's; aiohttp again at the peer's EOF, and on the server when the handler returns."""

    close_sent = False

    async def close(self: _Frames, *, code: int = 1000, message: bytes = b"", **_: object) -> bool:
        if self.close_sent:
            return False
        self.close_sent = True
        with contextlib.suppress(ConnectionError):  # TCP is gone: receive() says how it ended
            await self.send_frame(code.to_bytes(2, "big") + message, aiohttp.WSMsgType.CLOSE)
        return True


class TooManyFragments(aiohttp.WebSocketError):
    """What receive() gets when a message has too many frames; aiohttp sends its 1009."""


class CountedReader:
    """aiohttp's frame reader (compiled, with no limit on a message's frames and no hook for
    one) behind an ``enginekit.FrameCounter``: a message in more than MAX_FRAGMENTS frames
    fails the connection with 1009, as on every engine, before aiohttp parses it further.

    :meth:`install` puts it in front of the protocol's reader with nothing fed in between
    but ``tail``: what came with the handshake, which the protocol fed it first. The counter
    must see every byte the reader saw, from a frame boundary on, or it loses the frames.
    """

    def __init__(self, reader: Any, messages: Any, tail: bytes) -> None:
        self._reader, self._messages = reader, messages
        self._counter = kit.FrameCounter()
        self.overflowed = False
        if not self._counter.feed(tail):
            self._overflow()

    @classmethod
    def install(cls, protocol: Any, messages: Any, tail: bytes) -> None:
        """``protocol``: aiohttp's, either side; ``messages``: the WebSocket's data queue."""
        protocol._payload_parser = cls(protocol._payload_parser, messages, tail)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self.overflowed and self._counter.feed(data):
            return self._reader.feed_data(data)  # type: ignore[no-any-return]
        return self._overflow()

    def _overflow(self) -> tuple[bool, bytes]:
        if not self.overflowed:  # receive() then sends the 1009 close frame
            self.overflowed = True
            self._messages.set_exception(TooManyFragments(1009, kit.FRAGMENTS_REASON))
        return True, b""  # what aiohttp's reader returns once failed: nothing more to parse

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class AiohttpTransport:
    """A connection of either side; ``receive()`` ends it, and closes TCP when it does."""

    __slots__ = (
        "_keepalive",
        "_lost_pong",
        "_options",
        "_pinging",
        "_pings",
        "_ponging",
        "_receiving",
        "_tcp",
        "_ws",
        "subprotocol",
    )

    def __init__(
        self,
        ws: ClientWebSocket | ServerWebSocket,
        tcp: asyncio.Transport,
        subprotocol: str | None,
        options: ConnectionOptions,
    ) -> None:
        self._ws = ws
        self._tcp = tcp
        self._options = options
        self.subprotocol = subprotocol
        self._receiving = False  # in ws.receive(): pongs are being read
        self._lost_pong: TimeoutError | None = None
        self._pinging: asyncio.Task[None] | None = None
        self._ponging: asyncio.Task[None] | None = None
        #: Pings not answered yet, in order (from the first ping on); past PINGS_KEPT only the
        #: latest are (RFC 6455 5.5.3 lets a pong answer the latest ping alone), so a ping
        #: flood costs no memory.
        self._pings: deque[bytes] | None = None
        self._keepalive = Keepalive.start(options, self._ping, self._lost, self._paused)

    async def send(self, message: Message) -> None:
        if self._ws.close_sent:  # by aiohttp, failing the connection: receive() is ending it
            raise TransportClosed(None)
        try:
            if isinstance(message, str):
                await self._ws.send_str(message)
            else:
                await self._ws.send_bytes(message)
        except ConnectionError as exc:  # aiohttp's ClientConnectionResetError: TCP is closing
            raise TransportClosed(None) from exc

    def _paused(self) -> bool:
        return not self._receiving  # a backlog: pongs sit unread

    async def _answer_pings(self) -> None:
        while self._pings:
            await self._ws.pong(self._pings.popleft())

    async def receive(self) -> Message:
        while True:
            self._receiving = True
            try:
                msg = await self._ws.receive()
            finally:
                self._receiving = False
            kind = msg.type
            if kind is aiohttp.WSMsgType.PING:  # answered by a task: the reader never waits
                if self._pings is None:
                    self._pings = deque(maxlen=PINGS_KEPT)
                self._pings.append(msg.data)
                if self._ponging is None or self._ponging.done():
                    self._ponging = _written(self._answer_pings())
            elif kind is aiohttp.WSMsgType.PONG:
                if self._keepalive is not None:
                    self._keepalive.pong()
            else:
                break
        if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
            return msg.data  # type: ignore[no-any-return]  # aiohttp types data as Any
        if kind is aiohttp.WSMsgType.CLOSE:
            ended = await self._peer_closed(msg.data, msg.extra or "")
        else:  # ERROR: aiohttp failed the connection; CLOSED: lost (or the keepalive's abort)
            await self._linger()
            ended = self._failed(msg.data if kind is aiohttp.WSMsgType.ERROR else None)
        if self._keepalive is not None:
            self._keepalive.stop()
        await self._finish()
        raise ended

    async def _peer_closed(self, code: int, reason: str) -> TransportClosed:
        # code 0: a close frame without one. aiohttp lets 1006 and codes from 5000 up through.
        if code and not valid_close_code(code):
            await self._ws.close(code=CloseCode.PROTOCOL_ERROR)
            text = f"the peer sent the invalid close code {code}"
            return TransportClosed(1002, error=ProtocolViolation(1002, text))
        await self._ws.close(code=code or CloseCode.NORMAL)  # the answer, unless it answers ours
        return TransportClosed(code or CloseCode.NO_STATUS, reason)

    def _failed(self, exc: BaseException | None) -> TransportClosed:
        if self._lost_pong is not None:
            return TransportClosed(None, error=self._lost_pong)
        if isinstance(exc, TooManyFragments):
            return TransportClosed(CloseCode.MESSAGE_TOO_BIG, error=kit.too_many_fragments())
        if isinstance(exc, aiohttp.WebSocketError):  # CloseFrameOnly.close() sent the code
            if exc.code == CloseCode.MESSAGE_TOO_BIG:
                return TransportClosed(exc.code, error=MessageTooBigError(self._options.max_size))
            return TransportClosed(exc.code, error=ProtocolViolation(exc.code, str(exc)))
        return TransportClosed(None, error=exc)

    async def _linger(self) -> None:
        """Half-close TCP: a peer still sending reads our close frame, then EOF. Its EOF closes
        the transport (aiohttp keeps none half-open); ``close_timeout`` at most. Not for TLS."""
        tcp = self._tcp
        if tcp.is_closing() or not tcp.can_write_eof():
            return
        tcp.write_eof()
        try:
            async with asyncio.timeout(self._options.close_timeout):
                while not tcp.is_closing():
                    await asyncio.sleep(0.02)  # asyncio tells only aiohttp's protocol
        except TimeoutError:
            tcp.abort()

    async def _finish(self) -> None:  # the end: close TCP, once what is buffered is written
        self._tcp.close()

    async def close(self, code: int, reason: str) -> None:
        if self._keepalive is not None:  # close_timeout bounds the closing handshake
            self._keepalive.stop()
        await self._ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        self._tcp.abort()

    def _ping(self) -> None:
        if self._ws.close_sent or self._tcp.is_closing():
            raise ConnectionError("the connection is closing")  # the keepalive stops
        if self._pinging is None or self._pinging.done():
            self._pinging = _written(self._ws.ping())

    def _lost(self, error: TimeoutError) -> None:
        self._lost_pong = error
        self._tcp.abort()  # receive() then ends, reporting the error


def _written(frame: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Send a control frame now: aiohttp writes it at once, then may await the drain, which
    its task does for it. A failure there is the connection's end, which receive() reports."""
    task = asyncio.get_running_loop().create_task(frame)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task
