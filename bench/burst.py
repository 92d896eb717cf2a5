"""A burst of connections: ``--conns`` WebSocket handshakes, ``--step`` at a time.

    python -m bench.burst URI --conns 2000 --step 200

Says "done" with the seconds it took and how many handshakes got their 101. Plain asyncio
streams with a fixed handshake: what is measured is the server's accepting, not a client.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import urlsplit

from bench.harness import emit, raise_fd_limit


async def handshake(host: str, port: int, path: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    return writer


async def burst(uri: str, conns: int, step: int) -> None:
    parts = urlsplit(uri)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    opened: list[asyncio.StreamWriter] = []
    start = time.perf_counter()
    for first in range(0, conns, step):
        batch = (handshake(host, port, parts.path) for _ in range(min(step, conns - first)))
        opened += await asyncio.gather(*batch)
    elapsed = time.perf_counter() - start
    for writer in opened:
        writer.close()
    emit("done", elapsed=elapsed, opened=len(opened))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri")
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--step", type=int, default=200)
    args = parser.parse_args()
    raise_fd_limit()
    asyncio.run(burst(args.uri, args.conns, args.step))


if __name__ == "__main__":
    main()
