"""The load generator: many picows client connections in one process, driven by the harness.

    python -m bench.loadgen echo URI --conns N --per-conn M --window W --size S
    python -m bench.loadgen idle URI --warm 8 --conns N
    python -m bench.loadgen broadcast URI --conns N [--leader]

picows is the fastest client measured here (its frames reach Python as one callback each,
with no task per message), so the server under test, not the generator, is the bottleneck;
the same generator drives polysocket and the raw server alike.

It talks JSON lines (``bench.harness.Child``): it opens its connections and says "ready",
then waits for commands on stdin:

- echo: "go" starts the load: every connection keeps ``window`` messages in flight until it
  has had ``per_conn`` echoes; every echo's length and header are checked and every
  ``--sample``-th (and the last) compared in full; "done" reports the time and counts;
- idle: opens ``--warm`` connections (one verified echo each), says "warm"; "more" opens
  ``--conns`` more (one verified echo each) and says "ready" after a settling second;
- broadcast: "arm TOKEN" makes every connection expect "B:TOKEN" ("armed"); the leader's
  "go TOKEN" sends "go:TOKEN" on its first connection ("sent" with the time); once every
  connection got its message, "received" with the time of the last one and every
  connection's time of receipt (``times``, for percentiles). Monotonic clock
  times are comparable between processes (CLOCK_MONOTONIC is system-wide).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.harness import (
    VerificationError,
    check_echo,
    emit,
    filler,
    header,
    raise_fd_limit,
    sampled,
)

#: Handshakes in flight at once per process: more overflow the server's accept backlog.
OPENING = 64


class EchoConnection(WSListener):
    """One connection of the echo load: a window of messages in flight, echoes verified."""

    def __init__(self, load: EchoLoad, number: int):
        self.load, self.number = load, number
        self.transport: WSTransport | None = None
        self.sent = self.received = self.verified = 0
        self.finished = False
        self._parts: list[bytes] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def start(self) -> None:
        for _ in range(min(self.load.window, self.load.per_conn)):
            self._send()

    def _send(self) -> None:
        assert self.transport is not None
        data = header(self.number, self.sent) + self.load.fill
        self.transport.send(WSMsgType.TEXT, data)
        self.sent += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        if kind not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return
        if not frame.fin or self._parts:  # a fragmented echo: put it together first
            self._parts.append(frame.get_payload_as_bytes())
            if not frame.fin:
                return
            data, self._parts = b"".join(self._parts), []
        else:
            data = frame.get_payload_as_bytes()
        self._echo(data)

    def _echo(self, data: bytes) -> None:
        load, seq = self.load, self.received
        full = sampled(seq, load.per_conn, load.sample)
        try:
            check_echo(self.number, seq, load.size, data, full)
        except VerificationError as exc:
            load.fail(str(exc))
            return
        self.verified += full
        self.received += 1
        if self.received > load.per_conn:
            load.fail(f"conn {self.number}: more echoes than messages sent")
        elif self.received == load.per_conn:
            self.finished = True
            load.one_finished()
        elif self.sent < load.per_conn:
            self._send()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.finished and self.load.running:
            self.load.fail(
                f"conn {self.number} dropped after {self.received} of {self.load.per_conn} echoes"
            )


class EchoLoad:
    """The echo load of one process: its settings and its end."""

    def __init__(self, per_conn: int, window: int, size: int, sample: int):
        self.per_conn, self.window, self.size, self.sample = per_conn, window, size, sample
        self.fill = filler(size)
        self.running = False
        self.left = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def one_finished(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)

    def fail(self, detail: str) -> None:
        if not self.done.done():
            self.done.set_exception(VerificationError(detail))


async def open_all(
    uri: str,
    count: int,
    factory: Callable[[int], WSListener],
    first: int = 0,
    source: str | None = None,
) -> list[tuple[WSTransport, Any]]:
    """``count`` connections, at most :data:`OPENING` handshakes at a time, from the local
    address ``source`` if given (each 127.0.0.x has its own ephemeral port range)."""
    gate = asyncio.Semaphore(OPENING)
    extra: dict[str, Any] = {"local_addr": (source, 0)} if source else {}

    async def one(number: int) -> tuple[WSTransport, Any]:
        async with gate:
            result: tuple[WSTransport, Any] = await ws_connect(
                lambda: factory(number),
                uri,
                websocket_handshake_timeout=60,
                max_frame_size=64 * 1024 * 1024,
                **extra,  # picows hands these to loop.create_connection
            )
            return result

    return await asyncio.gather(*(one(first + n) for n in range(count)))


async def command() -> list[str]:
    """The next line of stdin, split; ["eof"] at its end."""
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.split() or ["eof"]


async def close_all(connections: list[tuple[WSTransport, Any]]) -> None:
    for transport, _ in connections:
        with contextlib.suppress(Exception):
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
    await asyncio.sleep(0.05)


async def echo(args: argparse.Namespace) -> None:
    load = EchoLoad(args.per_conn, args.window, args.size, args.sample)
    connections = await open_all(args.uri, args.conns, lambda n: EchoConnection(load, n))
    emit("ready", conns=len(connections))
    if (await command())[0] != "go":
        return
    listeners: list[EchoConnection] = [listener for _, listener in connections]
    load.left, load.running = len(listeners), True
    start = time.monotonic()
    for listener in listeners:
        listener.start()
    try:
        await asyncio.wait_for(load.done, args.timeout)
    except TimeoutError:
        got = sum(listener.received for listener in listeners)
        raise VerificationError(
            f"only {got} of {args.conns * args.per_conn} echoes within {args.timeout} s"
        ) from None
    elapsed = time.monotonic() - start
    load.running = False
    received = sum(listener.received for listener in listeners)
    expected = args.conns * args.per_conn
    if received != expected or any(lsn.received != args.per_conn for lsn in listeners):
        raise VerificationError(f"{received} echoes, expected exactly {expected}")
    emit(
        "done",
        elapsed=elapsed,
        messages=received,
        verified=sum(listener.verified for listener in listeners),
    )
    await close_all(connections)


class OneEcho(WSListener):
    """A connection that checks one echo and then stays open, idle."""

    def __init__(self, number: int, size: int):
        self.number, self.size = number, size
        self.echoed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, header(self.number, 0) + filler(self.size))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and not self.echoed.done():
            self.echoed.set_result(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()


async def _echoed(connections: list[tuple[WSTransport, Any]], size: int) -> None:
    for _, listener in connections:
        data = await asyncio.wait_for(listener.echoed, 30)
        check_echo(listener.number, 0, size, data, full=True)


async def idle(args: argparse.Namespace) -> None:
    warm = await open_all(args.uri, args.warm, lambda n: OneEcho(n, 32))
    await _echoed(warm, 32)
    emit("warm", conns=len(warm))
    if (await command())[0] != "more":
        return
    more = await open_all(args.uri, args.conns, lambda n: OneEcho(n, 32), first=args.warm)
    await _echoed(more, 32)
    await asyncio.sleep(args.settle)
    emit("ready", conns=len(more), verified=len(warm) + len(more))
    await command()  # anything, or the end of stdin: close
    await close_all(warm + more)


class Receiver(WSListener):
    """A broadcast receiver: records when the expected message came, and rejects others."""

    def __init__(self, group: Receivers):
        self.group = group

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.group.got(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.group.lost()


class Receivers:
    """The connections of one broadcast process, and the message they are waiting for."""

    def __init__(self) -> None:
        self.expected = b""
        self.left = 0
        self.last = 0.0
        #: When each connection got the armed message (one entry per connection).
        self.times: list[float] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False

    def arm(self, token: str, count: int) -> None:
        self.expected, self.left = b"B:" + token.encode(), count
        self.times = []
        self.done = asyncio.get_running_loop().create_future()

    def got(self, data: bytes) -> None:
        if data != self.expected:
            self._fail(f"got {data[:40]!r}, expected {self.expected!r}")
            return
        self.left -= 1
        if self.left >= 0:
            self.times.append(time.monotonic())
        if self.left == 0:
            self.last = self.times[-1]
            if not self.done.done():
                self.done.set_result(None)
        elif self.left < 0:
            self._fail("a connection got the broadcast twice")

    def lost(self) -> None:
        if not self.closing:
            self._fail("a connection dropped")

    def _fail(self, detail: str) -> None:
        if not self.done.done():
            self.done.set_exception(VerificationError(detail))


async def broadcast(args: argparse.Namespace) -> None:
    group = Receivers()
    connections = await open_all(
        args.uri, args.conns, lambda n: Receiver(group), source=args.source
    )
    emit("ready", conns=len(connections))
    while True:
        words = await command()
        if words[0] == "arm":
            group.arm(words[1], len(connections))
            emit("armed")
        elif words[0] == "go" and args.leader:
            sent = time.monotonic()
            connections[0][0].send(WSMsgType.TEXT, b"go:" + words[1].encode())
            emit("sent", at=sent)
        elif words[0] == "wait":
            try:
                await asyncio.wait_for(group.done, args.timeout)
            except TimeoutError:
                raise VerificationError(
                    f"{group.left} of {len(connections)} connections still waiting"
                    f" after {args.timeout} s"
                ) from None
            emit("received", at=group.last, conns=len(connections), times=group.times)
        else:
            break
    group.closing = True
    await close_all(connections)


MODES: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "echo": echo,
    "idle": idle,
    "broadcast": broadcast,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("uri")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--per-conn", type=int, default=1000)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--sample", type=int, default=101, help="compare every N-th echo in full")
    parser.add_argument("--warm", type=int, default=8)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--leader", action="store_true")
    parser.add_argument("--source", help="local address to connect from (broadcast)")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    raise_fd_limit()

    async def run() -> None:
        try:
            await MODES[args.mode](args)
        except (VerificationError, OSError, TimeoutError) as exc:
            emit("error", detail=f"{type(exc).__name__}: {exc}")

    asyncio.run(run())


if __name__ == "__main__":
    main()
