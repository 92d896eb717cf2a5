"""What both sides share: websockets' sans-I/O protocol and asyncio connection, subclassed,
and the transport over them.

websockets builds the sans-I/O protocol itself inside ``connect()``/``serve()`` and offers no
factory for it, only for the connection (``create_connection``); the connection therefore
turns the protocol it is handed into ours (``__class__``) before any byte reaches it.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from websockets.asyncio.connection import Connection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, PayloadTooBig, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from polysocket.enginekit import CloseCode
from polysocket.transport import (
    ConnectionOptions,
    Message,
    MessageTooBigError,
    TransportClosed,
)

# Looked up once: recv_frame runs for every frame.
TEXT, BINARY, CONT, CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE


class PolysocketProtocol(Protocol):
    """Reassembles a fragmented message before websockets sees it, so that:

    - its message assembler gets one frame per message: it caps a message at 4096 frames
      (``MAX_FRAGMENTS``), a limit next to max_size that no other engine has;
    - a close frame in the middle of a message ends the connection normally (the unfinished
      message is dropped), as RFC 6455 5.4 and 5.5 allow; websockets would fail it with 1002.

    The fragments are bounded by ``max_size`` as a whole here, each one by websockets.
    """

    connection: PolysocketConnection
    max_message: int | None
    message_opcode: Opcode | None = None  # the first frame's, while a message is unfinished
    message_fragments: list[bytes | bytearray | memoryview]
    message_size = 0

    def recv_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if self.message_opcode is None:
            if frame.fin or (opcode is not TEXT and opcode is not BINARY):
                super().recv_frame(frame)  # a stray continuation frame is refused there
                return
            self.message_opcode, self.message_fragments, self.message_size = opcode, [], 0
        elif opcode is not CONT:
            if opcode is TEXT or opcode is BINARY:
                raise ProtocolError("expected a continuation frame")
            if opcode is CLOSE:
                self.message_opcode = None
            super().recv_frame(frame)
            return
        self.message_fragments.append(frame.data)
        self.message_size += len(frame.data)
        if self.max_message is not None and self.message_size > self.max_message:
            raise PayloadTooBig(self.message_size, self.max_message)
        if frame.fin:
            whole = Frame(self.message_opcode, b"".join(self.message_fragments))
            self.message_opcode = None
            super().recv_frame(whole)

    def fail(self, code: int, reason: str = "") -> None:
        sent = self.close_sent
        super().fail(code, reason)
        if self.close_sent is not sent:  # this side failed the connection, not the peer
            self.connection.failing(code)


class PolysocketClientProtocol(PolysocketProtocol, ClientProtocol):
    pass


class PolysocketServerProtocol(PolysocketProtocol, ServerProtocol):
    pass


class PolysocketConnection(Connection):
    """A connection that does not wait for a silent peer.

    - It drops TCP ``close_timeout`` after the closing handshake started, however it started:
      websockets enforces close_timeout only inside its own close(), so after the peer's
      close frame, or after it failed the connection itself, a recv() would wait for as long
      as the peer keeps the socket open.
    - When the keepalive gets no pong within ``ping_timeout``, websockets sends a 1011 close
      frame and then waits close_timeout for a peer that has stopped answering; this drops
      TCP right after that frame, so the transport reports a lost connection at once.
    """

    protocol_class: ClassVar[type[PolysocketProtocol]]

    def __init__(self, protocol: Protocol, *args: Any, max_size: int | None, **kwargs: Any) -> None:
        protocol.__class__ = self.protocol_class
        assert isinstance(protocol, PolysocketProtocol)
        protocol.connection, protocol.max_message = self, max_size
        super().__init__(protocol, *args, **kwargs)
        self.deadline: asyncio.TimerHandle | None = None
        self.failed = False  # this side sent a close frame to fail the connection
        self.keepalive_lost = False

    def failing(self, code: int) -> None:
        self.failed = True
        # websockets fails a connection from its keepalive task only for a missing pong.
        task = self.keepalive_task
        if code == CloseCode.INTERNAL_ERROR and task is not None and task is asyncio.current_task():
            self.keepalive_lost = True
            # The keepalive task writes the close frame as soon as fail() returns.
            asyncio.get_running_loop().call_soon(self.transport.abort)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        timeout = self.close_timeout
        if self.deadline is None and self.protocol.state is State.CLOSING and timeout is not None:
            loop = asyncio.get_running_loop()
            self.deadline = loop.call_later(timeout, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        super().connection_lost(exc)


class WebsocketsTransport:
    """A client or a server connection: the same rules on both sides."""

    def __init__(self, ws: PolysocketConnection, options: ConnectionOptions) -> None:
        self._ws = ws
        self._options = options
        self.subprotocol: str | None = ws.subprotocol

    async def send(self, message: Message) -> None:
        try:
            await self._ws.send(message)  # str as a text message, bytes as binary
        except ConnectionClosed as exc:
            ended = self._ending(exc)
            raise TransportClosed(ended.code, ended.reason) from exc

    async def receive(self) -> Message:
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            raise self._ending(exc) from exc

    def _ending(self, exc: ConnectionClosed) -> TransportClosed:
        """websockets' ConnectionClosed (close frames received and sent) as the contract's."""
        ws, sent = self._ws, exc.sent
        if ws.keepalive_lost:
            timeout = self._options.keepalive_timeout
            return TransportClosed(
                None, error=TimeoutError(f"keepalive ping timeout: no pong within {timeout} s")
            )
        if ws.failed and sent is not None:
            # The peer's answer to that close frame, if any, was discarded (RFC 6455 7.1.7).
            cause = exc.__cause__
            if sent.code == CloseCode.MESSAGE_TOO_BIG:
                size = cause.size if isinstance(cause, PayloadTooBig) else None
                error = MessageTooBigError(self._options.max_size, size)
                return TransportClosed(CloseCode.MESSAGE_TOO_BIG, error=error)
            return TransportClosed(sent.code, error=cause if cause is not None else exc)
        if exc.rcvd is not None:  # websockets parses an empty close frame as 1005 already
            return TransportClosed(exc.rcvd.code, exc.rcvd.reason)
        return TransportClosed(None)

    async def close(self, code: int, reason: str) -> None:
        # Not websockets' close(): it waits for the peer, which is the core's to do.
        ws = self._ws
        if ws.protocol.state is State.OPEN:  # else closing already: receive() tells the end
            ws.protocol.send_close(code, reason)
            ws.send_data()

    def abort(self) -> None:
        self._ws.transport.abort()
