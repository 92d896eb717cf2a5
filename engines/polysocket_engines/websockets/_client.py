"""The client side: ``websockets.asyncio.client.connect`` with polysocket's connection."""

from __future__ import annotations

import inspect
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from polysocket import ConnectError
from polysocket.transport import ClientOptions

from ._transport import (
    PolysocketClientProtocol,
    PolysocketConnection,
    WebsocketsTransport,
    library_options,
)


class PolysocketClientConnection(PolysocketConnection, ClientConnection):
    protocol_class = PolysocketClientProtocol


async def open_connection(uri: str, options: ClientOptions) -> WebsocketsTransport:
    extra = library_options(PolysocketClientConnection, options)
    if "proxy" in inspect.signature(connect).parameters:
        extra["proxy"] = None  # websockets >= 15 honours proxy variables; aiohttp does not
    if options.ssl is not None and urlsplit(uri).scheme == "wss":
        extra["ssl"] = options.ssl  # for wss:// only, where websockets has its default
    try:
        ws = await connect(
            uri,
            additional_headers=dict(options.headers) or None,
            subprotocols=[Subprotocol(p) for p in options.subprotocols] or None,
            open_timeout=None,  # the core bounds connect()
            **extra,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise ConnectError.rejected(uri, response.status_code, response.reason_phrase) from exc
    assert isinstance(ws, PolysocketClientConnection)
    return WebsocketsTransport(ws, options)
