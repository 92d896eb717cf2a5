"""websockets' sans-I/O protocol and asyncio connection, subclassed for both sides, and the
transport over them. websockets builds the protocol inside ``connect()``/``serve()`` and takes
no factory for it: the connection makes it ours (``__class__``) before a byte reaches it."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, PayloadTooBig, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State

from polysocket import enginekit as kit
from polysocket.enginekit import CloseCode, Keepalive
from polysocket.transport import ConnectionOptions, Message, MessageTooBigError, TransportClosed

#: websockets' max_queue (see shared_options).
MAX_QUEUE = 2

TEXT, BINARY, CONT, CLOSE, PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE, Opcode.PONG


class TooManyFragments(PayloadTooBig):  # websockets fails the connection with 1009 for it
    def __str__(self) -> str:
        return kit.FRAGMENTS_REASON


class PolysocketProtocol(Protocol):
    """Reassembles a fragmented message (max_size bounds it whole, MAX_FRAGMENTS its frames)
    before websockets sees it: its assembler caps a message at 4096 frames, where every
    engine takes MAX_FRAGMENTS; and a close frame in the middle of a message just drops it
    (RFC 6455 5.4) where websockets fails."""

    connection: PolysocketConnection
    max_message: int | None
    unfinished: Opcode | None = None  # the first frame's opcode of a fragmented message
    fragments: list[bytes | bytearray | memoryview]
    size = 0

    def recv_frame(self, frame: Frame) -> None:
        opcode, unfinished = frame.opcode, self.unfinished
        if opcode is CONT and unfinished is not None:
            self.fragments.append(frame.data)
            self.size += len(frame.data)
            if self.max_message is not None and self.size > self.max_message:
                raise PayloadTooBig(self.size, self.max_message)
            if len(self.fragments) > kit.MAX_FRAGMENTS:
                # the flag, not the exception: websockets before 15 does not chain it
                self.connection.too_many_fragments = True
                raise TooManyFragments(None, kit.MAX_FRAGMENTS)
            if frame.fin:
                self.unfinished = None
                super().recv_frame(Frame(unfinished, b"".join(self.fragments)))
        elif opcode is TEXT or opcode is BINARY:
            if unfinished is not None:
                raise ProtocolError("expected a continuation frame")
            if frame.fin:
                super().recv_frame(frame)
            else:
                self.unfinished, self.fragments, self.size = opcode, [frame.data], len(frame.data)
        else:  # control frames, and continuation frames websockets refuses
            if opcode is CLOSE:
                self.unfinished = None
            elif opcode is PONG and self.connection.pinger is not None:
                self.connection.pinger.pong()
            super().recv_frame(frame)

    def fail(self, code: int, reason: str = "") -> None:
        sent = self.close_sent
        super().fail(code, reason)
        if self.close_sent is not sent:  # else the connection was ending already
            self.connection.failed = True


class PolysocketConnection(Connection):
    """websockets enforces close_timeout only inside its own close(): this drops TCP
    ``close_timeout`` after the closing handshake started however it did (the peer's close
    frame, a failure). The keepalive is ``enginekit.Keepalive``: websockets' own awaits the
    write buffer's drain before its pong wait starts, so it never fires while a peer that
    stopped reading keeps that buffer full."""

    protocol_class: ClassVar[type[PolysocketProtocol]]
    deadline: asyncio.TimerHandle | None = None
    pinger: Keepalive | None = None
    failed = False  # this side failed the connection
    too_many_fragments = False  # ... for a message in more than MAX_FRAGMENTS frames
    lost_pong: TimeoutError | None = None

    def __init__(self, protocol: Protocol, *args: Any, max_size: int | None, **kwargs: Any) -> None:
        protocol.__class__ = self.protocol_class
        assert isinstance(protocol, PolysocketProtocol)
        protocol.connection, protocol.max_message = self, max_size
        super().__init__(protocol, *args, **kwargs)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        timeout = self.close_timeout  # aborting a closed connection does nothing
        if self.deadline is None and self.protocol.state is State.CLOSING and timeout is not None:
            self.deadline = asyncio.get_running_loop().call_later(timeout, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pinger is not None:
            self.pinger.stop()
        super().connection_lost(exc)

    def start_pinger(self, options: ConnectionOptions) -> None:
        """A missing pong sends 1011 (if it ever leaves) and drops TCP."""
        paused = lambda: not self.transport.is_reading()  # noqa: E731
        self.pinger = Keepalive.start(options, self.ping_now, self.lost, paused)

    def ping_now(self) -> None:
        self.protocol.send_ping(b"")  # raises once closed: the keepalive stops
        self.send_data()  # no drain(): the ping goes behind whatever is buffered

    def lost(self, error: TimeoutError) -> None:
        if self.protocol.state is State.OPEN:  # else closing already: close_timeout bounds it
            self.lost_pong = error
            self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self.send_data()
            asyncio.get_running_loop().call_soon(self.transport.abort)  # after the frame


class PolysocketClientProtocol(PolysocketProtocol, ClientProtocol): ...


class PolysocketClientConnection(PolysocketConnection, ClientConnection):
    protocol_class = PolysocketClientProtocol


def shared_options(
    connection: type[PolysocketConnection], options: ConnectionOptions, **extra: Any
) -> dict[str, Any]:
    """What ``connect()`` and ``serve()`` take alike. websockets' docs call
    ``create_connection`` a factory, though its type says class."""
    max_size = options.max_size or None
    return dict(
        create_connection=partial(connection, max_size=max_size, **extra),
        max_size=max_size,
        # Unread messages (frames: PolysocketProtocol hands websockets whole messages) before
        # it stops reading the socket: websockets' 16 would be 16 x max_size on top of the
        # core's own queue, which max_queue bounds in bytes. Reading resumes when it is empty.
        max_queue=MAX_QUEUE,
        compression="deflate" if options.compression == "deflate" else None,
        ping_interval=None,  # PolysocketConnection.start_pinger instead
        ping_timeout=None,
        close_timeout=options.close_timeout,
    )


class WebsocketsTransport:
    """A client or a server connection: the same rules on both sides."""

    def __init__(self, ws: PolysocketConnection, options: ConnectionOptions) -> None:
        self._ws, self._options = ws, options
        self.subprotocol: str | None = ws.subprotocol
        ws.start_pinger(options)

    async def send(self, message: Message) -> None:
        try:
            await self._ws.send(message)  # str as a text message, bytes as binary
        except ConnectionClosed as exc:
            raise self._ending(exc) from exc

    async def receive(self) -> Message:
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            raise self._ending(exc) from exc

    def _ending(self, exc: ConnectionClosed) -> TransportClosed:
        sent, cause, options = exc.sent, exc.__cause__, self._options
        if self._ws.lost_pong is not None:
            return TransportClosed(None, error=self._ws.lost_pong)
        if self._ws.failed and sent is not None:  # the peer's answer, if any, was discarded
            if self._ws.too_many_fragments:
                cause = kit.too_many_fragments()
            elif sent.code == CloseCode.MESSAGE_TOO_BIG:
                size = cause.size if isinstance(cause, PayloadTooBig) else None
                cause = MessageTooBigError(options.max_size, size)
            return TransportClosed(sent.code, error=cause or exc)
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
