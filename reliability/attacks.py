"""Attacks on ``polysocket serve`` and ``createWebsocket``, as measurements (issue 9).

    python reliability/attacks.py ATTACK|all [--engine E[,E...]|all] [--seconds N] [--json]

Each attack starts ``polysocket serve`` (the bundled sample, or reliability/registry/ when it
needs a slow or stuck handler) as a subprocess on a free port, runs a misbehaving peer that
writes WebSocket frames by hand, and prints one line per engine: the server's RSS at the start
of the attack, its peak and at the end (sampled every 0.2 s from /proc), messages, time, log
bytes and what the attack is about. A process whose RSS passes 2 GiB is killed at once (the
line says "> 2 GiB at t=..."). The figures are the output: a "bad" figure is not a failure;
the exit status is nonzero only when the harness itself failed (a server that never started,
a peer that could not connect). ``--serve-arg ARG`` (repeatable) adds ARG to every
``polysocket serve`` command line, e.g. an authenticator's option. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness import (
    BINARY,
    CLOSE,
    CONTINUATION,
    ENGINES,
    GIB,
    HERE,
    MIB,
    PING,
    PONG,
    REGISTRY,
    SERVICE,
    TEXT,
    HarnessError,
    RawSocket,
    RssWatch,
    ServeProcess,
    aconnect_ws,
    aread_frame,
    available_engines,
    close_code,
    close_frame,
    connect_ws,
    drain_for_close,
    frame,
    handshake_request,
    mib,
    push,
    serve_flags,
    size,
    status_of,
)

ECHO = SERVICE + "my-endpoint"
CHAT = SERVICE + "chat"
#: Extra ``polysocket serve`` arguments from ``--serve-arg``.
SERVE_ARGS: list[str] = []

Result = dict[str, Any]


@dataclass
class Attack:
    name: str
    run: Callable[[str, float], Result]
    seconds: float
    summary: str


def _serve(engine: str, **kwargs: Any) -> ServeProcess:
    extra = [*kwargs.pop("extra", ()), *SERVE_ARGS]
    return ServeProcess(engine, extra=extra, **kwargs)


def _figures(server: ServeProcess, began: float) -> Result:
    if server.rss.capped.is_set():  # killed by the RSS watch: let it be reaped
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(5)
    return {
        **server.rss.figures(),
        "seconds": round(time.monotonic() - began, 1),
        "log_bytes": server.log_bytes,
        "server_alive": server.alive,
    }


def _end(server: ServeProcess, settle: float = 2.0) -> None:
    """The end RSS: ``settle`` seconds after the attacker left (what the server kept)."""
    if server.alive and not server.rss.capped.is_set():
        time.sleep(settle)
    server.rss.end()


# -- 1, 2: a client pushing 1 MiB messages -------------------------------------------------


def _pusher(engine: str, seconds: float, root: Any, path: str, opcode: int) -> Result:
    message = frame(opcode, b"a" * MIB)
    with _serve(engine, root=root) as server:
        raw = connect_ws(server.port, path, rcvbuf=65536)
        if raw.status != 101:
            raise HarnessError(f"{path}: handshake answered {raw.status}")
        server.rss.begin()
        began = time.monotonic()
        sent, state = push(raw.sock, message, began + seconds, server.rss.capped.is_set)
        result = _figures(server, began)
        if server.rss.capped.is_set():
            state = "server killed at the RSS cap"
        elif state == "open" and server.alive:
            state = drain_for_close(raw, 2.0)
        raw.sock.close()
        _end(server)
        result.update(messages=sent, connection=state, rss_end=server.rss.end_rss)
        return result


def no_read(engine: str, seconds: float) -> Result:
    """1 MiB text messages to the echo endpoint, as fast as they go; the echoes never read."""
    return _pusher(engine, seconds, None, ECHO, TEXT)


def slow_handler(engine: str, seconds: float) -> Result:
    """1 MiB binary messages, as fast as they go, at a handler that takes 0.1 s for each."""
    return _pusher(engine, seconds, REGISTRY, SERVICE + "slow", BINARY)


# -- 3: the chat with one member that never reads ------------------------------------------

CHAT_MEMBERS = 20
CHAT_SIZE = 32 * 1024
CHAT_INTERVAL = 0.5
#: After the senders stop, how long the readers get to receive what is still on its way.
CHAT_GRACE = 5.0


def chat_stalled(engine: str, seconds: float) -> Result:
    """20 chat members; 19 send a 32 KiB message every 0.5 s each and read everything, one
    never reads (a 4 KiB receive buffer). Do the 19 get every message, and how fast?"""
    with _serve(engine) as server:
        stalled = connect_ws(server.port, CHAT, rcvbuf=4096)
        if stalled.status != 101:
            raise HarnessError(f"chat handshake answered {stalled.status}")
        try:
            return asyncio.run(_chat(server, stalled, seconds))
        finally:
            stalled.sock.close()


async def _chat(server: ServeProcess, stalled: RawSocket, seconds: float) -> Result:
    readers = CHAT_MEMBERS - 1
    members = [await aconnect_ws(server.port, CHAT) for _ in range(readers)]
    delivered: list[float] = []  # arrival times of the members' messages at the readers
    sent = [0] * readers
    send_stalls = [0]
    started = asyncio.Event()

    async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                opcode, _, payload = await aread_frame(reader)
                if opcode == CLOSE:
                    return
                if opcode == PING:  # a server with keepalive must not drop the readers
                    writer.write(frame(PONG, payload))
                if started.is_set() and b": m:" in payload[:64]:
                    delivered.append(time.monotonic())

    async def talk(index: int, writer: asyncio.StreamWriter, until: float) -> None:
        padding = b"x" * CHAT_SIZE
        while time.monotonic() < until:
            writer.write(frame(TEXT, b"m:%d:%d:" % (index, sent[index]) + padding))
            try:
                await asyncio.wait_for(writer.drain(), max(0.01, until - time.monotonic()))
            except TimeoutError:
                send_stalls[0] += 1  # the server stopped reading this member
                return
            sent[index] += 1
            await asyncio.sleep(CHAT_INTERVAL)

    tasks = [asyncio.create_task(read(reader, writer)) for reader, writer in members]
    await asyncio.sleep(1.0)  # the join notices
    server.rss.begin()
    started.set()
    began = time.monotonic()
    until = began + seconds
    await asyncio.gather(*(talk(i, w, until) for i, (_, w) in enumerate(members)))
    sending = time.monotonic() - began
    expected = sum(sent) * readers  # every member gets every message, its own included
    deadline = time.monotonic() + CHAT_GRACE
    while len(delivered) < expected and time.monotonic() < deadline and server.alive:
        await asyncio.sleep(0.1)
    result = _figures(server, began)
    result["seconds"] = round(sending, 1)
    last = [t for t in delivered if until - 5 <= t < until]
    for task in tasks:
        task.cancel()
    for _, writer in members:
        writer.close()
    stalled_state = drain_for_close(stalled, 3.0) if server.alive else "server dead"
    _end(server)
    result.update(
        rss_end=server.rss.end_rss,
        messages=sum(sent),
        delivered=len(delivered),
        expected=expected,
        all_delivered=len(delivered) >= expected,
        per_second=round(len([t for t in delivered if t < until]) / sending, 1),
        per_second_last_5s=round(len(last) / 5, 1),
        per_second_expected=round(sum(sent) * readers / sending, 1),
        send_stalls=send_stalls[0],
        stalled_member=stalled_state,
    )
    return result


# -- 4: stalled handshakes under an fd limit -----------------------------------------------

STALLED_SOCKETS = 1100
FD_LIMIT = 1024
PROBE_EVERY = 0.5
PROBE_TIMEOUT = 5.0
STALL_MIN_SECONDS = 20.0


def stalled_handshakes(engine: str, seconds: float) -> Result:
    """Under ``ulimit -n 1024``: 1,100 sockets send half a request line and stall; a real
    client tries to get in every 0.5 s. How long until it does, and how big the log grows?"""
    with _serve(engine, nofile=FD_LIMIT) as server:
        # at least 20 s: a 10 s handshake timeout must have the time to show
        return asyncio.run(_stall(server, max(seconds, STALL_MIN_SECONDS)))


async def _stall(server: ServeProcess, seconds: float) -> Result:
    loop = asyncio.get_running_loop()
    half = f"GET {ECHO} HT".encode()
    socks: list[socket.socket] = []
    server.rss.begin()
    logged_before = server.log_bytes
    began = time.monotonic()

    async def stall() -> bool:
        sock = socket.socket()
        sock.setblocking(False)
        socks.append(sock)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", server.port)), 5)
            await loop.sock_sendall(sock, half)
        except (OSError, TimeoutError):
            return False
        return True

    # the stalled sockets first (each connect has its own timeout), then a moment for the
    # server to accept what it can; the real client's wait counts from the first stall
    connected = sum(await asyncio.gather(*(stall() for _ in range(STALLED_SOCKETS))))
    await asyncio.sleep(1.0)
    got_in: list[float] = []
    attempts = [0, 0]  # started, refused or timed out

    async def probe() -> None:
        attempts[0] += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", server.port), PROBE_TIMEOUT
            )
        except (OSError, TimeoutError):
            attempts[1] += 1
            return
        try:
            writer.write(handshake_request(server.port, ECHO))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROBE_TIMEOUT)
            if status_of(head) == 101:
                got_in.append(time.monotonic() - began)
            else:
                attempts[1] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            attempts[1] += 1
        finally:
            writer.close()

    probes: list[asyncio.Task[None]] = []
    until = began + seconds
    while time.monotonic() < until and not got_in and server.alive:
        probes.append(asyncio.create_task(probe()))
        await asyncio.sleep(PROBE_EVERY)
    # how many of the stalled sockets the server has dropped by now
    dropped = 0
    for sock in socks:
        try:
            dropped += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            dropped += 1
    result = _figures(server, began)
    for task in probes:
        task.cancel()
    await asyncio.gather(*probes, return_exceptions=True)
    for sock in socks:
        sock.close()
    _end(server, 1.0)
    result.update(
        rss_end=server.rss.end_rss,
        stalled_connected=connected,
        stalled_dropped=dropped,
        got_in_after=round(got_in[0], 1) if got_in else None,
        probes=attempts[0],
        probes_failed=attempts[1],
        log_bytes=server.log_bytes - logged_before,
    )
    return result


# -- 5: an endless fragmented message ------------------------------------------------------

FRAGMENT_BATCH = 10_000
PING_EVERY = 0.1
ECHO_TIMEOUT = 5.0


def endless_fragments(engine: str, seconds: float) -> Result:
    """A text frame with FIN=0, then empty continuation frames forever; meanwhile another
    client measures its echo round trips. Is the attacker closed, and are others served?"""
    with _serve(engine) as server:
        attacker = connect_ws(server.port, ECHO)
        prober = connect_ws(server.port, ECHO)
        if attacker.status != 101 or prober.status != 101:
            raise HarnessError("echo handshake refused")
        server.rss.begin()
        began = time.monotonic()
        until = began + seconds
        latencies: list[float] = []
        lost = [0]
        stop = threading.Event()
        thread = threading.Thread(
            target=_round_trips, args=(prober, until, stop, latencies, lost), daemon=True
        )
        thread.start()
        fragments, state, closed_at = _fragments(attacker, until, server)
        # the round trips go on to the end: once the attacker is gone they should be quick
        thread.join(max(0.0, until - time.monotonic()) + ECHO_TIMEOUT + 2)
        stop.set()
        result = _figures(server, began)
        attacker.sock.close()
        prober.sock.close()
        _end(server)
        result.update(
            rss_end=server.rss.end_rss,
            fragments=fragments,
            attacker=state,
            attacker_closed_at=closed_at,
            round_trips=len(latencies),
            echo_lost=lost[0],
            echo_p50_ms=round(statistics.median(latencies) * 1000, 1) if latencies else None,
            echo_max_ms=round(max(latencies) * 1000, 1) if latencies else None,
        )
        return result


def _fragments(raw: RawSocket, until: float, server: ServeProcess) -> tuple[int, str, float | None]:
    """Sends the endless message; (fragments sent, how it ended, when it was closed)."""
    sock = raw.sock
    began = time.monotonic()
    sock.sendall(frame(TEXT, b"x", fin=False))
    batch = b"".join(frame(CONTINUATION, fin=False) for _ in range(FRAGMENT_BATCH))
    sent = 0
    sock.setblocking(False)
    view, offset = memoryview(batch), 0
    while time.monotonic() < until and server.alive:
        readable, writable, _ = select.select([sock], [sock], [], 0.2)
        if readable:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                chunk = b"?"
            except OSError as exc:
                return sent, f"reset ({exc.strerror})", round(time.monotonic() - began, 1)
            if not chunk:
                return sent, "ended (no close frame)", round(time.monotonic() - began, 1)
            for opcode, _, payload in raw.parser.feed(chunk):
                if opcode == CLOSE:
                    with contextlib.suppress(OSError):
                        sock.send(close_frame(close_code(payload) or 1000))
                    code = close_code(payload)
                    return sent, f"closed {code}", round(time.monotonic() - began, 1)
        if writable:
            try:
                offset += sock.send(view[offset:])
            except BlockingIOError:
                continue
            except OSError as exc:
                return sent, f"send failed ({exc.strerror})", round(time.monotonic() - began, 1)
            if offset == len(view):
                sent, offset = sent + FRAGMENT_BATCH, 0
    return sent, "open" if server.alive else "server dead", None


def _round_trips(
    raw: RawSocket, until: float, stop: threading.Event, latencies: list[float], lost: list[int]
) -> None:
    sock = raw.sock
    sock.settimeout(0.2)
    number = 0
    while time.monotonic() < until and not stop.is_set():
        number += 1
        payload = b"probe %d" % number
        sent = time.monotonic()
        try:
            sock.sendall(frame(TEXT, payload))
        except OSError:
            lost[0] += 1
            return
        got = False
        while not got and time.monotonic() - sent < ECHO_TIMEOUT:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            got = any(p == payload for _, _, p in raw.parser.feed(chunk))
        if got:
            latencies.append(time.monotonic() - sent)
        else:
            lost[0] += 1
        time.sleep(PING_EVERY)


# -- 6: cross-site WebSocket hijacking -----------------------------------------------------

EVIL = "http://evil.example"
GOOD = "http://good.example"


def cross_site(engine: str, seconds: float) -> Result:
    """A handshake with ``Origin: http://evil.example`` and the victim's cookie: its status,
    with no origin list, and with ``--origin http://good.example`` when the CLI has it."""

    def status(server: ServeProcess, origin: str, cookie: bool = True) -> int:
        headers = [("Origin", origin)]
        if cookie:
            headers.append(("Cookie", "session=victim-secret"))
        raw = connect_ws(server.port, ECHO, headers)
        raw.sock.close()
        return raw.status

    began = time.monotonic()
    result: Result = {}
    with _serve(engine) as server:
        server.rss.begin()
        result["evil_no_origins"] = status(server, EVIL)
        # 101 unless an authenticator was given with --serve-arg (then 401 is right)
        result["anonymous_same_origin"] = status(server, f"http://127.0.0.1:{server.port}", False)
        result.update(_figures(server, began))
    if "--origin" in serve_flags():
        with _serve(engine, extra=["--origin", GOOD]) as server:
            result["evil_with_origins"] = status(server, EVIL)
            result["good_with_origins"] = status(server, GOOD)
    else:
        result["evil_with_origins"] = "--origin not supported by this checkout"
    result["seconds"] = round(time.monotonic() - began, 1)
    return result


# -- 7: SIGTERM with stuck handlers --------------------------------------------------------

STUCK_SESSIONS = 8
#: The longest a stop may take before the server is killed (and the figure is "> this").
EXIT_CAP = 90.0


def sigterm_stuck(engine: str, seconds: float) -> Result:
    """8 sessions whose onMessage sleeps 60 s, then SIGTERM: how long until the server
    exits, with which code, and when do the clients get their close frames? Twice: with
    clients that answer the close frame (as browsers do), then with silent ones."""
    result = _sigterm_round(engine, answer=True)
    silent = _sigterm_round(engine, answer=False)
    result.update(
        silent_exit_seconds=silent["exit_seconds"],
        silent_exit_code=silent["exit_code"],
        seconds=round(result["seconds"] + silent["seconds"], 1),
    )
    return result


def _sigterm_round(engine: str, answer: bool) -> Result:
    with _serve(engine, root=REGISTRY) as server:
        clients = [connect_ws(server.port, SERVICE + "stuck") for _ in range(STUCK_SESSIONS)]
        if any(c.status != 101 for c in clients):
            raise HarnessError("stuck-endpoint handshake refused")
        for client in clients:
            client.sock.sendall(frame(TEXT, b"work"))
        server.rss.begin()
        time.sleep(1.0)  # every handler thread is in its sleep by now
        closes: list[tuple[str, float]] = []
        began = time.monotonic()
        waiters = [
            threading.Thread(target=_close_of, args=(c, began, closes, answer), daemon=True)
            for c in clients
        ]
        for waiter in waiters:
            waiter.start()
        code, took = server.terminate(timeout=EXIT_CAP)
        for waiter in waiters:
            waiter.join(2)
        result = _figures(server, began)
        for client in clients:
            client.sock.close()
        codes = sorted({state for state, _ in closes})
        result.update(
            exit_seconds=round(took, 1),
            exit_code=code if code is not None else "killed",
            close_frames=f"{len(closes)}/{STUCK_SESSIONS}: {', '.join(codes) or 'none'}",
            last_close_at=round(max(t for _, t in closes), 1) if closes else None,
        )
        return result


def _close_of(raw: RawSocket, began: float, closes: list[tuple[str, float]], answer: bool) -> None:
    state = drain_for_close(raw, EXIT_CAP, answer=answer)
    closes.append((state, time.monotonic() - began))


# -- 8: a createWebsocket client with a slow handler ---------------------------------------


def client_slow_handler(engine: str, seconds: float) -> Result:
    """A plain asyncio server pushes 1 MiB messages as fast as it can at a
    ``polysocket.createWebsocket`` client (a subprocess) whose onMessage sleeps 0.1 s."""
    return asyncio.run(_client(engine, seconds))


async def _client(engine: str, seconds: float) -> Result:
    message = frame(BINARY, b"b" * MIB, mask=False)
    pushed = [0]
    connected = asyncio.Event()
    stop = asyncio.Event()

    server = await asyncio.start_server(
        lambda r, w: _pushing(r, w, message, pushed, connected, stop), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "slow_client.py"),
            f"ws://127.0.0.1:{port}/",
            "--engine",
            engine,
            "--seconds",
            str(seconds),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    watch = RssWatch(process.pid)
    try:
        try:
            await asyncio.wait_for(connected.wait(), 30)
        except TimeoutError as exc:
            output = process.stdout.read(4000) if process.poll() is not None else b""  # type: ignore[union-attr]
            raise HarnessError(f"the client never connected: {output!r}") from exc
        watch.begin()
        began = time.monotonic()
        while time.monotonic() - began < seconds and process.poll() is None:
            await asyncio.sleep(0.2)
        took = time.monotonic() - began
        watch.end()
        stop.set()
        return {
            **watch.figures(),
            "seconds": round(took, 1),
            "messages": pushed[0],
            "client_alive": process.poll() is None,
            "log_bytes": None,
        }
    finally:
        stop.set()
        server.close()
        if process.poll() is None:
            process.kill()
        process.wait(10)
        watch.stop()


async def _pushing(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    message: bytes,
    pushed: list[int],
    connected: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Answers the handshake, then writes ``message`` as fast as the client takes it."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(_accept(head))
        connected.set()
        while not stop.is_set():
            writer.write(message)
            # one message in flight: wait for it (not write it again) until it has left
            drained = asyncio.ensure_future(writer.drain())
            while not drained.done() and not stop.is_set():
                await asyncio.wait({drained}, timeout=0.5)
            if not drained.done():
                drained.cancel()
                break
            drained.result()
            pushed[0] += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _accept(head: bytes) -> bytes:
    match = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
    key = match[1] if match else b""
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n\r\n"
    )


ATTACKS = {
    attack.name: attack
    for attack in [
        Attack("no-read", no_read, 15, "echo client that never reads, 1 MiB messages"),
        Attack("slow-handler", slow_handler, 15, "1 MiB messages at a 0.1 s handler"),
        Attack("chat-stalled", chat_stalled, 15, "20 chat members, one never reads"),
        Attack("stalled-handshakes", stalled_handshakes, 20, "1,100 stalled handshakes"),
        Attack("endless-fragments", endless_fragments, 15, "empty continuation frames forever"),
        Attack("cross-site", cross_site, 0, "Origin: http://evil.example with a cookie"),
        Attack("sigterm-stuck", sigterm_stuck, EXIT_CAP, "SIGTERM with 8 stuck handlers"),
        Attack("client-slow-handler", client_slow_handler, 15, "createWebsocket, 0.1 s handler"),
    ]
}


# -- output ----------------------------------------------------------------------------------


def describe(result: Result) -> str:
    """One line of figures for a result."""
    if "error" in result:
        return f"HARNESS ERROR: {result['error']}"
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    parts: list[str] = []
    if result.get("rss_start") is not None:
        peak = mib(result["rss_peak"])
        if result.get("capped_at") is not None:
            peak = f"> {RSS_CAP_TEXT} at t={result['capped_at']} s (killed)"
        parts.append(f"RSS {mib(result['rss_start'])} / peak {peak} / end {mib(result['rss_end'])}")
    skip = {"rss_start", "rss_peak", "rss_end", "capped_at", "attack", "engine"}
    first = ("messages", "fragments", "seconds", "log_bytes")
    ordered = [k for k in first if k in result] + [k for k in result if k not in first]
    for key in ordered:
        value = result[key]
        if key in skip:
            continue
        if key == "got_in_after" and value is None:
            value = f"never (within {result['seconds']} s)"
        elif key == "log_bytes":
            value = "-" if value is None else size(value)
        elif key == "seconds":
            value = f"{value} s"
        parts.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(parts)


RSS_CAP_TEXT = f"{2 * GIB // GIB} GiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=[*ATTACKS, "all"])
    parser.add_argument("--engine", default="all", help="engines, comma-separated, or all")
    parser.add_argument("--seconds", type=float, help="attack duration (default: per attack)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="an extra `polysocket serve` argument"
    )
    args = parser.parse_args(argv)
    SERVE_ARGS.extend(args.serve_arg)
    engines = ENGINES if args.engine == "all" else args.engine.split(",")
    attacks = list(ATTACKS.values()) if args.attack == "all" else [ATTACKS[args.attack]]
    available = available_engines()
    results: list[Result] = []
    failed = False
    for attack in attacks:
        for engine in engines:
            result: Result = {"attack": attack.name, "engine": engine}
            if engine not in available:
                result["skipped"] = "engine not available (see `polysocket engines`)"
            else:
                try:
                    result.update(attack.run(engine, args.seconds or attack.seconds))
                except Exception as exc:
                    failed = True
                    result["error"] = f"{exc}"
                    traceback.print_exc(file=sys.stderr)
            results.append(result)
            if not args.json:
                print(f"{attack.name:<19} {engine:<10} {describe(result)}", flush=True)
            else:
                print(f"{attack.name} {engine}: {describe(result)}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
