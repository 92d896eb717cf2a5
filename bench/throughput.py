"""Echo throughput: polysocket (sync and asyncio API) against the raw library, same run.

    python bench/throughput.py [--messages 50000] [--size 64] [--engines aiohttp,websockets]

Each row sends N messages of SIZE bytes to a plain aiohttp echo server (its own process) and
waits for all N echoes; it reports messages/s and the ratio to the raw library's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import polysocket


async def raw_aiohttp(uri: str, payload: str, count: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(uri) as ws:
        received = asyncio.create_task(_count(ws.receive, count))
        for _ in range(count):
            await ws.send_str(payload)
        await received


async def raw_websockets(uri: str, payload: str, count: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(uri, compression=None) as ws:
        received = asyncio.create_task(_count(ws.recv, count))
        for _ in range(count):
            await ws.send(payload)
        await received


async def raw_tornado(uri: str, payload: str, count: int) -> None:
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(uri)
    received = asyncio.create_task(_count(ws.read_message, count))
    for _ in range(count):
        await ws.write_message(payload)
    await received
    ws.close()


async def _count(receive, count: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(count):
        await receive()


RAW = {"aiohttp": raw_aiohttp, "websockets": raw_websockets, "tornado": raw_tornado}


def polysocket_sync(uri: str, engine: str, payload: str, count: int) -> None:
    done = threading.Event()
    seen = 0

    def onMessage(message: str) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    handler = type("Counter", (), {"onMessage": staticmethod(onMessage)})
    client = polysocket.createWebsocket(uri, handler, engine)
    for _ in range(count):
        client.send(payload)
    if not done.wait(120):
        raise RuntimeError(f"only {seen} of {count} echoes arrived")
    client.close()


async def polysocket_async(uri: str, engine: str, payload: str, count: int) -> None:
    async with polysocket.connect(uri, engine=engine) as ws:
        received = asyncio.create_task(_count(ws.recv, count))
        for _ in range(count):
            await ws.send(payload)
        await received


def timed(run) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--engines", default="aiohttp,websockets,tornado")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("echo_server.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        uri = f"ws://127.0.0.1:{server.stdout.readline().strip()}/echo"  # type: ignore[union-attr]
        payload, count = "x" * args.size, args.messages
        print(f"{count} echoed messages of {args.size} bytes, best of {args.repeat}")
        print(f"{'engine':<11} {'variant':<18} {'msg/s':>10} {'vs raw':>7}")
        for engine in args.engines.split(","):
            runs = {
                "raw " + engine: lambda e=engine: asyncio.run(RAW[e](uri, payload, count)),
                "polysocket sync": lambda e=engine: polysocket_sync(uri, e, payload, count),
                "polysocket asyncio": lambda e=engine: asyncio.run(
                    polysocket_async(uri, e, payload, count)
                ),
            }
            raw_rate = None
            for variant, run in runs.items():
                best = min(timed(run) for _ in range(args.repeat))
                rate = count / best
                raw_rate = raw_rate or rate
                print(f"{engine:<11} {variant:<18} {rate:>10,.0f} {rate / raw_rate:>7.2f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
