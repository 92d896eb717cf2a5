"""One connection, either side: aiohttp's WebSocket response under the engine contract.

aiohttp's own ``close()`` does not fit the contract: it waits for the peer's close frame,
discarding the messages that come before it (the core closes, then keeps receiving them), and
closes TCP. aiohttp also calls it itself when it fails a connection (a message over
``max_msg_size``, a broken frame) while the peer may still be sending: closing TCP then resets
the connection, and the reset can destroy the close frame before the peer reads it (it would
see 1006, not 1009). So the WebSocket responses of both sides mix in :class:`CloseFrameOnly`,
whose ``close()`` sends the close frame and nothing more, and the transport owns TCP: after a
failure it lets the peer finish first (``_linger``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
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

#: How often a failed connection looks whether the peer has closed its side yet.
PEER_POLL = 0.02


def msg_limit(max_size: int | None) -> int:
    """aiohttp's ``max_msg_size``: aiohttp refuses a message of exactly that many bytes,
    ``max_size`` allows it; 0 means no limit to both."""
    return max_size + 1 if max_size else 0


class _WebSocket(Protocol):
    close_sent: bool

    async def send_frame(
        self, message: bytes, opcode: aiohttp.WSMsgType, compress: int | None = None
    ) -> None: ...


class CloseFrameOnly:
    """Mixed into aiohttp's WebSocket responses: ``close()`` sends the close frame, once.

    Once, because aiohttp calls ``close()`` again at the peer's EOF and, on the server, when
    the handler returns. The engine calls it to close and to answer the peer's close frame.
    """

    _pong_heartbeat: float
    close_sent = False

    async def close(
        self: _WebSocket, *, code: int = CloseCode.NORMAL, message: bytes = b"", **_: object
    ) -> bool:
        if self.close_sent:
            return False
        self.close_sent = True
        with contextlib.suppress(ConnectionError):  # TCP is gone: receive() says how it ended
            await self.send_frame(struct.pack("!H", code) + message, aiohttp.WSMsgType.CLOSE)
        return True

    def pong_within(self, timeout: float | None) -> None:
        """aiohttp's heartbeat waits heartbeat/2 for the pong; polysocket's ``ping_timeout``."""
        if timeout is not None:
            self._pong_heartbeat = timeout


class AiohttpTransport:
    """A connection of either side. It ends in ``receive()``: at the peer's close frame
    (answered, unless it answers ours) TCP closes; after a failure, once the peer is done."""

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
            ended: TransportClosed | None = await self._peer_closed(msg.data, msg.extra or "")
        else:  # ERROR: aiohttp failed the connection (or the heartbeat did); CLOSED: lost
            await self._linger()
            ended = self._failed(msg.data) if kind is aiohttp.WSMsgType.ERROR else None
        await self._finish()
        raise ended or TransportClosed(None)

    async def _peer_closed(self, code: int, reason: str) -> TransportClosed:
        # code 0: a close frame without one. aiohttp lets 1006 and codes from 5000 up through.
        if code and not valid_close_code(code):
            await self._ws.close(code=CloseCode.PROTOCOL_ERROR)
            text = f"the peer sent the invalid close code {code}"
            violation = ProtocolViolation(CloseCode.PROTOCOL_ERROR, text)
            return TransportClosed(CloseCode.PROTOCOL_ERROR, error=violation)
        await self._ws.close(code=code or CloseCode.NORMAL)  # the answer, unless it answers ours
        return TransportClosed(code or CloseCode.NO_STATUS, reason)

    def _failed(self, exc: BaseException) -> TransportClosed:
        if isinstance(exc, aiohttp.WebSocketError):
            if exc.code == CloseCode.MESSAGE_TOO_BIG:
                return TransportClosed(exc.code, error=MessageTooBigError(self._options.max_size))
            return TransportClosed(exc.code, error=ProtocolViolation(exc.code, str(exc)))
        if isinstance(exc, TimeoutError):  # the heartbeat's pong did not come
            timeout = self._options.keepalive_timeout
            lost = TimeoutError(f"keepalive ping timeout: no pong within {timeout} s")
            return TransportClosed(None, error=lost)
        return TransportClosed(CloseCode.ABNORMAL, error=exc)

    async def _linger(self) -> None:
        """Let a peer that is still sending read the close frame aiohttp failed the connection
        with (see the module): half-close TCP, so that the peer reads it, then EOF, and wait
        for the peer's EOF (at which asyncio closes the transport, as aiohttp's protocols keep
        no connection half-open), ``close_timeout`` at most. TLS cannot half-close."""
        tcp = self._tcp
        if tcp.is_closing() or not tcp.can_write_eof():
            return
        tcp.write_eof()
        try:
            async with asyncio.timeout(self._options.close_timeout):
                while not tcp.is_closing():
                    await asyncio.sleep(PEER_POLL)
        except TimeoutError:
            tcp.abort()

    async def _finish(self) -> None:
        """The connection has ended: close TCP (after what is buffered is written)."""
        self._tcp.close()

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        self._tcp.abort()
