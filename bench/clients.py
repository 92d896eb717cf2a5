"""The clients under test, one run per process: ``python -m bench.clients TEST API URI ...``.

    throughput URI --api sync|async|raw|wsapp --engine E --messages N --size S
    rtt        URI --api sync|wsclient --messages N
    openclose  URI --api sync|wsclient --messages N
    memory     URI --api sync|async|raw --engine E --conns N

APIs: ``sync`` is ``polysocket.createWebsocket`` (callbacks on handler threads), ``async``
``polysocket.connect``; ``raw`` the library the engine wraps, used directly; ``wsclient``
websocket-client's ``create_connection`` and ``wsapp`` its ``WebSocketApp``.

Each prints one JSON line, "done": the elapsed seconds of the measured section (connection
set-up excluded, except for openclose where it is the point), the messages handled, and the
CPU seconds of this process over the section (``resource.getrusage``: every thread).
Every echo's header is checked, every ``--sample``-th one (and the last) in full.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.harness import (
    VerificationError,
    check_echo,
    emit,
    filler,
    header,
    raise_fd_limit,
    rss_kib,
    sampled,
    self_cpu_seconds,
)


class Section:
    """Wall-clock and CPU time of the measured section."""

    def __enter__(self) -> Section:
        self.cpu, self.start = self_cpu_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.start
        self.cpu = self_cpu_seconds() - self.cpu


class Checker:
    """Counts and verifies the echoes of one connection (number 0), from any thread."""

    def __init__(self, count: int, size: int, every: int):
        self.count, self.size, self.every = count, size, every
        self.seen = self.verified = 0
        self.error: str | None = None
        self.done = threading.Event()

    def __call__(self, message: str | bytes) -> None:
        seq = self.seen
        full = sampled(seq, self.count, self.every)
        try:
            check_echo(0, seq, self.size, message, full)
        except VerificationError as exc:
            self.error = str(exc)
            self.done.set()
            return
        self.verified += full
        self.seen += 1
        if self.seen == self.count:
            self.done.set()

    def result(self) -> None:
        if self.error:
            raise VerificationError(self.error)
        if self.seen != self.count:
            raise VerificationError(f"{self.seen} echoes of {self.count}")


def messages(count: int, size: int) -> list[str]:
    """The text messages of one run, built before the measured section."""
    fill = filler(size)
    return [(header(0, seq) + fill).decode() for seq in range(count)]


# --- throughput: many messages on one connection, pipelined -----------------------------------


def throughput_sync(args: argparse.Namespace, payloads: list[str]) -> tuple[Section, Checker]:
    import polysocket

    checker = Checker(len(payloads), args.size, args.sample)
    handler = type("Counter", (), {"onMessage": staticmethod(checker)})
    client = polysocket.createWebsocket(args.uri, handler, args.engine)
    with Section() as section:
        for message in payloads:
            client.send(message)
        checker.done.wait(args.timeout)
    client.close()
    return section, checker


def throughput_wsapp(args: argparse.Namespace, payloads: list[str]) -> tuple[Section, Checker]:
    import websocket

    checker = Checker(len(payloads), args.size, args.sample)
    opened = threading.Event()
    app = websocket.WebSocketApp(
        args.uri, on_open=lambda ws: opened.set(), on_message=lambda ws, m: checker(m)
    )
    thread = threading.Thread(target=app.run_forever, daemon=True)
    thread.start()
    if not opened.wait(30):
        raise RuntimeError("WebSocketApp did not open")
    with Section() as section:
        for message in payloads:
            app.send(message)
        checker.done.wait(args.timeout)
    app.close()
    # run_forever sometimes takes seconds to notice the close; the thread is a daemon.
    thread.join(1)
    return section, checker


async def _pump(
    send: Callable[[str], Awaitable[Any]],
    receive: Callable[[], Awaitable[Any]],
    payloads: list[str],
    checker: Checker,
) -> Section:
    async def receiving() -> None:
        for _ in payloads:
            message = await receive()
            checker(message if isinstance(message, str | bytes) else message.data)
            if checker.error:
                return

    with Section() as section:
        task = asyncio.create_task(receiving())
        for message in payloads:
            await send(message)
        await task
    return section


async def throughput_async(
    args: argparse.Namespace, payloads: list[str]
) -> tuple[Section, Checker]:
    import polysocket

    checker = Checker(len(payloads), args.size, args.sample)
    async with polysocket.connect(args.uri, engine=args.engine) as ws:
        section = await _pump(ws.send, ws.recv, payloads, checker)
    return section, checker


async def throughput_raw(args: argparse.Namespace, payloads: list[str]) -> tuple[Section, Checker]:
    checker = Checker(len(payloads), args.size, args.sample)
    if args.engine == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(args.uri) as ws:
            section = await _pump(ws.send_str, ws.receive, payloads, checker)
    elif args.engine == "websockets":
        from websockets.asyncio.client import connect

        async with connect(args.uri, compression=None, max_size=None) as connection:
            section = await _pump(connection.send, connection.recv, payloads, checker)
    elif args.engine == "tornado":
        from tornado.websocket import websocket_connect

        client = await websocket_connect(args.uri, max_message_size=64 * 1024 * 1024)
        section = await _pump(client.write_message, client.read_message, payloads, checker)
        client.close()
    elif args.engine == "picows":
        section = await _picows_pump(args.uri, payloads, checker)
    else:
        raise ValueError(f"no raw client for {args.engine}")
    return section, checker


async def _picows_pump(uri: str, payloads: list[str], checker: Checker) -> Section:
    """picows' client, as its own examples use it: send from the caller, frames to a listener
    (no backpressure wait: picows buffers in the transport, as the others do in effect)."""
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    done = asyncio.get_running_loop().create_future()

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                checker(frame.get_payload_as_utf8_text())
                if checker.done.is_set() and not done.done():
                    done.set_result(None)

    transport, _ = await ws_connect(Listener, uri, max_frame_size=64 * 1024 * 1024)
    encoded = [message.encode() for message in payloads]
    with Section() as section:
        for data in encoded:
            transport.send(WSMsgType.TEXT, data)
        await asyncio.wait_for(done, 120)
    transport.send_close(WSCloseCode.OK)
    transport.disconnect()
    return section


def throughput(args: argparse.Namespace) -> None:
    payloads = messages(args.messages, args.size)
    if args.api == "sync":
        section, checker = throughput_sync(args, payloads)
    elif args.api == "wsapp":
        section, checker = throughput_wsapp(args, payloads)
    elif args.api == "async":
        section, checker = asyncio.run(throughput_async(args, payloads))
    else:
        section, checker = asyncio.run(throughput_raw(args, payloads))
    checker.result()
    emit(
        "done",
        elapsed=section.elapsed,
        cpu=section.cpu,
        messages=checker.seen,
        verified=checker.verified,
    )


# --- round-trip latency: one message at a time ------------------------------------------------


def rtt(args: argparse.Namespace) -> None:
    payloads = messages(args.messages + args.warmup, args.size)
    latencies: list[float] = []
    checker = Checker(len(payloads), args.size, args.sample)
    send: Callable[[str], object]
    receive: Callable[[], str | bytes]
    close: Callable[[], object]
    if args.api == "sync":
        import polysocket

        replies: queue.SimpleQueue[str | bytes] = queue.SimpleQueue()
        handler = type("Replies", (), {"onMessage": staticmethod(replies.put)})
        client = polysocket.createWebsocket(args.uri, handler, args.engine)
        send, receive, close = client.send, lambda: replies.get(timeout=30), client.close
    else:
        import websocket

        ws = websocket.create_connection(args.uri)
        send, receive, close = ws.send, ws.recv, ws.close
    for message in payloads[: args.warmup]:
        send(message)
        checker(receive())
    with Section() as section:
        for message in payloads[args.warmup :]:
            began = time.perf_counter()
            send(message)
            reply = receive()
            latencies.append(time.perf_counter() - began)
            checker(reply)
    close()
    checker.result()
    emit(
        "done",
        elapsed=section.elapsed,
        cpu=section.cpu,
        messages=len(latencies),
        verified=checker.verified,
        latencies=latencies,
    )


# --- opening and closing connections ----------------------------------------------------------


def openclose(args: argparse.Namespace) -> None:
    closed = 0
    if args.api == "sync":
        import polysocket

        handler = type("Quiet", (), {})
        with Section() as section:
            for _ in range(args.messages):
                client = polysocket.createWebsocket(args.uri, handler, args.engine)
                client.close()
                closed += client.close_code == 1000
    else:
        import websocket

        with Section() as section:
            for _ in range(args.messages):
                ws = websocket.create_connection(args.uri)
                ws.close()
                closed += ws.connected is False
    if closed != args.messages:
        raise VerificationError(f"{closed} of {args.messages} connections closed cleanly")
    emit("done", elapsed=section.elapsed, cpu=section.cpu, messages=closed, verified=closed)


# --- memory: idle connections -----------------------------------------------------------------


async def _open_async(args: argparse.Namespace, count: int, keep: list[Any]) -> None:
    """``count`` connections through polysocket.connect or the raw client, one echo each."""
    for number in range(len(keep), len(keep) + count):
        message = (header(number, 0) + filler(32)).decode()
        if args.api == "async":
            import polysocket

            ws: Any = await polysocket.connect(args.uri, engine=args.engine).__aenter__()
            await ws.send(message)
            reply = await ws.recv()
        elif args.engine == "aiohttp":
            import aiohttp

            session = aiohttp.ClientSession()
            ws = await session.ws_connect(args.uri)
            await ws.send_str(message)
            reply = (await ws.receive()).data
            ws = (session, ws)
        elif args.engine == "websockets":
            from websockets.asyncio.client import connect

            ws = await connect(args.uri, compression=None)
            await ws.send(message)
            reply = await ws.recv()
        elif args.engine == "tornado":
            from tornado.websocket import websocket_connect

            ws = await websocket_connect(args.uri)
            await ws.write_message(message)
            reply = await ws.read_message()
        else:
            reply, ws = await _picows_one(args.uri, message)
        check_echo(number, 0, 32, reply, full=True)
        keep.append(ws)


async def _picows_one(uri: str, message: str) -> tuple[str, Any]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    reply = asyncio.get_running_loop().create_future()

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT and not reply.done():
                reply.set_result(frame.get_payload_as_utf8_text())

    transport, listener = await ws_connect(Listener, uri)
    transport.send(WSMsgType.TEXT, message.encode())
    return await reply, (transport, listener)


def _open_sync(args: argparse.Namespace, count: int, keep: list[Any]) -> None:
    import polysocket

    for number in range(len(keep), len(keep) + count):
        replies: queue.SimpleQueue[str | bytes] = queue.SimpleQueue()
        handler = type("Replies", (), {"onMessage": staticmethod(replies.put)})
        client = polysocket.createWebsocket(args.uri, handler, args.engine)
        client.send((header(number, 0) + filler(32)).decode())
        check_echo(number, 0, 32, replies.get(timeout=30), full=True)
        keep.append(client)


def memory(args: argparse.Namespace) -> None:
    keep: list[Any] = []
    pid = os.getpid()

    def measure() -> int:
        gc.collect()
        time.sleep(args.settle)
        return rss_kib(pid)

    if args.api == "sync":
        _open_sync(args, args.warm, keep)
        before = measure()
        _open_sync(args, args.conns, keep)
        after = measure()
    else:

        async def run() -> tuple[int, int]:
            await _open_async(args, args.warm, keep)
            before = await asyncio.to_thread(measure)
            await _open_async(args, args.conns, keep)
            return before, await asyncio.to_thread(measure)

        before, after = asyncio.run(run())
    emit(
        "done",
        kib_per_conn=(after - before) / args.conns,
        rss_before=before,
        rss_after=after,
        verified=len(keep),
    )
    os._exit(0)  # the connections' clean closes are not measured: skip them


TESTS = {"throughput": throughput, "rtt": rtt, "openclose": openclose, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", choices=sorted(TESTS))
    parser.add_argument("uri")
    parser.add_argument("--api", required=True)
    parser.add_argument("--engine", default="aiohttp")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--sample", type=int, default=101)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--warm", type=int, default=4)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    raise_fd_limit()
    try:
        TESTS[args.test](args)
    except VerificationError as exc:
        emit("error", detail=str(exc))


if __name__ == "__main__":
    main()
