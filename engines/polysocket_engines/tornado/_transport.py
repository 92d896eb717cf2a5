"""One tornado connection, client or server, as a polysocket transport; and the client.

Where tornado is lenient, :class:`StrictProtocol` follows RFC 6455: tornado drops TCP on a broken
frame or bad UTF-8 and echoes any close frame, where the connection must be failed with a close
frame (1002, 1007). After failing (also with tornado's own 1009) only the peer's EOF is read,
close_timeout at most: a reset while the peer still sends can destroy our close frame unread.
"""

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.netutil import DefaultLoopResolver, Resolver
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketProtocol13

from polysocket import ConnectError
from polysocket import enginekit as kit
from polysocket.enginekit import CloseCode, Keepalive, valid_close_code
from polysocket.transport import (
    ClientOptions,
    ConnectionOptions,
    MessageTooBigError,
    ProtocolViolation,
    TransportClosed,
)


class StrictProtocol(WebSocketProtocol13):
    """tornado's protocol object, strict where tornado is lenient (see the module)."""

    close_timeout = 10.0
    closing = False  # the core's close(): our close frame fails nothing
    #: How the connection ended, unless the peer's close frame says it: failed, lost.
    outcome: TransportClosed | None = None
    decoding_text = False  # tornado's one _abort() inside a text message is for bad UTF-8
    keepalive: Keepalive | None = None
    fragments = 0  # frames read since the fragmented message in progress began

    def fail(self, code: int, text: str) -> None:
        self.outcome = TransportClosed(code, error=ProtocolViolation(code, text))
        self.close(code)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()  # a close frame sent or received: close_timeout bounds it
        waiting = self._waiting
        super().close(code, reason)
        if waiting is None and self._waiting is not None:
            # tornado's 5 s wait for the peer's close frame, just set: close_timeout bounds it
            # instead (the core's close(), or _receive_frame after a failure). Left set, but
            # cancelled, so that tornado sets no other.
            self.stream.io_loop.remove_timeout(self._waiting)

    def _abort(self) -> None:
        stream = self.stream
        if stream is not None and not (stream.closed() or self.client_terminated):
            if not self.server_terminated:  # a broken frame: tornado would just drop TCP
                if self.decoding_text:
                    self.fail(CloseCode.INVALID_DATA, "the peer sent text that is not UTF-8")
                else:
                    self.fail(CloseCode.PROTOCOL_ERROR, "the peer sent a broken frame")
            elif not (self.closing or self.outcome):  # tornado's close(1009) comes first
                error = MessageTooBigError(self.params.max_message_size)
                self.outcome = TransportClosed(CloseCode.MESSAGE_TOO_BIG, error=error)
            if self.outcome is not None:  # failed: the frame loop reads on, to the peer's EOF
                return
        if self.outcome is None and not self.client_terminated:
            self.outcome = TransportClosed(None)  # no close frame came
        if self.keepalive is not None:  # else it would ping a dead stream up to an interval on
            self.keepalive.stop()
        super()._abort()

    def _handle_message(self, opcode: int, data: bytes) -> asyncio.Future[None] | None:
        if opcode == 0x8 and not self.client_terminated:  # tornado would echo it as it is
            if len(data) == 1 or (len(data) > 1 and not valid_close_code(int.from_bytes(data[:2]))):
                self.fail(CloseCode.PROTOCOL_ERROR, f"the peer's close frame is invalid: {data!r}")
                return None
            try:
                data[2:].decode()
            except UnicodeDecodeError:
                self.fail(CloseCode.INVALID_DATA, "the peer's close reason is not UTF-8")
                return None
        self.decoding_text = opcode == 0x1
        try:
            return super()._handle_message(opcode, data)
        finally:
            self.decoding_text = False

    async def _receive_frame(self) -> None:
        if self.outcome is None:
            await super()._receive_frame()
            fragmented = self._fragmented_message_buffer is not None
            self.fragments = self.fragments + 1 if fragmented else 0
            if self.fragments > kit.MAX_FRAGMENTS and self.outcome is None:  # tornado has none
                code = CloseCode.MESSAGE_TOO_BIG
                self.outcome = TransportClosed(code, error=kit.too_many_fragments())
                self.close(code, kit.FRAGMENTS_REASON)
            return
        stream = self.stream  # failed: our close frame is the last frame either way
        stream.io_loop.call_later(self.close_timeout, stream.close)  # the peer may never close
        await stream.write(b"")  # resolves once our close frame is out
        if isinstance(stream, SSLIOStream):
            stream.close()  # TLS cannot half-close: waiting would only end at the timer
        else:
            with contextlib.suppress(OSError):
                stream.socket.shutdown(socket.SHUT_WR)  # EOF: the peer closes its side
        while True:  # until EOF, whose StreamClosedError ends tornado's frame loop
            await stream.read_bytes(65536, partial=True)


class Mailbox:
    """The hand-off from tornado's frame loop to ``receive()``: one unread message, and one
    more whose ``put()`` future the frame loop awaits before it reads the next frame (what
    ``tornado.queues.Queue(1)`` did with three deques and an Event: 2.5 KiB per connection).
    """

    __slots__ = ("_getter", "_items", "_room")

    def __init__(self) -> None:
        self._items: list[str | bytes | None] = []
        self._getter: asyncio.Future[None] | None = None  # receive() waiting for a message
        self._room: asyncio.Future[None] | None = None  # put() waiting for the first to go

    def full(self) -> bool:
        """A message is unread (the core has stopped receiving: a backlog)."""
        return bool(self._items)

    def put(self, item: str | bytes | None) -> asyncio.Future[None] | None:
        self._items.append(item)
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():  # else receive() was cancelled
                getter.set_result(None)
        if len(self._items) == 1:
            return None
        if self._room is None:
            self._room = asyncio.get_running_loop().create_future()
        return self._room

    async def get(self) -> str | bytes | None:
        while not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            await self._getter
        item = self._items.pop(0)
        room = self._room
        if room is not None and len(self._items) <= 1:
            self._room = None
            if not room.done():
                room.set_result(None)
        return item


class TornadoTransport:
    """The engine contract on one connection (see :mod:`polysocket.transport`)."""

    proto: StrictProtocol

    def __init__(self, options: ConnectionOptions) -> None:
        self.subprotocol: str | None = None
        # Unread messages: one, and one more waiting in put(), whose pending future tornado's
        # frame loop awaits before it reads the next frame. The core bounds its own queue in
        # bytes (max_queue); more here would be up to max_size each, on top of it.
        self.queue = Mailbox()
        self.options = options

    def attach(self, proto: StrictProtocol) -> StrictProtocol:
        proto.close_timeout = self.options.close_timeout
        self.proto = proto
        return proto

    def open(self) -> None:  # the handshake is complete
        self.subprotocol = self.proto.selected_subprotocol
        ping = lambda: self.proto.write_ping(b"")  # noqa: E731  # buffered at once, no waiting
        self.proto.keepalive = Keepalive.start(self.options, ping, self._lost, self.queue.full)

    async def send(self, message: str | bytes) -> None:
        if self.proto.server_terminated:  # failed: no frame may follow our close frame
            raise TransportClosed(None)
        try:  # resolves once the frame is written out: tornado's flow control
            await self.proto.write_message(message, binary=not isinstance(message, str))
        except WebSocketClosedError as exc:
            raise TransportClosed(None) from exc

    async def receive(self) -> str | bytes:
        message = await self.queue.get()
        if message is None:  # the end (see Delegate)
            proto = self.proto
            code = CloseCode.NO_STATUS if proto.close_code is None else proto.close_code
            raise proto.outcome or TransportClosed(code, proto.close_reason or "")
        return message

    async def close(self, code: int, reason: str) -> None:
        self.proto.closing = True
        self.proto.close(code, reason)
        with contextlib.suppress(StreamClosedError):
            await self.proto.stream.write(b"")  # resolves once our close frame is out

    def abort(self) -> None:
        self.proto.stream.close()  # the frame loop's pending read fails: it ends

    def _lost(self, error: TimeoutError) -> None:
        self.proto.outcome = TransportClosed(None, error=error)
        self.abort()


class Delegate:
    """The calls tornado's frame loop makes on its handler, the same on both sides; the
    handler puts ``None`` in the queue when the loop has ended."""

    transport: TornadoTransport

    def on_message(self, message: str | bytes) -> asyncio.Future[None] | None:
        return self.transport.queue.put(message)

    def on_pong(self, data: bytes) -> None:
        if self.transport.proto.keepalive is not None:
            self.transport.proto.keepalive.pong()


class LiteralResolver(Resolver):
    """tornado's resolver, but an IP address is its own answer.

    tornado resolves every host with ``loop.getaddrinfo``, which asyncio runs on its thread
    pool even for ``127.0.0.1``: a hand-off to a pool thread and back on every connect, which
    aiohttp, websockets and picows skip for a literal address. Names still go to it.
    """

    _names: Resolver

    def initialize(self) -> None:
        self._names = DefaultLoopResolver()

    async def _by_name(
        self, host: str, port: int, family: socket.AddressFamily
    ) -> list[tuple[int, Any]]:
        found: list[tuple[int, Any]] = await self._names.resolve(host, port, family)
        return found

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:  # a name (or something getaddrinfo is to judge)
            return await self._by_name(host, port, family)
        if "%" in host:  # a scoped IPv6 address: getaddrinfo knows the interface's number
            return await self._by_name(host, port, family)
        if address.version == 4 and family in (socket.AF_UNSPEC, socket.AF_INET):
            return [(socket.AF_INET, (host, port))]
        if address.version == 6 and family in (socket.AF_UNSPEC, socket.AF_INET6):
            return [(socket.AF_INET6, (host, port, 0, 0))]
        return await self._by_name(host, port, family)  # its error for the mismatch


class TunnelClient(TCPClient):
    """tornado's TCP client for one socket the core has connected already (a proxy's
    tunnel): ``connect()`` wraps it in an ``IOStream``, after TLS for ``wss://``."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    async def connect(
        self,
        host: str,
        port: int,
        af: socket.AddressFamily = socket.AF_UNSPEC,
        ssl_options: dict[str, Any] | ssl.SSLContext | None = None,
        max_buffer_size: int | None = None,
        source_ip: str | None = None,
        source_port: int | None = None,
        timeout: float | datetime.timedelta | None = None,
    ) -> IOStream:
        stream = IOStream(self.sock, max_buffer_size=max_buffer_size)
        if ssl_options is None:
            return stream
        return await stream.start_tls(False, ssl_options=ssl_options, server_hostname=host)


class ClientConnection(Delegate, WebSocketClientConnection):
    """What ``websocket_connect()`` builds, with our protocol object: it takes no class."""

    _tcp_client: TCPClient
    _tunnel: TunnelClient | None = None

    def __init__(self, request: HTTPRequest, options: ClientOptions) -> None:
        self.transport = TornadoTransport(options)
        if options.sock is not None:
            self._tunnel = TunnelClient(options.sock)
        super().__init__(
            request,
            compression_options={} if options.compression == "deflate" else None,  # {}: offer
            max_message_size=options.max_size or sys.maxsize,
            subprotocols=list(options.subprotocols) or None,
            resolver=LiteralResolver(),
        )

    # tornado builds its TCPClient inside __init__ and connects with it in a task of its own:
    # a property, so that the tunnel is used however soon that task runs.
    @property
    def tcp_client(self) -> TCPClient:
        return self._tunnel or self._tcp_client

    @tcp_client.setter
    def tcp_client(self, client: TCPClient) -> None:
        self._tcp_client = client

    def get_websocket_protocol(self) -> StrictProtocol:
        return self.transport.attach(StrictProtocol(self, True, self.params))

    def on_ws_connection_close(self, code: int | None = None, reason: str | None = None) -> None:
        super().on_ws_connection_close(code, reason)
        self.protocol = None  # over: tornado's __del__ warns about a connection that has one
        self.transport.queue.put(None)


async def connect(uri: str, options: ClientOptions) -> TornadoTransport:
    request = HTTPRequest(
        uri,
        headers=HTTPHeaders(options.headers),
        # The core bounds connect(); these make tornado drop an attempt the core gave up on.
        connect_timeout=options.open_timeout,
        request_timeout=options.open_timeout,
        # None: tornado's default context for wss:// (system CAs, hostname checked)
        ssl_options=options.ssl if urlsplit(uri).scheme == "wss" else None,
        validate_cert=True,  # these two: websocket_connect()'s (HTTPRequest's own are None)
        decompress_response=True,
        follow_redirects=False,  # the core follows redirects (tornado forces it off too)
    )
    connection = ClientConnection(request, options)
    try:
        await connection.connect_future
    except HTTPClientError as exc:
        if exc.code == 599:  # tornado's code for "no HTTP response" (timeouts, EOF)
            raise
        answer = exc.response  # with the headers: the core follows a redirect to its Location
        location = answer.headers.get("Location") if answer is not None else None
        raise ConnectError.rejected(uri, exc.code, exc.message, location=location) from exc
    connection.transport.open()
    return connection.transport
