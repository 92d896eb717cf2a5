"""polysocket's picows engine: ``engine="picows"``.

A separate distribution, found like any third-party engine through its entry point
(``[project.entry-points."polysocket.engines"] picows = "polysocket_picows"``). picows is
imported inside ``connect``/``serve`` only, so that ``polysocket engines`` can say what to
install when it is missing.

- client: ``picows.ws_connect`` with a listener that turns frames into messages
  (``_transport``); headers go in ``extra_headers``, the offered subprotocols in a
  ``Sec-WebSocket-Protocol`` header, and the server's choice is checked against them.
- server: an HTTP front that asks ``app.route`` for every request and hands accepted
  connections to picows' server protocol (``_server`` says why not ``ws_create_server``).
- tls: ``ssl_context`` (client, ``wss://`` only) and the listening sockets' ``ssl``.
- proxy: the core's tunnel (``ClientOptions.sock``) through picows' ``socket_factory``.
- keepalive: ``enginekit.Keepalive`` (see ``_transport``).
- no ``deflate``: picows has no permessage-deflate.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from polysocket import ConnectError, hookimpl
from polysocket.transport import (
    CAPABILITIES,
    ClientOptions,
    Engine,
    Server,
    ServerApp,
    ServerOptions,
    Transport,
)

if TYPE_CHECKING:
    from picows import WSHandshakeError, WSListener, WSUpgradeRequest, WSUpgradeResponse

__all__ = ["PRIVATE_API", "PicowsEngine", "polysocket_register_engines"]

#: What of picows this engine uses beyond its documented API (checked on picows 2.3.0, the
#: minimum in pyproject.toml, and 2.3.1).
PRIVATE_API: dict[str, str] = {
    "picows.picows.WSProtocol": (
        "the server protocol ws_create_server builds, built by _server (with keywords, so a"
        " changed signature fails loudly) to take over a connection whose request the HTTP"
        " front has read: connection_made, then get_buffer/buffer_updated with the request"
    ),
}


class PicowsEngine(Engine):
    name = "picows"
    library = "picows"
    install_hint = "polysocket-picows"
    capabilities = CAPABILITIES - {"deflate"}  # picows has no permessage-deflate

    async def connect(self, uri: str, options: ClientOptions) -> Transport:
        from picows import WSHandshakeError, ws_connect

        from ._transport import PicowsTransport, frame_limit

        transport = PicowsTransport(options, client=True)
        answered: list[bool] = []  # the 101 came (picows returns from ws_connect without one
        offered = tuple(options.subprotocols)  # when the server closes before answering)
        headers = dict(options.headers)
        if offered:
            headers["Sec-WebSocket-Protocol"] = ", ".join(offered)

        def listener_factory(request: WSUpgradeRequest, response: WSUpgradeResponse) -> WSListener:
            # Called by picows once the 101 response is parsed, before on_ws_connected.
            # (Raising TypeError here would make picows retry without arguments.)
            selected = response.headers.get("Sec-WebSocket-Protocol")
            if selected is not None and selected not in offered:
                raise ConnectError(
                    f"{uri} selected the subprotocol {selected!r}, which was not offered"
                    f" (offered: {', '.join(offered) or 'none'}); check the server"
                )
            if response.headers.get("Sec-WebSocket-Extensions"):
                raise ConnectError(
                    f"{uri} accepted a WebSocket extension that was not offered"
                    f" ({response.headers['Sec-WebSocket-Extensions']}); check the server"
                )
            transport.subprotocol = selected
            answered.append(True)
            return transport.listener

        try:
            await ws_connect(
                listener_factory,
                uri,
                ssl_context=options.ssl,  # used for wss:// only; None: system CAs
                disconnect_on_exception=True,
                # The core bounds connect() by open_timeout; this makes picows drop a
                # handshake the core has given up on.
                websocket_handshake_timeout=options.open_timeout,
                enable_auto_ping=False,  # the transport's own keepalive
                enable_auto_pong=True,
                max_frame_size=frame_limit(options.max_size),
                extra_headers=headers or None,
                max_redirects=0,  # the core follows redirects, by one rule for every engine
                # the proxy's tunnel: picows runs TLS over it (server_hostname: the URI's)
                socket_factory=None if options.sock is None else lambda _url: options.sock,
            )
        except WSHandshakeError as exc:
            status, phrase = _status_of(exc)
            if status is not None and status != 101:
                location = (
                    exc.response.headers.get("Location") if exc.response is not None else None
                )
                raise ConnectError.rejected(uri, status, phrase, location=location) from exc
            raise
        except asyncio.CancelledError:
            # open_timeout: if the handshake still completes, nobody will use the connection
            transport.abandon()
            raise
        if not answered:
            raise ConnectionResetError(
                errno.ECONNRESET, "the connection closed before the server answered the handshake"
            )
        return transport

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Server:
        from ._server import PicowsServer

        server = PicowsServer(app, options)
        await server.start(host, port)
        return server


def _status_of(exc: WSHandshakeError) -> tuple[int | None, str]:
    """The status of a refused handshake, also one picows' HTTPStatus does not know (499)."""
    response = exc.response
    if response is not None:
        return int(response.status), response.status.phrase
    line = (exc.raw_header or b"").split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = line.partition(" ")
    code, _, phrase = rest.partition(" ")
    if version.startswith("HTTP/") and len(code) == 3 and code.isdigit():
        return int(code), phrase.strip()
    return None, ""


@hookimpl
def polysocket_register_engines(register: Callable[[Engine], None]) -> None:
    register(PicowsEngine())
