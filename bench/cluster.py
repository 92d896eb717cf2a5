"""Broadcast across worker processes through a broker, against one process (docs/scaling.md).

    python -m bench.cluster [--sessions 10000] [--workers 4] [--rounds 3] [--engine websockets]
                            [--backplane redis://127.0.0.1:6379/0]

Each round runs, in fresh server processes and in alternating order, the same broadcast
measurement as the ``broadcast`` scenario (``bench.scenarios.broadcast_run``: the sessions
spread over 4 picows generator processes, one "go" from the leader's first connection, timed
from "go" sent to each session's receipt): once against ``polysocket serve`` in one process
with the memory backplane, once against ``polysocket serve --workers N --backplane URL`` (the
kernel spreads the sessions over the workers; the worker holding the leader's connection
delivers to its own sessions and publishes once, the others deliver what the broker hands
them). Reported per side: the time until every session got the message and the p99 of the
sessions' times (median over rounds of each round's median of 3 broadcasts), and what the
broker spent (Redis: CPU from its ``INFO cpu``): per session,
from the server's start to every session open (presence: one join event each, the
heartbeats), and per broadcast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from bench.scenarios import PY, REGISTRY, SERVICE, broadcast_run

#: Seconds for the workers to start and join the cluster once the port answers.
WORKERS_SETTLE = 4.0


def single_process(engine: str) -> Callable[[int], list[str]]:
    return lambda port: [
        PY, "-m", "polysocket", "serve", REGISTRY, "--engine", engine, "--port", str(port),
    ]  # fmt: skip


def workers(engine: str, count: int, backplane: str, cluster: str) -> Callable[[int], list[str]]:
    return lambda port: [
        PY, "-m", "polysocket", "serve", REGISTRY, "--engine", engine, "--port", str(port),
        "--cluster", cluster,
    ]  # fmt: skip


def broker_cpu_reader(url: str) -> Callable[[], float] | None:
    """A reader of the CPU seconds (user + system) the Redis server at ``url`` has used, from
    its own ``INFO cpu`` (microseconds, finer than /proc's ticks); ``None`` for a broker that
    is not Redis."""
    import redis

    if urlsplit(url).scheme not in ("redis", "rediss"):
        return None
    client = redis.Redis.from_url(url, socket_timeout=5)

    def read() -> float:
        cpu = client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    return read


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", default="websockets")
    parser.add_argument("--backplane", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    path = SERVICE + "broadcast"
    read_broker_cpu = broker_cpu_reader(args.backplane)
    rows: dict[str, list[dict[str, Any]]] = {"memory": [], "cluster": []}

    def run_side(side: str) -> None:
        marks: list[float] = []

        def broker_cpu() -> float:
            used = read_broker_cpu() if read_broker_cpu is not None else 0.0
            marks.append(used)
            return used

        if side == "memory":
            command = single_process(args.engine)
            settle = 0.0
        else:
            cluster = f"bench-{uuid.uuid4().hex[:8]}"
            command = workers(args.engine, args.workers, args.backplane, cluster)
            settle = WORKERS_SETTLE
        started = broker_cpu()
        run = partial(broadcast_run, command, path, args.sessions, args.repeats, settle)
        sample = run(broker_cpu)
        row: dict[str, Any] = {
            "all_received_s": sample.value,
            "p99_s": sample.extra["p99"],
            "times_s": sample.extra["times"],
        }
        if read_broker_cpu is not None and side == "cluster":
            opened = marks[1] - started  # start, sessions open, one unmeasured broadcast
            row["broker_cpu_us_per_session"] = opened * 1e6 / args.sessions
            row["broker_cpu_us_per_broadcast"] = sample.extra["measured"] * 1e6 / args.repeats
        rows[side].append(row)
        print(side, json.dumps(row), file=sys.stderr, flush=True)

    for number in range(args.rounds):
        order = ("memory", "cluster") if number % 2 == 0 else ("cluster", "memory")
        for side in order:
            run_side(side)

    def median(side: str, key: str) -> float:
        return statistics.median(row[key] for row in rows[side])

    print(
        f"broadcast to {args.sessions:,} sessions, engine {args.engine}, {args.rounds} rounds"
        f" (median of per-round medians of {args.repeats} broadcasts):"
    )
    for side, label in (
        ("memory", "1 process, memory backplane"),
        ("cluster", f"{args.workers} workers, {urlsplit(args.backplane).scheme} backplane"),
    ):
        all_received = [row["all_received_s"] for row in rows[side]]
        print(
            f"  {label}: all received in {median(side, 'all_received_s') * 1e3:.1f} ms"
            f" [{min(all_received) * 1e3:.1f}-{max(all_received) * 1e3:.1f}],"
            f" p99 {median(side, 'p99_s') * 1e3:.1f} ms"
        )
    if read_broker_cpu is not None:
        print(
            f"  broker CPU: {median('cluster', 'broker_cpu_us_per_session'):.1f} us per session"
            f" (opening, presence), {median('cluster', 'broker_cpu_us_per_broadcast'):.0f} us"
            " per broadcast"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
