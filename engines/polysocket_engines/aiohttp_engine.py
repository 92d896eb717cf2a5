"""The aiohttp engine: polysocket's default."""

from __future__ import annotations

import asyncio
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
_ABNORMAL = 1006


class AiohttpTransport:
    def __init__(self, session: Any, ws: Any, options: ClientOptions) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = session
        self._ws = ws
        self._max_size = options.max_size
        self._close_task: asyncio.Future[None] | None = None
        self._ended: TransportClosed | None = None
        self.subprotocol: str | None = ws.protocol

    async def send(self, message: Message) -> None:
        if self._ended is not None or self._close_task is not None or self._ws.closed:
            raise TransportClosed(self._ws.close_code)
        try:
            if isinstance(message, str):
                await self._ws.send_str(message)
            else:
                await self._ws.send_bytes(message)
        except (ConnectionError, self._aiohttp.ClientError) as exc:
            raise TransportClosed(None) from exc

    async def receive(self) -> Message:
        if self._ended is not None:
            raise self._ended
        msg = await self._ws.receive()
        kind = msg.type
        WSMsgType = self._aiohttp.WSMsgType
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            return msg.data
        self._ended = await self._ending(msg)
        await self._session.close()
        raise self._ended

    async def _ending(self, msg: Any) -> TransportClosed:
        WSMsgType = self._aiohttp.WSMsgType
        if msg.type is WSMsgType.CLOSE:
            return TransportClosed(msg.data or 1005, msg.extra or "")
        if msg.type is WSMsgType.ERROR:
            exc = msg.data
            code = getattr(exc, "code", None)
            if code == _MESSAGE_TOO_BIG:
                return TransportClosed(code, error=MessageTooBigError(self._max_size))
            return TransportClosed(code if isinstance(code, int) else _ABNORMAL, error=exc)
        # CLOSING / CLOSED: either our own close() is under way, or the connection was lost
        # (aiohttp reports a bare EOF as CLOSED with code 1000, so only trust our own close).
        if self._close_task is not None:
            await asyncio.shield(self._close_task)
            return TransportClosed(self._ws.close_code)
        return TransportClosed(None)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(code, reason))
        await asyncio.shield(self._close_task)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self._ws.close(code=code, message=reason.encode())
        finally:
            await self._session.close()

    def abort(self) -> None:
        # aiohttp has no public abort for a client websocket; closing the response drops
        # the TCP connection without a closing handshake.
        self._ws._response.close()


class AiohttpEngine(Engine):
    name = "aiohttp"
    library = "aiohttp"
    install_hint = "aiohttp"
    capabilities = frozenset({"client", "headers", "subprotocols"})

    async def connect(self, uri: str, options: ClientOptions) -> AiohttpTransport:
        import aiohttp

        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                uri,
                protocols=tuple(options.subprotocols),
                headers=dict(options.headers),
                max_msg_size=options.max_size or 0,
                timeout=aiohttp.ClientWSTimeout(ws_close=options.close_timeout),
                autoclose=True,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await session.close()
            raise ConnectError(
                f"{uri} rejected the WebSocket handshake with HTTP {exc.status}"
                f" ({exc.message}); check the URI path and the server's logs.",
                status=exc.status,
            ) from exc
        except BaseException:
            await session.close()
            raise
        return AiohttpTransport(session, ws, options)


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(AiohttpEngine())
