"""The tornado engine, on ``tornado.websocket.websocket_connect``.

Tornado's client hides how a connection ended: ``read_message()`` just returns ``None``,
``close_code`` is ``None`` both for a lost connection and for an empty close frame, a message
over ``max_message_size`` is answered with a local ``close(1009)`` and a dropped socket that
leave no trace, and ``close()`` is fire-and-forget. This engine watches three points of the
connection's protocol object (its ``close``, its ``_abort`` and the end of its frame loop) to
tell those cases apart and to let ``close()`` wait for the end of the closing handshake.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from polysocket import ConnectError, hookimpl
from polysocket.transport import (
    ClientOptions,
    Engine,
    Message,
    MessageTooBigError,
    TransportClosed,
)

_NO_STATUS = 1005
_ABNORMAL = 1006
_MESSAGE_TOO_BIG = 1009
_NO_HTTP_RESPONSE = 599  # tornado's HTTPClientError code for "no HTTP response" (timeouts, EOF)

# How the frame loop ended without a close frame from the peer (see _on_abort).
_LOST = "lost"
_VIOLATION = "violation"


class TornadoTransport:
    def __init__(self, ws: Any, options: ClientOptions) -> None:
        import tornado.iostream
        import tornado.websocket

        self._websocket = tornado.websocket
        self._closed_errors = (
            tornado.websocket.WebSocketClosedError,
            tornado.iostream.StreamClosedError,
        )
        self._ws = ws
        # ws.close() drops ws.protocol; keep our own reference for the connection's lifetime.
        self._proto = ws.protocol
        self._max_size = options.max_size
        self._close_timeout = options.close_timeout
        self.subprotocol: str | None = ws.selected_subprotocol

        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = False  # close() was called (its close frame is ours, not a failure)
        self._failed_code: int | None = None  # close frame tornado sent on its own (1009)
        self._abort_kind: str | None = None  # None: the peer's close frame ended the loop
        self._receiving = False
        self._drainer: asyncio.Future[None] | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._ended: TransportClosed | None = None

        # websocket_connect() schedules the frame loop before resolving its future, and the
        # loop's first step runs only after connect() resumes; so these hooks are in place
        # before the first frame is read.
        proto = self._proto
        orig_close, orig_abort = proto.close, proto._abort
        orig_conn_closed = ws.on_ws_connection_close

        def close_hook(code: int | None = None, reason: str | None = None) -> None:
            # Neither side has sent a close frame and close() was not called: tornado is
            # failing the connection itself (only ever with 1009, "message too big").
            if not (proto.server_terminated or proto.client_terminated or self._closing):
                self._failed_code = code
            orig_close(code, reason)

        def abort_hook() -> None:
            # _abort() before any close frame arrived: either the stream is already closed
            # (connection lost, abort(), close timeout) or tornado drops a live connection
            # because the peer broke the protocol (bad UTF-8, reserved bits, bad opcode).
            if not proto.client_terminated and self._abort_kind is None:
                live = not proto.server_terminated and not proto.stream.closed()
                self._abort_kind = _VIOLATION if live else _LOST
            orig_abort()

        def conn_closed_hook(
            close_code: int | None = None, close_reason: str | None = None
        ) -> None:
            try:
                orig_conn_closed(close_code, close_reason)  # queues the final None
            finally:
                if ws.protocol is not None:
                    ws.close()  # release it (nothing is sent any more), silences __del__
                if not self._done.done():
                    self._done.set_result(None)

        proto.close = close_hook
        proto._abort = abort_hook
        ws.on_ws_connection_close = conn_closed_hook

    async def send(self, message: Message) -> None:
        if self._ended is not None or self._close_task is not None or self._done.done():
            raise TransportClosed(self._ended.code if self._ended is not None else None)
        if isinstance(message, str):
            data: str | bytes = message
            binary = False
        else:
            data = bytes(message)  # tornado accepts str or bytes only
            binary = True
        try:
            # The future resolves once the frame is written out: tornado's flow control.
            await self._ws.write_message(data, binary=binary)
        except self._closed_errors as exc:
            code = self._ended.code if self._ended is not None else None
            raise TransportClosed(code) from exc

    async def receive(self) -> Message:
        if self._ended is not None:
            raise self._ended
        if self._drainer is None:
            msg: Message | None = None
            self._receiving = True
            try:
                msg = await self._ws.read_message()
            finally:
                self._receiving = False
                if self._closing and not self._done.done():
                    # Nobody may read again: keep the frame loop going so close() completes.
                    self._start_drain()
            if msg is not None:
                return msg
        # None (the loop has ended), or close() is discarding what is left.
        await asyncio.shield(self._done)
        self._ended = self._ending()
        raise self._ended

    def _ending(self) -> TransportClosed:
        if self._failed_code == _MESSAGE_TOO_BIG:
            return TransportClosed(_MESSAGE_TOO_BIG, error=MessageTooBigError(self._max_size))
        if self._failed_code is not None:
            return TransportClosed(
                self._failed_code,
                error=self._websocket.WebSocketError(
                    f"tornado failed the connection with close code {self._failed_code}"
                ),
            )
        if self._abort_kind == _VIOLATION:
            return TransportClosed(
                _ABNORMAL,
                error=self._websocket.WebSocketError(
                    "the server violated the WebSocket protocol (e.g. invalid UTF-8 in a text"
                    " message or a malformed frame); tornado dropped the connection"
                ),
            )
        if self._abort_kind is None:
            code = self._proto.close_code
            return TransportClosed(
                _NO_STATUS if code is None else code, self._proto.close_reason or ""
            )
        return TransportClosed(None)

    def _start_drain(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        # tornado's read queue holds one message and its frame loop waits for room before it
        # reads the next frame, so unread messages would hide the peer's close frame.
        while True:
            msg = await self._ws.read_message()
            if msg is None:
                self._ws.read_queue.put_nowait(None)  # leave the end marker in place
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(code, reason))
        await asyncio.shield(self._close_task)

    async def _close(self, code: int, reason: str) -> None:
        self._closing = True
        try:
            if self._done.done():
                return
            # Sends the close frame (unless one was sent already); not awaitable.
            self._ws.close(code, reason)
            if not self._receiving:
                self._start_drain()
            try:
                await asyncio.wait_for(asyncio.shield(self._done), self._close_timeout)
            except TimeoutError:
                self.abort()
                self._start_drain()
                await asyncio.shield(self._done)
        finally:
            if self._drainer is not None and not self._drainer.done():
                self._drainer.cancel()

    def abort(self) -> None:
        # Closing the stream fails the frame loop's pending read: it ends at once.
        self._proto.stream.close()


class TornadoEngine(Engine):
    name = "tornado"
    library = "tornado"
    install_hint = "polysocket[tornado]"
    capabilities = frozenset({"client", "headers", "subprotocols"})

    async def connect(self, uri: str, options: ClientOptions) -> TornadoTransport:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(
            uri,
            headers=dict(options.headers),
            # The core bounds connect(); these only make tornado drop an attempt the core
            # has given up on instead of letting it linger.
            connect_timeout=options.open_timeout,
            request_timeout=options.open_timeout,
        )
        try:
            ws = await websocket_connect(
                request,
                subprotocols=list(options.subprotocols) or None,
                max_message_size=options.max_size or sys.maxsize,
                ping_interval=None,
            )
        except HTTPClientError as exc:
            if exc.code == _NO_HTTP_RESPONSE:
                raise
            raise ConnectError(
                f"{uri} rejected the WebSocket handshake with HTTP {exc.code}"
                f" ({exc.message}); check the URI path and the server's logs.",
                status=exc.code,
            ) from exc
        # No await between here and the hooks in TornadoTransport (see its __init__).
        return TornadoTransport(ws, options)


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(TornadoEngine())
