"""The scenarios: what each side runs, what is compared, and the issue's targets.

Each scenario function takes the run settings and returns its comparisons' results (and
writes bench/results/<scenario>.json). Sizes come in two scales: the full run and ``--quick``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench.harness import (
    Child,
    Comparison,
    Sample,
    Side,
    Target,
    VerificationError,
    cpu_seconds,
    format_result,
    free_port,
    percentile,
    rss_kib,
    run_rounds,
    server,
    summarize,
    write_results,
)

PY = sys.executable
REGISTRY = "bench/registry"
ENGINES = ["aiohttp", "websockets", "tornado", "picows"]
SERVICE = "/websockets/v4/service/"


@dataclass
class Settings:
    rounds: int
    quick: bool
    engines: list[str]
    #: polysocket's engines in the broadcast scenario (against raw websockets in every case).
    broadcast_engines: list[str] = field(default_factory=lambda: ["websockets"])
    log: Callable[[str], None] = print

    def scale(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


# --- servers ----------------------------------------------------------------------------------


def polysocket_command(engine: str) -> Callable[[int], list[str]]:
    """``polysocket serve`` of the bench registry (echo-sync, echo-async, broadcast)."""
    return lambda port: [
        PY, "-m", "polysocket", "serve", REGISTRY, "--engine", engine, "--port", str(port),
    ]  # fmt: skip


def raw_command(library: str) -> Callable[[int], list[str]]:
    """The raw library's minimal echo server (bench/peers.py)."""
    return lambda port: [PY, "-m", "bench.peers", library, "--port", str(port)]


@contextlib.contextmanager
def echo_peer() -> Iterator[str]:
    """The plain echo server the client scenarios share: raw picows (the fastest here, so
    that the client under test is the bottleneck), one process for the whole scenario."""
    port = free_port()
    with server(raw_command("picows")(port), port):
        yield f"ws://127.0.0.1:{port}/echo"


# --- server echo ------------------------------------------------------------------------------


def echo_run(
    command: Callable[[int], list[str]],
    path: str,
    conns: int,
    per_conn: int,
    window: int,
    size: int,
) -> Sample:
    """One server process, one load generator: msg/s and the server's CPU per message
    (/proc/PID/stat, from the generator's "go" to its "done")."""
    port = free_port()
    with server(command(port), port) as process:
        generator = Child(
            [
                PY, "-m", "bench.loadgen", "echo", f"ws://127.0.0.1:{port}{path}",
                "--conns", str(conns), "--per-conn", str(per_conn),
                "--window", str(window), "--size", str(size),
            ]
        )  # fmt: skip
        try:
            generator.expect("ready")
            time.sleep(0.1)  # the last handshakes' follow-up work (onOpen) is not load
            before = cpu_seconds(process.pid)
            generator.send("go")
            done = generator.expect("done", timeout=300)
            used = cpu_seconds(process.pid) - before
        finally:
            generator.close()
    messages = done["messages"]
    return Sample(messages / done["elapsed"], used * 1e6 / messages, {"verified": done["verified"]})


def server_echo(settings: Settings) -> list[dict[str, Any]]:
    """Echo msg/s of ``polysocket serve`` (plain and ``async def`` onMessage) against the raw
    server of the same library, at 1, 64 and 512 connections and 32 B and 64 KiB text
    messages; plus polysocket-on-picows against the raw aiohttp server. Each connection
    keeps a window of messages in flight (128 in all for 32 B, 8 for 64 KiB, at least 1 per
    connection); full runs echo 30,000 messages of 32 B or 3,000 of 64 KiB (at least 4 per
    connection), quick runs 6,000 or 800. CPU per message is the server's."""
    return _echo_grid(settings, "server-echo", settings.engines, [1, 64, 512], [32, 65536])


def asgi_echo(settings: Settings) -> list[dict[str, Any]]:
    """Echo msg/s of ``polysocket serve --engine uvicorn`` (the ASGI adapter on uvicorn; plain
    and ``async def`` onMessage) against raw uvicorn running a minimal ASGI echo app with the
    same settings (bench/peers.py), at 1, 64 and 512 connections, 32 B and 64 KiB text
    messages; loads and CPU per message as in server-echo."""
    return _echo_grid(settings, "asgi-echo", ["uvicorn"], [1, 64, 512], [32, 65536])


def _echo_grid(
    settings: Settings,
    scenario: str,
    engines: Sequence[str],
    conn_counts: Sequence[int],
    sizes: Sequence[int],
) -> list[dict[str, Any]]:
    """server-echo's measurement for ``engines``: each polysocket engine (sync and async
    handler) against the raw peer of the same name in bench/peers.py."""
    results: list[dict[str, Any]] = []
    for size in sizes:
        for conns in conn_counts:
            total = settings.scale(30_000, 6_000) if size < 1024 else settings.scale(3_000, 800)
            per_conn = max(total // conns, 4)
            window = max(1, (128 if size < 1024 else 8) // conns)
            params = {"conns": conns, "size": size, "window": window, "per_conn": per_conn}
            sides: list[Side] = []
            comparisons: list[Comparison] = []
            for engine in engines:
                raw = f"raw {engine}"
                for kind in ("sync", "async"):
                    name = f"polysocket {engine} {kind}"
                    sides.append(
                        Side(
                            name,
                            partial(
                                echo_run,
                                polysocket_command(engine),
                                SERVICE + f"echo-{kind}",
                                conns,
                                per_conn,
                                window,
                                size,
                            ),
                        )
                    )
                    comparisons.append(
                        Comparison(
                            f"{engine} {kind} c={conns} {_size(size)}",
                            name,
                            raw,
                            "rate",
                            "msg/s",
                            {**params, "engine": engine, "handler": kind},
                            Target(">= 0.9x raw", ">=", 0.9),
                            Target("CPU/msg <= 1.15x raw", "<=", 1.15),
                        )
                    )
                    if kind == "sync":  # raw between the two polysocket sides: p, raw, p
                        sides.append(
                            Side(
                                raw,
                                partial(
                                    echo_run,
                                    raw_command(engine),
                                    "/echo",
                                    conns,
                                    per_conn,
                                    window,
                                    size,
                                ),
                            )
                        )
            if "picows" in engines and "aiohttp" in engines:
                for kind in ("sync", "async"):
                    comparisons.append(
                        Comparison(
                            f"picows {kind} vs raw aiohttp c={conns} {_size(size)}",
                            f"polysocket picows {kind}",
                            "raw aiohttp",
                            "rate",
                            "msg/s",
                            {**params, "engine": "picows-vs-aiohttp", "handler": kind},
                            Target(">= 1.3x raw aiohttp", ">=", 1.3),
                        )
                    )
            settings.log(f"{scenario}: {conns} connection(s), {_size(size)} messages")
            results += _compare(settings, sides, comparisons)
    return results


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def _compare(
    settings: Settings, sides: Sequence[Side], comparisons: Sequence[Comparison]
) -> list[dict[str, Any]]:
    samples = run_rounds(sides, settings.rounds, settings.log)
    results = [summarize(comparison, samples) for comparison in comparisons]
    for result in results:
        settings.log(format_result(result))
    return results


# --- client throughput ------------------------------------------------------------------------


def client_run(test: str, uri: str, *options: str) -> Callable[[], Sample]:
    """One client process (bench/clients.py): its rate and its own CPU per message."""

    def run() -> Sample:
        child = Child([PY, "-m", "bench.clients", test, uri, *options])
        try:
            done = child.expect("done", timeout=600)
        finally:
            child.close()
        if test == "memory":
            return Sample(done["kib_per_conn"], None, {"verified": done["verified"]})
        messages = done["messages"]
        extra: dict[str, Any] = {"verified": done["verified"]}
        value = messages / done["elapsed"]
        if test == "rtt":
            latencies = done["latencies"]
            extra |= {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}
            value = extra["p50"]
        return Sample(value, done["cpu"] * 1e6 / messages, extra)

    return run


def client_throughput(settings: Settings) -> list[dict[str, Any]]:
    """One connection, N pipelined messages echoed by the plain peer: polysocket's sync and
    asyncio clients against the raw library's client, per engine (picows' raw client sends
    without waiting, as its examples do). 50,000 messages of 64 B (quick: 10,000); CPU per
    message is the client process's."""
    count, size = settings.scale(50_000, 10_000), 64
    opts = ["--messages", str(count), "--size", str(size)]
    results: list[dict[str, Any]] = []
    with echo_peer() as uri:
        for engine in settings.engines:
            engine_opts = [*opts, "--engine", engine]
            sides = [
                Side(
                    f"polysocket sync {engine}",
                    client_run("throughput", uri, "--api", "sync", *engine_opts),
                ),
                Side(f"raw {engine}", client_run("throughput", uri, "--api", "raw", *engine_opts)),
                Side(
                    f"polysocket asyncio {engine}",
                    client_run("throughput", uri, "--api", "async", *engine_opts),
                ),
            ]
            params = {"engine": engine, "messages": count, "size": size}
            comparisons = [
                Comparison(
                    f"{engine} sync client",
                    sides[0].name,
                    sides[1].name,
                    "rate",
                    "msg/s",
                    {**params, "api": "sync"},
                ),
                Comparison(
                    f"{engine} asyncio client",
                    sides[2].name,
                    sides[1].name,
                    "rate",
                    "msg/s",
                    {**params, "api": "asyncio"},
                ),
            ]
            settings.log(f"client-throughput: {engine}")
            results += _compare(settings, sides, comparisons)
    return results


# --- websocket-client comparisons -------------------------------------------------------------


def _against_wsclient(
    settings: Settings,
    test: str,
    raw_api: str,
    opts: list[str],
    make: Callable[[str, str, str], list[Comparison]],
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with echo_peer() as uri:
        for engine in settings.engines:
            ours, theirs = f"polysocket sync {engine}", f"{raw_api} (vs {engine})"
            sides = [
                Side(ours, client_run(test, uri, "--api", "sync", "--engine", engine, *opts)),
                Side(theirs, client_run(test, uri, "--api", raw_api, *opts)),
            ]
            settings.log(f"{test}: {engine}")
            results += _compare(settings, sides, make(engine, ours, theirs))
    return results


def rtt(settings: Settings) -> list[dict[str, Any]]:
    """Sequential round trips (send, wait for the echo): p50 and p99 of the polysocket sync
    client (an ``onMessage`` that puts the echo in a queue the sender waits on) against
    websocket-client's ``create_connection`` send/recv. 5,000 round trips of 32 B after 100
    unmeasured (quick: 1,000). The ratio is websocket-client's time / polysocket's."""
    count = settings.scale(5_000, 1_000)

    def make(engine: str, ours: str, theirs: str) -> list[Comparison]:
        params = {"engine": engine, "messages": count, "size": 32}
        return [
            Comparison(
                f"{engine} RTT p50", ours, theirs, "time", "s", params,
                Target("p50 <= 1.2x websocket-client", ">=", 1 / 1.2), metric="p50",
            ),
            Comparison(f"{engine} RTT p99", ours, theirs, "time", "s", params, metric="p99"),
        ]  # fmt: skip

    return _against_wsclient(settings, "rtt", "wsclient", ["--messages", str(count)], make)


def open_close(settings: Settings) -> list[dict[str, Any]]:
    """Connections opened and closed one after another, per second: polysocket sync client
    (``createWebsocket`` then ``close()``, which waits for the closing handshake) against
    websocket-client (``create_connection`` then ``close()``). 500 (quick: 100)."""
    count = settings.scale(500, 100)

    def make(engine: str, ours: str, theirs: str) -> list[Comparison]:
        return [
            Comparison(
                f"{engine} open+close", ours, theirs, "rate", "conn/s",
                {"engine": engine, "connections": count},
                Target(">= 1.0x websocket-client", ">=", 1.0),
            )
        ]  # fmt: skip

    return _against_wsclient(settings, "openclose", "wsclient", ["--messages", str(count)], make)


def sync_throughput(settings: Settings) -> list[dict[str, Any]]:
    """Pipelined echo throughput of the polysocket sync client against websocket-client's
    ``WebSocketApp`` (its callback API: ``run_forever`` on a thread, ``send`` from the main
    one). 50,000 messages of 64 B (quick: 10,000)."""
    count, size = settings.scale(50_000, 10_000), 64

    def make(engine: str, ours: str, theirs: str) -> list[Comparison]:
        return [
            Comparison(
                f"{engine} sync vs WebSocketApp", ours, theirs, "rate", "msg/s",
                {"engine": engine, "messages": count, "size": size},
                Target(">= 4x WebSocketApp", ">=", 4.0),
            )
        ]  # fmt: skip

    opts = ["--messages", str(count), "--size", str(size)]
    return _against_wsclient(settings, "throughput", "wsapp", opts, make)


# --- broadcast --------------------------------------------------------------------------------

#: Processes the broadcast receivers are spread over (each raises its fd limit).
RECEIVER_PROCESSES = 4


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's ephemeral port range (every client connection takes one per source
    address, and 10,000 sessions come close to the default 28,232)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        low, high = (int(word) for word in ports.read().split())
    return low, high


def broadcast_run(
    command: Callable[[int], list[str]],
    path: str,
    sessions: int,
    repeats: int,
    settle: float = 0.0,
    measure: Callable[[], float] | None = None,
) -> Sample:
    """``sessions`` connections from a few generator processes; the leader sends "go:TOKEN",
    the server broadcasts "B:TOKEN"; the time from "go" sent to the last connection's receipt
    (median of ``repeats`` broadcasts in this server's life, after one unmeasured). The
    sample's ``p99`` is the median over those broadcasts of the 99th percentile of the
    sessions' own times, "go" sent to its receipt. ``settle``: seconds to wait once the port
    answers (worker processes still starting). ``measure``: read before and after the
    measured broadcasts; the sample's ``measured`` is the difference."""
    port = free_port()
    uri = f"ws://127.0.0.1:{port}{path}"
    share = [
        sessions // RECEIVER_PROCESSES + (n < sessions % RECEIVER_PROCESSES)
        for n in range(RECEIVER_PROCESSES)
    ]
    times: list[float] = []
    p99s: list[float] = []
    low, high = ephemeral_ports()
    if max(share) > high - low:
        raise RuntimeError(
            f"{max(share)} connections per process, {high - low + 1} ephemeral ports"
        )
    with server(command(port), port):
        time.sleep(settle)
        children = [
            Child(
                [
                    PY,
                    "-m",
                    "bench.loadgen",
                    "broadcast",
                    uri,
                    "--conns",
                    str(count),
                    # Each process connects from an address of its own: its own port range.
                    "--source",
                    f"127.0.0.{n + 2}",
                    *(["--leader"] if n == 0 else []),
                ]
            )
            for n, count in enumerate(share)
        ]
        try:
            for child in children:
                child.expect("ready", timeout=300)
            measured = 0.0
            for attempt in range(repeats + 1):
                if attempt == 1 and measure is not None:
                    measured = -measure()
                token = uuid.uuid4().hex
                for child in children:
                    child.send(f"arm {token}")
                for child in children:
                    child.expect("armed")
                children[0].send(f"go {token}")
                sent = children[0].expect("sent")["at"]
                last = 0.0
                got = 0
                each: list[float] = []
                for child in children:
                    child.send("wait")
                    received = child.expect("received")
                    last, got = max(last, received["at"]), got + received["conns"]
                    each += (at - sent for at in received["times"])
                if got != sessions or len(each) != sessions:
                    raise VerificationError(f"{got} of {sessions} sessions got the broadcast")
                if attempt:
                    times.append(last - sent)
                    p99s.append(percentile(each, 0.99))
            if measure is not None:
                measured += measure()
        finally:
            for child in children:
                with contextlib.suppress(Exception):
                    child.send("quit")
                child.close()
    extra = {"times": times, "p99": statistics.median(p99s)}
    if measure is not None:
        extra["measured"] = measured
    return Sample(statistics.median(times), None, extra)


def broadcast(settings: Settings) -> list[dict[str, Any]]:
    """Time until every session got one broadcast message: polysocket's ``broadcast()``
    (served by each engine given, websockets by default) against raw websockets'
    ``broadcast()``, to 1,000 and 10,000 sessions. The receivers are 4 picows processes; one
    connection sends "go:TOKEN", the server's handler (``async def`` in polysocket, the
    connection handler in websockets) broadcasts "B:TOKEN" to every session, sender
    included; timed from "go" sent to the last receipt (CLOCK_MONOTONIC, shared by the
    processes), median of 3 broadcasts per server (quick: 2) after one unmeasured."""
    repeats = settings.scale(3, 2)
    results: list[dict[str, Any]] = []
    engines = settings.broadcast_engines
    low, high = ephemeral_ports()
    settings.log(
        f"broadcast: ephemeral ports {low}-{high}; receivers in {RECEIVER_PROCESSES} processes,"
        f" from 127.0.0.2-{RECEIVER_PROCESSES + 1}"
    )
    for sessions in (1_000, 10_000):
        raw = Side(
            "raw websockets broadcast()",
            partial(broadcast_run, raw_command("websockets"), "/", sessions, repeats),
        )
        sides: list[Side] = []
        comparisons = []
        for engine in engines:
            name = f"polysocket {engine} broadcast()"
            sides.append(
                Side(
                    name,
                    partial(
                        broadcast_run,
                        polysocket_command(engine),
                        SERVICE + "broadcast",
                        sessions,
                        repeats,
                    ),
                )
            )
            if len(sides) == 1:
                sides.append(raw)  # p, raw, p ...
            comparisons.append(
                Comparison(
                    f"{engine} broadcast to {sessions:,}", name, raw.name, "time", "s",
                    {"engine": engine, "sessions": sessions, "repeats": repeats},
                    Target(">= 1.0x raw websockets", ">=", 1.0),
                )
            )  # fmt: skip
        settings.log(f"broadcast: {sessions:,} sessions")
        results += _compare(settings, sides, comparisons)
    return results


# --- memory -----------------------------------------------------------------------------------


def server_memory_run(command: Callable[[int], list[str]], path: str, conns: int) -> Sample:
    """RSS growth of the server (VmRSS) from ``warm`` open connections to ``warm + conns``
    (each with one verified echo, then idle), per connection, in KiB."""
    port = free_port()
    with server(command(port), port) as process:
        generator = Child(
            [
                PY,
                "-m",
                "bench.loadgen",
                "idle",
                f"ws://127.0.0.1:{port}{path}",
                "--conns",
                str(conns),
            ]
        )
        try:
            generator.expect("warm")
            time.sleep(0.5)
            before = rss_kib(process.pid)
            generator.send("more")
            ready = generator.expect("ready", timeout=300)
            after = rss_kib(process.pid)
            generator.send("close")
        finally:
            generator.close()
    return Sample((after - before) / conns, None, {"verified": ready["verified"]})


def memory_server(settings: Settings) -> list[dict[str, Any]]:
    """Server memory per idle connection: ``polysocket serve`` (plain echo handler) against
    the raw server of the same library: the server's VmRSS growth from 8 open connections
    to 8 + 1,000 (quick: 200), each with one verified echo and then idle for a second."""
    conns = settings.scale(1_000, 200)
    results: list[dict[str, Any]] = []
    for engine in settings.engines:
        sides = [
            Side(
                f"polysocket {engine}",
                partial(
                    server_memory_run, polysocket_command(engine), SERVICE + "echo-sync", conns
                ),
            ),
            Side(f"raw {engine}", partial(server_memory_run, raw_command(engine), "/echo", conns)),
        ]
        comparison = Comparison(
            f"{engine} server memory", sides[0].name, sides[1].name, "memory", "KiB/conn",
            {"engine": engine, "connections": conns}, Target("<= raw + 4 KiB", "<=", 4.0),
        )  # fmt: skip
        settings.log(f"memory-server: {engine}")
        results += _compare(settings, sides, [comparison])
    return results


def memory_client(settings: Settings) -> list[dict[str, Any]]:
    """Client memory per idle connection: polysocket's sync and asyncio clients against the
    raw library's client, the client process's VmRSS growth from 4 connections to 4 + 500
    (quick: 100), each with one verified echo."""
    conns = settings.scale(500, 100)
    results: list[dict[str, Any]] = []
    with echo_peer() as uri:
        for engine in settings.engines:
            opts = ["--engine", engine, "--conns", str(conns)]
            sides = [
                Side(
                    f"polysocket sync {engine}", client_run("memory", uri, "--api", "sync", *opts)
                ),
                Side(f"raw {engine}", client_run("memory", uri, "--api", "raw", *opts)),
                Side(
                    f"polysocket asyncio {engine}",
                    client_run("memory", uri, "--api", "async", *opts),
                ),
            ]
            params = {"engine": engine, "connections": conns}
            comparisons = [
                Comparison(
                    f"{engine} sync client memory",
                    sides[0].name,
                    sides[1].name,
                    "memory",
                    "KiB/conn",
                    params,
                ),
                Comparison(
                    f"{engine} asyncio client memory",
                    sides[2].name,
                    sides[1].name,
                    "memory",
                    "KiB/conn",
                    params,
                ),
            ]
            settings.log(f"memory-client: {engine}")
            results += _compare(settings, sides, comparisons)
    return results


# --- connect burst ----------------------------------------------------------------------------


def listen_drops() -> int:
    """The kernel's count of connections dropped from full listen queues (all sockets)."""
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))[
                "ListenDrops"
            ]
    return 0


def burst_run(command: Callable[[int], list[str]], path: str, conns: int, step: int) -> Sample:
    """One server, one burst (bench/burst.py): seconds until every handshake got its 101,
    and the SYNs the kernel dropped meanwhile (a listen queue too short for the burst)."""
    port = free_port()
    with server(command(port), port):
        drops = listen_drops()
        child = Child(
            [PY, "-m", "bench.burst", f"ws://127.0.0.1:{port}{path}",
             "--conns", str(conns), "--step", str(step)]
        )  # fmt: skip
        try:
            done = child.expect("done", timeout=300)
        finally:
            child.close()
        if done["opened"] != conns:
            raise VerificationError(f"{done['opened']} of {conns} handshakes completed")
    return Sample(done["elapsed"], None, {"listen_drops": listen_drops() - drops})


def connect_burst(settings: Settings) -> list[dict[str, Any]]:
    """Connections arriving in bursts: 2,000 handshakes (quick: 1,000), 200 at a time,
    against ``polysocket serve`` (listen backlog 2048) and the raw server of the same library
    (bench/peers.py, backlog 1024); time until all got their 101 ("listen_drops" in the
    results: SYNs the kernel dropped meanwhile, each costing its client a second or more)."""
    conns = settings.scale(2_000, 1_000)
    results: list[dict[str, Any]] = []
    for engine in settings.engines:
        sides = [
            Side(
                f"polysocket {engine}",
                partial(burst_run, polysocket_command(engine), SERVICE + "echo-sync", conns, 200),
            ),
            Side(f"raw {engine}", partial(burst_run, raw_command(engine), "/echo", conns, 200)),
        ]
        comparison = Comparison(
            f"{engine} connect burst", sides[0].name, sides[1].name, "time", "s",
            {"engine": engine, "connections": conns, "at once": 200},
        )  # fmt: skip
        settings.log(f"connect-burst: {engine}")
        results += _compare(settings, sides, [comparison])
    return results


SCENARIOS: dict[str, Callable[[Settings], list[dict[str, Any]]]] = {
    "client-throughput": client_throughput,
    "server-echo": server_echo,
    "asgi-echo": asgi_echo,
    "broadcast": broadcast,
    "rtt": rtt,
    "open-close": open_close,
    "sync-throughput": sync_throughput,
    "memory-server": memory_server,
    "memory-client": memory_client,
    "connect-burst": connect_burst,
}


def run(name: str, settings: Settings) -> list[dict[str, Any]]:
    """Run one scenario and write its results file."""
    started = time.monotonic()
    results = SCENARIOS[name](settings)
    path = write_results(
        name,
        {
            "rounds": settings.rounds,
            "quick": settings.quick,
            "engines": settings.engines,
            "seconds": round(time.monotonic() - started, 1),
        },
        results,
    )
    settings.log(
        f"{name}: {len(results)} comparison(s) in {time.monotonic() - started:.0f} s -> {path}"
    )
    return results
