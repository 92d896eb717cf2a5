"""websockets' sans-I/O protocol and asyncio connection, subclassed for both sides, and the
transport over them. websockets builds the protocol inside ``connect()``/``serve()`` with no
factory to pass (only ``create_connection``): the connection makes it ours (``__class__``)
before any byte reaches it."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, ClassVar

from websockets.asyncio.connection import Connection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, PayloadTooBig, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from polysocket.enginekit import CloseCode
from polysocket.transport import ConnectionOptions, Message, MessageTooBigError, TransportClosed

TEXT, BINARY, CONT, CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE  # per frame


class PolysocketProtocol(Protocol):
    """Reassembles each fragmented message (bounded by max_size as a whole) before websockets
    sees it: its assembler caps a message at 4096 frames (``MAX_FRAGMENTS``), a limit no
    other engine has; and a close frame in the middle of a message ends the connection
    normally, dropping the message (RFC 6455 5.4, 5.5), where websockets would fail it."""

    connection: PolysocketConnection
    max_message: int | None
    message_opcode: Opcode | None = None  # while a fragmented message is unfinished
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
        if self.close_sent is not sent:  # this side failed the connection
            self.connection.failing(code)


class PolysocketClientProtocol(PolysocketProtocol, ClientProtocol):
    pass


class PolysocketServerProtocol(PolysocketProtocol, ServerProtocol):
    pass


class PolysocketConnection(Connection):
    """websockets enforces close_timeout only inside its own close(): this drops TCP
    ``close_timeout`` after the closing handshake started however it did (the peer's close
    frame, a failure), and right after the close frame of a keepalive timeout, so that
    neither waits for a peer that stopped answering."""

    protocol_class: ClassVar[type[PolysocketProtocol]]

    def __init__(self, protocol: Protocol, *args: Any, max_size: int | None, **kwargs: Any) -> None:
        protocol.__class__ = self.protocol_class
        assert isinstance(protocol, PolysocketProtocol)
        protocol.connection, protocol.max_message = self, max_size
        super().__init__(protocol, *args, **kwargs)
        self.deadline: asyncio.TimerHandle | None = None
        self.failed = self.keepalive_lost = False

    def failing(self, code: int) -> None:
        self.failed = True
        task = self.keepalive_task  # which fails a connection only for a missing pong
        if code == CloseCode.INTERNAL_ERROR and task is not None and task is asyncio.current_task():
            self.keepalive_lost = True
            asyncio.get_running_loop().call_soon(self.transport.abort)  # after the close frame

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        timeout = self.close_timeout
        if self.deadline is None and self.protocol.state is State.CLOSING and timeout is not None:
            self.deadline = asyncio.get_running_loop().call_later(timeout, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        super().connection_lost(exc)


def library_options(
    connection: type[PolysocketConnection], options: ConnectionOptions, **extra: Any
) -> dict[str, Any]:
    """The options of ``connect()`` and ``serve()`` that are the same on both sides."""
    max_size = options.max_size or None
    return dict(
        # A "factory for the connection" in websockets' docs, though typed as a class.
        create_connection=partial(connection, max_size=max_size, **extra),
        max_size=max_size,
        compression="deflate" if options.compression == "deflate" else None,
        ping_interval=options.ping_interval,
        ping_timeout=options.keepalive_timeout,
        close_timeout=options.close_timeout,
    )


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
        sent, cause = exc.sent, exc.__cause__
        if self._ws.keepalive_lost:
            timeout = self._options.keepalive_timeout
            lost = TimeoutError(f"keepalive ping timeout: no pong within {timeout} s")
            return TransportClosed(None, error=lost)
        if self._ws.failed and sent is not None:  # the peer's answer, if any, was discarded
            if sent.code != CloseCode.MESSAGE_TOO_BIG:
                return TransportClosed(sent.code, error=cause or exc)
            size = cause.size if isinstance(cause, PayloadTooBig) else None
            return TransportClosed(
                sent.code, error=MessageTooBigError(self._options.max_size, size)
            )
        if exc.rcvd is not None:  # websockets parses an empty close frame as 1005 already
            return TransportClosed(exc.rcvd.code, exc.rcvd.reason)
        return TransportClosed(None)

    async def close(self, code: int, reason: str) -> None:
        # Not websockets' close(), which waits for the peer: the core does that.
        if self._ws.protocol.state is State.OPEN:  # else closing already: receive() tells
            self._ws.protocol.send_close(code, reason)
            self._ws.send_data()

    def abort(self) -> None:
        self._ws.transport.abort()
