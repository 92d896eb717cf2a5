"""The server: aiohttp's low-level ``web.Server`` on ``enginekit.bind_sockets``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from polysocket.enginekit import answer_headers, bind_sockets, http_request
from polysocket.transport import HttpResponse, ServerApp, ServerOptions

from ._transport import AiohttpTransport, CloseFrameOnly, CountedReader, msg_limit


class ServerWebSocket(CloseFrameOnly, web.WebSocketResponse):
    """aiohttp's server WebSocket whose ``close()`` only sends the close frame."""

    def _post_start(self, request: web.BaseRequest, *args: Any) -> None:
        # aiohttp hands its frame reader to the protocol here, which feeds it the bytes that
        # came with the handshake first: the CountedReader counts them, and all after.
        protocol = request.protocol
        tail = protocol._message_tail
        super()._post_start(request, *args)
        CountedReader.install(protocol, self._reader, tail)


class AiohttpServer:
    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self._app = app
        self._options = options
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        self.port = 0

    async def start(self, host: str, port: int) -> AiohttpServer:
        sockets = bind_sockets(host, port)
        self.port = sockets[0].getsockname()[1]
        await self._runner.setup()
        for sock in sockets:
            await web.SockSite(self._runner, sock, ssl_context=self._options.ssl).start()
        return self

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        tcp = request.transport
        peer = tcp.get_extra_info("peername") if tcp is not None else None
        # request.headers is a multidict: items() has every header line, repeats included
        headers = request.headers.items()
        http = http_request(request.method, request.path, request.query_string, headers, peer)
        decision = self._app.route(http)
        if isinstance(decision, HttpResponse):
            return web.Response(
                status=decision.status, body=decision.body, headers=answer_headers(decision)
            )
        options = self._options
        ws = ServerWebSocket(
            protocols=(decision.subprotocol,) if decision.subprotocol else (),
            max_msg_size=msg_limit(options.max_size),
            autoclose=False,  # the transport answers a close frame, echoing its code
            autoping=False,  # the transport answers pings, and pings (enginekit.Keepalive)
            compress=options.compression is not None,
        )
        if decision.subprotocol:  # aiohttp selects from the first Sec-WebSocket-Protocol line:
            joined = request.headers.copy()  # give it the offer of every line (RFC 6455 11.3.4)
            joined["Sec-WebSocket-Protocol"] = http.headers["sec-websocket-protocol"]
            request = request.clone(headers=joined)
        await ws.prepare(request)  # raises ConnectionResetError when tcp is None
        if tcp is not None:
            await self._app.session(http, AiohttpTransport(ws, tcp, ws.ws_protocol, options))
        return ws
