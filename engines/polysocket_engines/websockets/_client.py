"""The client side: ``websockets.asyncio.client.connect`` with polysocket's connection."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from polysocket import ConnectError
from polysocket.transport import ClientOptions

from ._transport import PolysocketClientProtocol, PolysocketConnection, WebsocketsTransport


class PolysocketClientConnection(PolysocketConnection, ClientConnection):
    protocol_class = PolysocketClientProtocol


def _connect_kwargs() -> dict[str, Any]:
    """Keyword arguments only some supported websockets versions accept."""
    params = inspect.signature(ws_connect).parameters
    # websockets >= 15 honours proxy environment variables by default; aiohttp does not.
    return {"proxy": None} if "proxy" in params else {}


async def connect(uri: str, options: ClientOptions) -> WebsocketsTransport:
    extra = _connect_kwargs()
    if options.ssl is not None and urlsplit(uri).scheme == "wss":
        # Otherwise websockets uses ssl.create_default_context() for wss:// (and refuses an
        # ssl argument with a ws:// URI).
        extra["ssl"] = options.ssl
    max_size = options.max_size or None
    try:
        ws = await ws_connect(
            uri,
            additional_headers=dict(options.headers) or None,
            subprotocols=[Subprotocol(p) for p in options.subprotocols] or None,
            max_size=max_size,
            compression="deflate" if options.compression == "deflate" else None,
            open_timeout=None,  # the core bounds connect()
            close_timeout=options.close_timeout,
            ping_interval=options.ping_interval,
            ping_timeout=options.keepalive_timeout,
            # A "factory for the ClientConnection" in websockets' docs, typed as a class.
            create_connection=partial(  # type: ignore[arg-type]
                PolysocketClientConnection, max_size=max_size
            ),
            **extra,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise ConnectError.rejected(uri, response.status_code, response.reason_phrase) from exc
    assert isinstance(ws, PolysocketClientConnection)
    return WebsocketsTransport(ws, options)
