"""The connection of both sides: aiohttp's WebSocket response under the engine contract.

aiohttp's ``close()`` waits for the peer's close frame, dropping the messages before it (the
core closes, then receives them), and closes TCP. aiohttp calls it itself to fail a connection
(a message too big, a broken frame) while the peer may still be sending: the TCP close resets,
and a reset can destroy the close frame before the peer reads it (it sees 1006, not 1009). So
both sides mix in :class:`CloseFrameOnly`, and the transport owns TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Protocol

import aiohttp

from polysocket.enginekit import CloseCode, valid_close_code
from polysocket.transport import (
    ConnectionOptions,
    Message,
    MessageTooBigError,
    ProtocolViolation,
    TransportClosed,
)

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

    _pong_heartbeat: float
    close_sent = False

    async def close(self: _Frames, *, code: int = 1000, message: bytes = b"", **_: object) -> bool:
        if self.close_sent:
            return False
        self.close_sent = True
        with contextlib.suppress(ConnectionError):  # TCP is gone: receive() says how it ended
            await self.send_frame(code.to_bytes(2, "big") + message, aiohttp.WSMsgType.CLOSE)
        return True

    def pong_within(self, timeout: float | None) -> None:
        """aiohttp's heartbeat waits heartbeat/2 for the pong; polysocket ``ping_timeout``."""
        if timeout is not None:
            self._pong_heartbeat = timeout


class AiohttpTransport:
    """A connection of either side; ``receive()`` ends it, and closes TCP when it does."""

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
        ws.pong_within(options.keepalive_timeout)

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

    async def receive(self) -> Message:
        msg = await self._ws.receive()
        kind = msg.type
        if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
            return msg.data  # type: ignore[no-any-return]  # aiohttp types data as Any
        if kind is aiohttp.WSMsgType.CLOSE:
            ended = await self._peer_closed(msg.data, msg.extra or "")
        else:  # ERROR: aiohttp failed the connection (or its heartbeat did); CLOSED: lost
            await self._linger()
            ended = self._failed(msg.data if kind is aiohttp.WSMsgType.ERROR else None)
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
        if isinstance(exc, aiohttp.WebSocketError):  # CloseFrameOnly.close() sent the code
            if exc.code == CloseCode.MESSAGE_TOO_BIG:
                return TransportClosed(exc.code, error=MessageTooBigError(self._options.max_size))
            return TransportClosed(exc.code, error=ProtocolViolation(exc.code, str(exc)))
        if isinstance(exc, TimeoutError):  # the heartbeat's pong did not come
            timeout = self._options.keepalive_timeout
            exc = TimeoutError(f"keepalive ping timeout: no pong within {timeout} s")
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
        await self._ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        self._tcp.abort()
