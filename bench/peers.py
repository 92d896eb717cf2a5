"""The raw servers polysocket is compared with, each a minimal echo in its own library.

    python -m bench.peers aiohttp|websockets|tornado|picows|uvicorn --port PORT

Every one echoes each message as it came (text as text, binary as binary) on any path, and
a text message "go:TOKEN" makes it send "B:TOKEN" to every open connection instead (the
broadcast scenario; websockets with its own ``broadcast()``). It serves until SIGTERM.

``uvicorn`` is a minimal ASGI echo application on a ``uvicorn.Server`` configured as
polysocket's uvicorn engine configures its own (h11, websockets' sans-I/O protocol, no
compression, no access log, the same ping interval and size limit, the asyncio loop that
``polysocket serve`` runs): the asgi-echo scenario compares the two, so that the difference
is polysocket's ASGI adapter and endpoint server, not the server's settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from bench.harness import raise_fd_limit

HOST = "127.0.0.1"


async def aiohttp_server(port: int, stop: asyncio.Event) -> None:
    from aiohttp import WSMsgType, web

    sockets: set[web.WebSocketResponse] = set()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    if msg.data.startswith("go:"):
                        reply = "B:" + msg.data[3:]
                        for other in list(sockets):
                            await other.send_str(reply)
                    else:
                        await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            sockets.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=1024).start()
    await stop.wait()
    await runner.cleanup()


async def websockets_server(port: int, stop: asyncio.Event) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    async def handle(ws: ServerConnection) -> None:
        async for message in ws:
            if isinstance(message, str) and message.startswith("go:"):
                broadcast(server.connections, "B:" + message[3:])
            else:
                await ws.send(message)

    async with serve(handle, HOST, port, compression=None, backlog=1024) as server:
        await stop.wait()


async def tornado_server(port: int, stop: asyncio.Event) -> None:
    from tornado.web import Application
    from tornado.websocket import WebSocketHandler

    sockets: set[WebSocketHandler] = set()

    class Echo(WebSocketHandler):
        def open(self, *args: Any) -> None:
            sockets.add(self)

        def on_message(self, message: str | bytes) -> None:
            if isinstance(message, str) and message.startswith("go:"):
                for other in list(sockets):
                    other.write_message("B:" + message[3:])
            else:
                self.write_message(message, binary=isinstance(message, bytes))

        def on_close(self) -> None:
            sockets.discard(self)

    app = Application([(r"/.*", Echo)], websocket_max_message_size=64 * 1024 * 1024)
    server = app.listen(port, HOST, backlog=1024)
    await stop.wait()
    server.stop()


async def picows_server(port: int, stop: asyncio.Event) -> None:
    from picows import (
        WSCloseCode,
        WSFrame,
        WSListener,
        WSMsgType,
        WSTransport,
        WSUpgradeRequest,
        ws_create_server,
    )

    sockets: set[WSTransport] = set()

    class Echo(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            sockets.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            sockets.discard(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            # The load generators send whole messages in single frames.
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(WSCloseCode.OK)
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data = frame.get_payload_as_bytes()
                if frame.msg_type == WSMsgType.TEXT and data.startswith(b"go:"):
                    reply = b"B:" + data[3:]
                    for other in list(sockets):
                        other.send(WSMsgType.TEXT, reply)
                else:
                    transport.send(frame.msg_type, data)

    def route(request: WSUpgradeRequest) -> Echo:
        return Echo()

    server = await ws_create_server(
        route, HOST, port, max_frame_size=64 * 1024 * 1024, backlog=1024
    )
    await stop.wait()
    server.close()


async def echo_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The minimal ASGI WebSocket echo: accept, send back each message as it came."""
    if scope["type"] != "websocket":
        return  # no lifespan (the server runs with lifespan="off") and no HTTP routes
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            return  # websocket.disconnect
        if event.get("text") is not None:
            await send({"type": "websocket.send", "text": event["text"]})
        else:
            await send({"type": "websocket.send", "bytes": event["bytes"]})


async def uvicorn_server(port: int, stop: asyncio.Event) -> None:
    import uvicorn

    config = uvicorn.Config(
        echo_asgi_app,
        host=HOST,
        port=port,
        lifespan="off",
        http="h11",
        ws="websockets-sansio",
        ws_max_size=16 * 1024 * 1024,  # polysocket's default max_size
        ws_ping_interval=20.0,  # polysocket's default keepalive
        ws_ping_timeout=20.0,
        ws_per_message_deflate=False,
        backlog=2048,  # polysocket's default backlog
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    # started and stopped as the engine does (startup/shutdown, no main loop, our signals)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    await stop.wait()
    await server.shutdown()


SERVERS = {
    "aiohttp": aiohttp_server,
    "websockets": websockets_server,
    "tornado": tornado_server,
    "picows": picows_server,
    "uvicorn": uvicorn_server,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await SERVERS[args.library](args.port, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
