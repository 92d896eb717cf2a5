"""A bounded soak: 200 clients with random traffic against ``polysocket serve`` (nox -s soak).

    python reliability/soak.py [--engine aiohttp] [--seconds 60] [--clients 200] [--json]

The bundled sample is served in a subprocess. Each client connects again and again to the echo
endpoint or the chat, sends random messages at random intervals (echo: up to 64 KiB; chat:
up to 1 KiB, less often), reads them slowly if it drew a slow reader (a pause of 0.2-1 s
before each frame), and leaves after 2-15 s, with a closing handshake or by dropping the TCP
connection. At the end it reports messages sent and received, sessions the server closed
(by close code: 1008/1013 are the ones closed for slowness), handshake and other errors, and
the server's RSS at the start and the end (after the clients left).

Exit status: 1 if the server died or its end RSS is not below start + ``--rss-bound`` MiB
(200 by default: far above what 200 small sessions need, far below a leak's growth over a
minute); 2 if the harness itself failed; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import time
from typing import Any

from harness import (
    BINARY,
    CLOSE,
    MIB,
    PING,
    PONG,
    SERVICE,
    TEXT,
    HarnessError,
    ServeProcess,
    aconnect_ws,
    aread_frame,
    close_code,
    close_frame,
    frame,
    mib,
    size,
)

ECHO = SERVICE + "my-endpoint"
CHAT = SERVICE + "chat"
#: After the deadline, how long the clients get to finish (then they are cancelled).
GRACE = 10.0
#: A write the server does not take within this long counts as a send timeout.
SEND_TIMEOUT = 10.0
#: Close codes the server uses for a session too slow to keep up (issue 9).
SLOW_CODES = {1008, 1013}


class Stats:
    def __init__(self) -> None:
        self.sessions = 0
        self.sent = 0
        self.received = 0
        self.closed_by_server: collections.Counter[int | None] = collections.Counter()
        self.handshake_errors = 0
        self.send_timeouts = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.slow_sessions = 0
        self.aborted = 0


async def client(port: int, until: float, stats: Stats, rng: random.Random) -> None:
    while time.monotonic() < until:
        chat = rng.random() < 0.4
        slow = rng.random() < 0.2
        try:
            reader, writer = await aconnect_ws(port, CHAT if chat else ECHO, timeout=10)
        except HarnessError:
            stats.handshake_errors += 1
            await asyncio.sleep(rng.uniform(0.5, 2))
            continue
        stats.sessions += 1
        stats.slow_sessions += slow
        ended, closing = asyncio.Event(), asyncio.Event()
        reading = asyncio.create_task(_read(reader, writer, slow, ended, closing, stats, rng))
        try:
            await _talk(writer, chat, ended, until, stats, rng)
            if ended.is_set():
                pass  # the server closed it; _read answered
            elif rng.random() < 0.3:
                stats.aborted += 1
                writer.transport.abort()
            else:
                closing.set()  # the close frame that answers ours is not the server's doing
                writer.write(close_frame(1000))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), 5)
        except (OSError, ConnectionError) as exc:
            stats.errors[type(exc).__name__] += 1
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
            writer.close()
        await asyncio.sleep(rng.uniform(0, 1))


async def _talk(
    writer: asyncio.StreamWriter,
    chat: bool,
    ended: asyncio.Event,
    until: float,
    stats: Stats,
    rng: random.Random,
) -> None:
    leave = min(until, time.monotonic() + rng.uniform(2, 15))
    while time.monotonic() < leave and not ended.is_set():
        length = rng.randint(1, 1024 if chat else 64 * 1024)
        writer.write(frame(TEXT, b"s" * length))
        try:
            await asyncio.wait_for(writer.drain(), SEND_TIMEOUT)
        except TimeoutError:
            stats.send_timeouts += 1
            return
        stats.sent += 1
        await asyncio.sleep(rng.uniform(0.5, 3) if chat else rng.uniform(0.05, 0.5))


async def _read(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    slow: bool,
    ended: asyncio.Event,
    closing: asyncio.Event,
    stats: Stats,
    rng: random.Random,
) -> None:
    try:
        while True:
            if slow:
                await asyncio.sleep(rng.uniform(0.2, 1))
            opcode, _, payload = await aread_frame(reader)
            if opcode == CLOSE:
                code = close_code(payload)
                if not closing.is_set():
                    stats.closed_by_server[code] += 1
                with contextlib.suppress(OSError):
                    writer.write(close_frame(code or 1000))
                return
            if opcode == PING:  # answered, as every client library does
                writer.write(frame(PONG, payload))
            elif opcode in (TEXT, BINARY):
                stats.received += 1
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the connection ended: counted by the side that ended it
    finally:
        ended.set()


async def soak(server: ServeProcess, seconds: float, clients: int, seed: int) -> Stats:
    stats = Stats()
    until = time.monotonic() + seconds
    rng = random.Random(seed)
    tasks = [
        asyncio.create_task(client(server.port, until, stats, random.Random(rng.random())))
        for _ in range(clients)
    ]
    done, pending = await asyncio.wait(tasks, timeout=seconds + GRACE)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            stats.errors[f"client crashed: {task.exception()!r}"] += 1
    stats.errors["clients still busy at the end (cancelled)"] += len(pending)
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="aiohttp")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rss-bound", type=float, default=200, help="MiB over the start")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        server = ServeProcess(args.engine)
    except HarnessError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    with server:
        server.rss.begin()
        began = time.monotonic()
        stats = asyncio.run(soak(server, args.seconds, args.clients, args.seed))
        took = time.monotonic() - began
        alive = server.alive
        if alive:
            time.sleep(2)  # what the server still holds once everyone left
        server.rss.end()
        exit_code, exit_seconds = server.terminate()
    rss = server.rss
    bound = rss.start + int(args.rss_bound * MIB)
    problems = []
    if not alive:
        problems.append(f"the server died (exit code {server.process.returncode})")
    if rss.capped_at is not None:
        problems.append(f"the server passed 2 GiB at t={rss.capped_at:.1f} s and was killed")
    elif rss.end_rss is None or rss.end_rss >= bound:
        problems.append(f"end RSS {mib(rss.end_rss)} is not below start + {args.rss_bound:.0f} MiB")
    report: dict[str, Any] = {
        "engine": args.engine,
        "clients": args.clients,
        "seconds": round(took, 1),
        "sessions": stats.sessions,
        "slow_reader_sessions": stats.slow_sessions,
        "aborted_by_client": stats.aborted,
        "messages_sent": stats.sent,
        "messages_received": stats.received,
        "closed_by_server": {str(code): n for code, n in stats.closed_by_server.items()},
        "closed_for_slowness": sum(stats.closed_by_server[c] for c in SLOW_CODES),
        "handshake_errors": stats.handshake_errors,
        "send_timeouts": stats.send_timeouts,
        "errors": {k: v for k, v in stats.errors.items() if v},
        "rss_start": rss.start,
        "rss_peak": rss.peak,
        "rss_end": rss.end_rss,
        "rss_bound": bound,
        "log_bytes": server.log_bytes,
        "server_exit": {"code": exit_code, "seconds": round(exit_seconds, 1)},
        "problems": problems,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"soak on {args.engine}: {args.clients} clients, {took:.0f} s, {stats.sessions}"
            f" sessions ({stats.slow_sessions} slow readers, {stats.aborted} dropped by the"
            f" client)\n"
            f"  messages sent {stats.sent}, received {stats.received}\n"
            f"  closed by the server: {report['closed_by_server'] or 'none'}"
            f" ({report['closed_for_slowness']} for slowness)\n"
            f"  handshake errors {stats.handshake_errors}, send timeouts"
            f" {stats.send_timeouts}, other errors {report['errors'] or 'none'}\n"
            f"  server RSS start {mib(rss.start)}, peak {mib(rss.peak)}, end"
            f" {mib(rss.end_rss)} (bound {mib(bound)}); log {size(server.log_bytes)};"
            f" SIGTERM exit {exit_code} in {exit_seconds:.1f} s"
        )
    for problem in problems:
        print(f"SOAK FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
