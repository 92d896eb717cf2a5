"""The websockets engine, on the library's asyncio API (``websockets.asyncio.client``)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from polysocket import ConnectError, hookimpl
from polysocket.transport import (
    ClientOptions,
    Engine,
    Message,
    MessageTooBigError,
    TransportClosed,
)

_MESSAGE_TOO_BIG = 1009


class WebsocketsTransport:
    def __init__(self, ws: Any, options: ClientOptions) -> None:
        import websockets.exceptions

        self._exceptions = websockets.exceptions
        self._ws = ws
        self._max_size = options.max_size
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
                    # Nobody may read again: keep reading so close() completes (see _drain).
                    self._start_drain()
        # close() is discarding what is left; wait for the end.
        await asyncio.shield(self._drainer)
        raise self._ended or TransportClosed(None)

    def _end(self, exc: Any) -> TransportClosed:
        if self._ended is None:
            self._ended = self._ending(exc)
        return self._ended

    def _ending(self, exc: Any) -> TransportClosed:
        """Map websockets' ConnectionClosed (close frames received and sent) to the contract."""
        rcvd, sent = exc.rcvd, exc.sent
        echoed = rcvd is not None and exc.rcvd_then_sent and sent == rcvd
        if sent is not None and not self._initiated and not echoed:
            # The library sent a close frame on its own: it failed the connection (a message
            # over max_size, invalid UTF-8, a protocol violation). The peer's answer, if any,
            # was discarded, as RFC 6455 requires.
            cause = exc.__cause__
            if sent.code == _MESSAGE_TOO_BIG:
                return TransportClosed(
                    _MESSAGE_TOO_BIG,
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


def _connect_kwargs(connect: Any) -> dict[str, Any]:
    """Keyword arguments only some supported websockets versions accept."""
    params = inspect.signature(connect).parameters
    # websockets >= 15 honours proxy environment variables by default; aiohttp does not.
    return {"proxy": None} if "proxy" in params else {}


class WebsocketsEngine(Engine):
    name = "websockets"
    library = "websockets"
    install_hint = "polysocket[websockets]"
    capabilities = frozenset({"client", "headers", "subprotocols"})

    async def connect(self, uri: str, options: ClientOptions) -> WebsocketsTransport:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        try:
            ws = await connect(
                uri,
                additional_headers=dict(options.headers) or None,
                subprotocols=list(options.subprotocols) or None,
                max_size=options.max_size or None,
                compression=None,
                open_timeout=None,  # the core bounds connect()
                close_timeout=options.close_timeout,
                ping_interval=None,
                **_connect_kwargs(connect),
            )
        except InvalidStatus as exc:
            response = exc.response
            raise ConnectError(
                f"{uri} rejected the WebSocket handshake with HTTP {response.status_code}"
                f" ({response.reason_phrase}); check the URI path and the server's logs.",
                status=response.status_code,
            ) from exc
        return WebsocketsTransport(ws, options)


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(WebsocketsEngine())
