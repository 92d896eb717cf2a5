"""``polysocket demo``: the Dirigible seed's client example against a local echo peer.

The peer is a plain aiohttp server (not polysocket), so the demo shows a real round trip
on any engine with nothing else installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from . import client as clients
from .runtime import background

if TYPE_CHECKING:  # aiohttp is imported when the demo runs, not when the CLI starts
    from aiohttp import web

SAMPLE_ROOT = Path(__file__).parent / "sample"
log = logging.getLogger("polysocket.demo")


async def _echo(request: web.Request) -> web.WebSocketResponse:
    from aiohttp import WSMsgType, web

    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def start_echo_peer() -> tuple[web.AppRunner, int]:
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/echo", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]  # an IPv4 address: (host, port)
    return runner, port


def run_demo(engine: str | None) -> int:
    import os

    os.environ.setdefault("POLYSOCKET_ROOT", str(SAMPLE_ROOT))
    runner, port = background.run(start_echo_peer(), "demo")
    uri = f"ws://127.0.0.1:{port}/echo"
    log.info("echo peer (plain aiohttp) listening on %s", uri)
    try:
        client = clients.create_websocket(uri, "my-project/ws-handler", engine)
        log.info("connected with engine %s; sending 'hello'", client.engine)
        client.send("hello")
        client.send(b"\x00\x01 binary works too")
        # The peer echoes before it answers our close frame, so both echoes reach onMessage
        # before onClose; close() returns once onClose has run.
        found = clients.get_client_by_handler("my-project/ws-handler")
        assert found is not None, "the client just opened is listed by its handler"
        found.close()
        log.info("open clients now: %s", clients.get_clients())
    finally:
        background.run(runner.cleanup(), "demo")
    return 0 if client.close_code == 1000 else 1
