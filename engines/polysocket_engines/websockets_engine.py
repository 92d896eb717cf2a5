"""The websockets engine, on the library's asyncio API (``websockets.asyncio.client`` and
``websockets.asyncio.server``). One transport class serves both sides: a server connection has
the same ``recv``/``send``/``close`` API as a client one.

The common options map onto the library's own: ``ssl`` (client: for ``wss://`` URIs only),
``compression="deflate"``, and ``ping_interval``/``ping_timeout`` (websockets' keepalive, whose
timeout the transport reports as a lost connection; see ``_polysocket_connection``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any
from urllib.parse import urlsplit

from polysocket import ConnectError, hookimpl
from polysocket.enginekit import (
    CloseCode,
    answer_fields,
    answer_payload,
    answer_reason,
    bind_sockets,
    http_request,
)
from polysocket.transport import (
    Accept,
    ClientOptions,
    Engine,
    HttpRequest,
    HttpResponse,
    Message,
    MessageTooBigError,
    ServerApp,
    ServerOptions,
    TransportClosed,
)

_log = logging.getLogger(__name__)


class WebsocketsTransport:
    """A client ``ClientConnection`` or a server ``ServerConnection``, same rules on both sides."""

    def __init__(self, ws: Any, options: ClientOptions | ServerOptions) -> None:
        import websockets.exceptions

        self._exceptions = websockets.exceptions
        self._ws = ws
        self._max_size = options.max_size
        self._keepalive_timeout = options.keepalive_timeout
        self._close_task: asyncio.Future[None] | None = None
        # True once close() sent the close frame itself (rather than finding one already sent
        # because the library failed the connection, or because it echoed the peer's).
        self._initiated = False
        self._ended: TransportClosed | None = None
        self._receiving = False
        self._drainer: asyncio.Future[None] | None = None
        self.subprotocol: str | None = ws.subprotocol

    async def send(self, message: Message) -> None:
        if self._ended is not None or self._close_task is not None:
            raise TransportClosed(self._ended.code if self._ended is not None else None)
        try:
            # str is sent as a text message, bytes-like (bytes, bytearray, memoryview) as binary.
            await self._ws.send(message)
        except self._exceptions.ConnectionClosed as exc:
            ended = self._end(exc)
            raise TransportClosed(ended.code, ended.reason) from exc

    async def receive(self) -> Message:
        if self._ended is not None:
            raise self._ended
        if self._drainer is None:
            self._receiving = True
            try:
                return await self._ws.recv()
            except self._exceptions.ConnectionClosed as exc:
                raise self._end(exc) from exc
            finally:
                self._receiving = False
                if self._close_task is not None and self._ended is None:
                    # A reader that goes on reading gets every message up to the peer's close
                    # frame; if none calls again, keep reading so close() completes (_drain).
                    asyncio.get_running_loop().call_soon(self._drain_if_idle)
        # close() is discarding what is left; wait for the end.
        await asyncio.shield(self._drainer)
        raise self._ended or TransportClosed(None)

    def _drain_if_idle(self) -> None:
        if not self._receiving and self._ended is None:
            self._start_drain()

    def _end(self, exc: Any) -> TransportClosed:
        if self._ended is None:
            self._ended = self._ending(exc)
        return self._ended

    def _ending(self, exc: Any) -> TransportClosed:
        """Map websockets' ConnectionClosed (close frames received and sent) to the contract."""
        if self._ws.polysocket_keepalive_failed:
            # No pong within ping_timeout: websockets sent 1011 "keepalive ping timeout" and
            # the connection was dropped; the peer is gone, as far as this side can tell.
            return TransportClosed(
                None,
                error=TimeoutError(
                    f"keepalive ping timeout: no pong within {self._keepalive_timeout} s"
                ),
            )
        rcvd, sent = exc.rcvd, exc.sent
        echoed = rcvd is not None and exc.rcvd_then_sent and sent == rcvd
        if sent is not None and not self._initiated and not echoed:
            # The library sent a close frame on its own: it failed the connection (a message
            # over max_size, invalid UTF-8, a protocol violation). The peer's answer, if any,
            # was discarded, as RFC 6455 requires.
            cause = exc.__cause__
            if sent.code == CloseCode.MESSAGE_TOO_BIG:
                return TransportClosed(
                    CloseCode.MESSAGE_TOO_BIG,
                    error=MessageTooBigError(self._max_size, self._message_size(cause)),
                )
            return TransportClosed(int(sent.code), error=cause if cause is not None else exc)
        if rcvd is not None:
            # The peer's close frame: closing on its own, or echoing ours after close(). Empty
            # close frames are parsed by websockets as 1005 already.
            return TransportClosed(int(rcvd.code), rcvd.reason)
        return TransportClosed(None)

    def _message_size(self, cause: BaseException | None) -> int | None:
        if isinstance(cause, self._exceptions.PayloadTooBig):
            size = getattr(cause, "size", None)
            if size is not None:
                return int(size) + int(getattr(cause, "current_size", None) or 0)
        return None

    def _start_drain(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        # Past max_queue unread frames websockets stops reading from the socket, so unread
        # messages would hide the peer's close frame and close() would wait close_timeout.
        try:
            while True:
                await self._ws.recv()
        except self._exceptions.ConnectionClosed as exc:
            self._end(exc)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(code, reason))
        await asyncio.shield(self._close_task)

    async def _close(self, code: int, reason: str) -> None:
        self._initiated = self._ws.protocol.close_sent is None
        if not self._receiving:
            self._start_drain()
        # Runs the closing handshake, bounded by close_timeout (then aborts the TCP connection);
        # a pending recv() raises ConnectionClosed once the connection is closed.
        await self._ws.close(code, reason)

    def abort(self) -> None:
        self._ws.transport.abort()


def _polysocket_connection(base: type, close_timeout: float) -> Any:
    """``base`` (a websockets connection class) that does not wait for a silent peer.

    - It drops TCP ``close_timeout`` after the closing handshake started, however it started.
      websockets enforces close_timeout only inside close(): after the peer's close frame, or
      after the library itself failed the connection (a protocol error), a recv() would wait
      for as long as the peer keeps the socket open.
    - A close frame in the middle of a fragmented message ends the connection normally (the
      unfinished message is dropped), as RFC 6455 5.4 and 5.5 allow; websockets fails such
      a connection with 1002 "incomplete fragmented message".
    - A fragmented message reaches websockets' message assembler as one frame: the assembler
      caps a message at 4096 frames (``MAX_FRAGMENTS``), a limit next to max_size that no
      other engine has and only an environment variable changes; the protocol layer already
      bounds the whole message by max_size.
    - When the keepalive gets no pong within ``ping_timeout``, websockets sends a 1011 close
      frame and then waits up to close_timeout for a peer that has stopped answering; this
      drops TCP right after that close frame and flags the connection, so the transport
      reports a lost connection at once.
    """
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State

    continuation, close_frame = Opcode.CONT, Opcode.CLOSE  # looked up once: per-frame code
    base_process_event = base.process_event

    class PolysocketConnection(base):  # type: ignore[valid-type, misc]
        polysocket_deadline: asyncio.TimerHandle | None = None
        polysocket_keepalive_failed = False
        # The message being reassembled: its first frame's opcode and its fragments' data.
        polysocket_opcode: Any = None
        polysocket_fragments: list[bytes] | None = None

        def process_event(self, event: Any) -> None:
            # Runs for every frame: kept to two checks for an unfragmented message. The
            # protocol has checked the order of the fragments (and decompressed them), and
            # control frames are never fragmented.
            if event.__class__ is Frame:
                if event.opcode is continuation:
                    fragments = self.polysocket_fragments
                    assert fragments is not None
                    fragments.append(event.data)
                    if not event.fin:
                        return
                    self.polysocket_fragments = None
                    event = Frame(self.polysocket_opcode, b"".join(fragments))
                elif not event.fin:
                    self.polysocket_opcode = event.opcode
                    self.polysocket_fragments = [event.data]
                    return
            base_process_event(self, event)

        def __init__(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(protocol, *args, **kwargs)
            fail = protocol.fail

            def fail_hook(code: int, reason: str = "") -> None:
                fail(code, reason)
                # websockets >= 13 fails the connection from its keepalive task only when the
                # pong did not come in time (with 1011 "keepalive ping timeout").
                task = self.keepalive_task
                if (
                    code == CloseCode.INTERNAL_ERROR
                    and task is not None
                    and task is asyncio.current_task()
                    and not self.polysocket_keepalive_failed
                ):
                    self.polysocket_keepalive_failed = True
                    # After the close frame fail() queued is written out (the keepalive task
                    # writes it as soon as this returns).
                    self.loop.call_soon(self.transport.abort)

            protocol.fail = fail_hook
            recv_frame = protocol.recv_frame
            # The size of the message being received; None between messages (< 15: cur_size).
            size = "current_size" if hasattr(protocol, "current_size") else "cur_size"

            def recv_frame_hook(frame: Any) -> None:
                if frame.opcode is close_frame:
                    setattr(protocol, size, None)  # drop the unfinished message, if any
                    self.polysocket_fragments = None
                recv_frame(frame)

            protocol.recv_frame = recv_frame_hook

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.polysocket_deadline is None and self.protocol.state is State.CLOSING:
                self.polysocket_deadline = asyncio.get_running_loop().call_later(
                    close_timeout, self.transport.abort
                )

        def connection_lost(self, exc: Exception | None) -> None:
            if self.polysocket_deadline is not None:
                self.polysocket_deadline.cancel()
            super().connection_lost(exc)

    return PolysocketConnection


def _connect_kwargs(connect: Any) -> dict[str, Any]:
    """Keyword arguments only some supported websockets versions accept."""
    params = inspect.signature(connect).parameters
    # websockets >= 15 honours proxy environment variables by default; aiohttp does not.
    return {"proxy": None} if "proxy" in params else {}


# --- server side ---------------------------------------------------------------------------


def _response(answer: HttpResponse, method: str) -> Any:
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    return Response(
        answer.status,
        answer_reason(answer),
        Headers(answer_fields(answer)),
        answer_payload(answer, method),
    )


class WebsocketsServer:
    """One websockets server per listening socket (see ``enginekit.bind_sockets``)."""

    def __init__(
        self, servers: list[Any], connections: set[Any], port: int, close_timeout: float
    ) -> None:
        self._servers = servers
        self._connections = connections
        self._close_timeout = close_timeout
        self.port = port

    async def close(self) -> None:
        for server in self._servers:
            server.server.close()  # stop listening; closes the listening socket
        # The core has closed the sessions; drop whatever is left (half-done handshakes,
        # plain HTTP requests, sessions the core did not close).
        for connection in list(self._connections):
            connection.transport.abort()
        tasks: set[asyncio.Task[None]] = set()
        for server in self._servers:
            # websockets >= 14: handler_tasks (a set); 13: handlers (connection -> task)
            handlers = getattr(server, "handler_tasks", None)
            tasks.update(handlers if handlers is not None else server.handlers.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
        for server in self._servers:
            server.close(close_connections=False)
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.gather(*(server.wait_closed() for server in self._servers))
        except TimeoutError:
            _log.warning("websockets server did not finish closing in %ss", self._close_timeout)


class WebsocketsEngine(Engine):
    name = "websockets"
    library = "websockets"
    install_hint = "polysocket[websockets]"
    capabilities = frozenset(
        {"client", "server", "headers", "subprotocols", "tls", "deflate", "keepalive"}
    )

    async def connect(self, uri: str, options: ClientOptions) -> WebsocketsTransport:
        from websockets.asyncio.client import ClientConnection, connect
        from websockets.exceptions import InvalidStatus

        extra = _connect_kwargs(connect)
        if options.ssl is not None and urlsplit(uri).scheme == "wss":
            # Otherwise websockets uses ssl.create_default_context() for wss:// (and refuses
            # an ssl argument with a ws:// URI).
            extra["ssl"] = options.ssl
        try:
            ws = await connect(
                uri,
                additional_headers=dict(options.headers) or None,
                subprotocols=list(options.subprotocols) or None,
                max_size=options.max_size or None,
                compression="deflate" if options.compression == "deflate" else None,
                open_timeout=None,  # the core bounds connect()
                close_timeout=options.close_timeout,
                ping_interval=options.ping_interval,
                ping_timeout=options.keepalive_timeout,
                create_connection=_polysocket_connection(ClientConnection, options.close_timeout),
                **extra,
            )
        except InvalidStatus as exc:
            response = exc.response
            raise ConnectError.rejected(uri, response.status_code, response.reason_phrase) from exc
        return WebsocketsTransport(ws, options)

    async def serve(
        self, host: str, port: int, app: ServerApp, options: ServerOptions
    ) -> WebsocketsServer:
        from websockets.asyncio.server import ServerConnection, serve
        from websockets.http11 import SERVER
        from websockets.protocol import State

        connections: set[Any] = set()

        class Connection(_polysocket_connection(ServerConnection, options.close_timeout)):
            """Tracks every TCP connection (``Server.close`` drops them) and carries the
            core's decision from ``process_request`` to ``select_subprotocol`` and the handler.
            """

            polysocket_request: HttpRequest | None = None
            polysocket_subprotocol: str | None = None

            def connection_made(self, transport: Any) -> None:
                connections.add(self)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                connections.discard(self)
                super().connection_lost(exc)

        def process_request(connection: Connection, request: Any) -> Any:
            # Called for every request, upgrade or not: websockets parses any GET (and any
            # method without a body, in recent versions) before deciding on the handshake.
            method = getattr(request, "method", "GET")
            path, _, query = request.path.partition("?")
            incoming = http_request(
                method, path, query, request.headers.raw_items(), connection.remote_address
            )
            connection.polysocket_request = incoming
            decision = app.route(incoming)
            if isinstance(decision, Accept):
                connection.polysocket_subprotocol = decision.subprotocol
                return None  # websockets validates the upgrade request and completes it
            return _response(decision, method)

        def process_response(connection: Connection, request: Any, response: Any) -> None:
            # server_header=None: the core's own Server header (if any) is not duplicated.
            if "Server" not in response.headers:
                response.headers["Server"] = SERVER

        def select_subprotocol(connection: Connection, offered: Any) -> str | None:
            return connection.polysocket_subprotocol

        async def handler(connection: Connection) -> None:
            if connection.protocol.state is not State.OPEN or connection.polysocket_request is None:
                return  # websockets 13 calls the handler after an HTTP answer as well
            transport = WebsocketsTransport(connection, options)
            # app.session() returns with the connection closed.
            await app.session(connection.polysocket_request, transport)

        sockets = bind_sockets(host, port)
        servers: list[Any] = []
        try:
            for sock in sockets:
                servers.append(
                    await serve(
                        handler,
                        sock=sock,
                        create_connection=Connection,
                        process_request=process_request,
                        process_response=process_response,
                        server_header=None,
                        select_subprotocol=select_subprotocol,
                        max_size=options.max_size or None,
                        # accepted when the client offers it; never offered otherwise
                        compression="deflate" if options.compression == "deflate" else None,
                        ping_interval=options.ping_interval,
                        ping_timeout=options.keepalive_timeout,
                        close_timeout=options.close_timeout,
                        ssl=options.ssl,
                    )
                )
        except BaseException:
            for server in servers:
                server.close()
            for sock in sockets:
                sock.close()
            raise
        return WebsocketsServer(
            servers, connections, sockets[0].getsockname()[1], options.close_timeout
        )


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(WebsocketsEngine())
