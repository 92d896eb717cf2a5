"""The websockets engine, ``engine="websockets"``, on the library's asyncio API: ``connect``
here, ``serve`` on each socket of ``enginekit.bind_sockets`` (``_server``), and the protocol
and connection subclasses both sides share (``_transport``). ``compression="deflate"`` is
websockets' own, the keepalive ``enginekit.Keepalive``. websockets is imported inside
``connect``/``serve`` only, so that ``polysocket engines`` can say what to install when it
is missing."""

from __future__ import annotations

import functools
from typing import Any

from polysocket import ConnectError, hookimpl
from polysocket.transport import CAPABILITIES, ClientOptions, Engine, ServerApp, ServerOptions

from .. import private_api

PRIVATE_API = private_api.WEBSOCKETS


@functools.cache
def _takes_proxy(connect: Any) -> bool:
    """Whether websockets' ``connect`` has ``proxy=`` (15 and later); asked once: reading its
    signature took about 40 us of every connect, some 5% of a local open+close's CPU."""
    import inspect

    return "proxy" in inspect.signature(connect).parameters


@functools.cache
def _single_request(connect: Any) -> Any:
    """websockets' ``connect`` that reports a redirect (``InvalidStatus``) instead of
    following it: the core follows redirects, by one rule for every engine."""

    class SingleRequest(connect):  # type: ignore[misc]
        def process_redirect(self, exc: Exception) -> Exception:
            return exc

    return SingleRequest


class WebsocketsEngine(Engine):
    name = "websockets"
    library = "websockets"
    install_hint = "polysocket[websockets]"
    capabilities = CAPABILITIES

    async def connect(self, uri: str, options: ClientOptions) -> Any:
        from urllib.parse import urlsplit

        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus
        from websockets.typing import Subprotocol

        from ._transport import PolysocketClientConnection, WebsocketsTransport, shared_options

        extra = shared_options(PolysocketClientConnection, options)
        if _takes_proxy(connect):
            extra["proxy"] = None  # websockets >= 15 reads proxy variables: the core does that
        if options.sock is not None:
            extra["sock"] = options.sock  # the proxy's tunnel (websockets does TLS over it)
        if options.ssl is not None and urlsplit(uri).scheme == "wss":
            extra["ssl"] = options.ssl  # wss:// only: websockets refuses ssl for ws://
        try:
            ws = await _single_request(connect)(
                uri,
                additional_headers=dict(options.headers) or None,
                subprotocols=[Subprotocol(p) for p in options.subprotocols] or None,
                open_timeout=None,  # the core bounds connect()
                **extra,
            )
        except InvalidStatus as exc:
            response = exc.response
            raise ConnectError.rejected(
                uri,
                response.status_code,
                response.reason_phrase,
                location=response.headers.get("Location"),
            ) from exc
        assert isinstance(ws, PolysocketClientConnection)
        return WebsocketsTransport(ws, options)

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Any:
        from ._server import WebsocketsServer

        server = WebsocketsServer(app, options)
        await server.start(host, port)
        return server


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(WebsocketsEngine())
