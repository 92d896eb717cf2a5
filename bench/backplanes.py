"""What a backplane link costs: throughput and round-trip latency, per broker.

    python -m bench.backplanes                      # every backplane it can start a broker for
    python -m bench.backplanes --backplanes nats --messages 20000

For each backplane, a private broker on a free port (``nats-server``, ``redis-server``), then in
one process (one event loop, as a polysocket node runs them):

- throughput: one link publishes ``--messages`` messages of ``--size`` bytes to one channel,
  another link subscribed to it reads them; the time from the first publish to the last
  delivery, and the time the publish loop took alone; then the same through
  ``publish_many`` in batches of ``--batch`` (what the cluster does with its queue);
- flushed (NATS only): the same for ``--flushed`` messages with a PING/PONG after each
  publish, what "wait until the server has it" would cost per message;
- latency: ``--round-trips`` times, publish one message and wait until the other link has
  it; p50, p99 and the worst.

Not a timed test: figures depend on the machine. Results go to stdout (``--json`` for JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from polysocket_conformance.backplane_link_suite import running
from polysocket_conformance.cluster_suite.support import Broker

from polysocket.backplane import BackplaneLink
from polysocket.plugins import registry

#: name -> (program, command template, URL template).
BROKERS = {
    "nats": ("nats-server", "{program} -a 127.0.0.1 -p {{port}}", "nats://127.0.0.1:{port}"),
    "redis": (
        "redis-server",
        "{program} --port {{port}} --bind 127.0.0.1 --save '' --appendonly no",
        "redis://127.0.0.1:{port}/0",
    ),
}
CHANNEL = "bench:backplane"


@dataclass
class Figures:
    backplane: str
    library: str | None
    messages: int
    size: int
    publish_seconds: float
    delivered_seconds: float
    delivered: int
    messages_per_second: float
    batch: int
    batched_delivered_seconds: float
    batched_messages_per_second: float
    flushed_messages: int | None
    flushed_per_second: float | None
    round_trips: int
    latency_p50_us: float
    latency_p99_us: float
    latency_max_us: float


def _program(name: str) -> str | None:
    # Debian installs the brokers in /usr/sbin, not on a non-root user's PATH.
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin")


@contextmanager
def broker(name: str) -> Iterator[str]:
    program, command, url = BROKERS[name]
    found = _program(program)
    if found is None:
        raise RuntimeError(f"{program} not found: install it (Debian package {program})")
    with (
        tempfile.TemporaryDirectory(prefix="bench-backplanes-") as logs,
        running(Broker(command.format(program=found), url, Path(logs))) as started,
    ):
        yield started.url


async def _pair(url: str) -> tuple[BackplaneLink, BackplaneLink]:
    backplane = registry.backplane(url)
    subscriber = await backplane.connect(url, timeout=5)
    publisher = await backplane.connect(url, timeout=5)
    await subscriber.subscribe([CHANNEL])
    return subscriber, publisher


async def throughput(
    url: str, messages: int, size: int, batch: int = 1
) -> tuple[float, float, int]:
    """Publish ``messages`` (``batch`` at a time through publish_many when above 1, as the
    cluster hands its queue over); seconds to publish, seconds to the last delivery, and
    how many were delivered."""
    subscriber, publisher = await _pair(url)
    payload = os.urandom(size)
    try:
        done = asyncio.Event()
        count = 0

        async def read() -> None:
            nonlocal count
            async for _ in subscriber.messages():
                count += 1
                if count == messages:
                    done.set()
                    return

        reader = asyncio.create_task(read())
        began = time.perf_counter()
        if batch > 1:
            for start in range(0, messages, batch):
                in_batch = min(batch, messages - start)
                await publisher.publish_many([(CHANNEL, payload)] * in_batch)
        else:
            for _ in range(messages):
                await publisher.publish(CHANNEL, payload)
        published = time.perf_counter() - began
        with suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 120)
        delivered = time.perf_counter() - began
        reader.cancel()
        return published, delivered, count
    finally:
        await publisher.aclose()
        await subscriber.aclose()


async def flushed(url: str, messages: int, size: int) -> float | None:
    """Messages per second when each publish waits for the server (NATS's flush)."""
    subscriber, publisher = await _pair(url)
    client = getattr(publisher, "_client", None)
    try:
        if client is None or not hasattr(client, "flush"):
            return None
        payload = os.urandom(size)
        began = time.perf_counter()
        for _ in range(messages):
            await publisher.publish(CHANNEL, payload)
            await client.flush()
        return messages / (time.perf_counter() - began)
    finally:
        await publisher.aclose()
        await subscriber.aclose()


async def latency(url: str, round_trips: int, size: int) -> list[float]:
    subscriber, publisher = await _pair(url)
    payload = os.urandom(size)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def read() -> None:
        async for _ in subscriber.messages():
            arrived.put_nowait(time.perf_counter())

    reader = asyncio.create_task(read())
    samples = []
    try:
        for _ in range(round_trips):
            sent = time.perf_counter()
            await publisher.publish(CHANNEL, payload)
            samples.append(await asyncio.wait_for(arrived.get(), 10) - sent)
    finally:
        reader.cancel()
        await publisher.aclose()
        await subscriber.aclose()
    return samples


async def measure(name: str, url: str, args: argparse.Namespace) -> Figures:
    published, delivered_seconds, delivered = await throughput(url, args.messages, args.size)
    _, batched_seconds, batched = await throughput(url, args.messages, args.size, args.batch)
    rate = await flushed(url, args.flushed, args.size) if args.flushed else None
    samples = sorted(await latency(url, args.round_trips, args.size))
    return Figures(
        backplane=name,
        library=registry.backplane(url).library_version(),
        messages=args.messages,
        size=args.size,
        publish_seconds=round(published, 3),
        delivered_seconds=round(delivered_seconds, 3),
        delivered=delivered,
        messages_per_second=round(delivered / delivered_seconds),
        batch=args.batch,
        batched_delivered_seconds=round(batched_seconds, 3),
        batched_messages_per_second=round(batched / batched_seconds),
        flushed_messages=args.flushed if rate is not None else None,
        flushed_per_second=round(rate) if rate is not None else None,
        round_trips=len(samples),
        latency_p50_us=round(statistics.median(samples) * 1e6, 1),
        latency_p99_us=round(samples[int(len(samples) * 0.99) - 1] * 1e6, 1),
        latency_max_us=round(samples[-1] * 1e6, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backplanes", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--backplanes", default=",".join(BROKERS), help="nats,redis")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500, help="publish_many's batch size")
    parser.add_argument("--flushed", type=int, default=5_000, help="0: skip")
    parser.add_argument("--round-trips", type=int, default=5_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    for name in args.backplanes.split(","):
        try:
            registry.backplane(BROKERS[name][2].format(port=1))
        except Exception as error:
            print(f"{name}: skipped: {error}", file=sys.stderr)
            continue
        with broker(name) as url:
            results.append(asdict(asyncio.run(measure(name, url, args))))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in results:
        flushed_part = (
            f", {row['flushed_per_second']:,}/s flushing after each"
            if row["flushed_per_second"]
            else ""
        )
        print(
            f"{row['backplane']} ({row['library']}): {row['delivered']:,} of"
            f" {row['messages']:,} x {row['size']} B delivered in"
            f" {row['delivered_seconds']} s ({row['messages_per_second']:,}/s; publish loop"
            f" {row['publish_seconds']} s), {row['batched_messages_per_second']:,}/s with"
            f" publish_many({row['batch']}){flushed_part}; round trip p50"
            f" {row['latency_p50_us']} us, p99 {row['latency_p99_us']} us, max"
            f" {row['latency_max_us']} us over {row['round_trips']:,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
