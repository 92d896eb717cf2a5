"""Keepalive (issues 9 and 11), on both sides of every engine.

A peer that goes silent is detected within ``ping_interval + ping_timeout`` (plus
:data:`SLACK`): ``onError`` says no pong came within ping_timeout, then ``onClose`` reports
1011, and nothing is left behind (threads, file descriptors, event-loop tasks). Silence is
made by a real TCP relay that turns into a black hole (:mod:`.relay`), for the blocking client,
the asyncio client and the server.

Pings are answered whether or not the user reads: an asyncio client that does not ``recv()``
for longer than the server's interval + timeout stays connected; the reader that makes it so
stops reading at ``max_queue`` (TCP backpressure), so it is no unbounded buffer.

A peer that stops reading while this side sends closes TCP's window: our ping then sits
behind megabytes of unsent data and no pong can come back. The pong wait must run from the
moment the ping is queued, not from when it is written (which is never), so such a peer is
dropped in time too. Raw sockets with a small receive buffer play the peer, so that the
window closes after a few hundred KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import polysocket
from polysocket.runtime import background

from .rawframes import BINARY, CLOSE, TEXT, LatePongs, RawClient, RawServer
from .relay import LeakCheck, Relay
from .server_support import SERVICE, ServerThread, events
from .support import WAIT, Recorder, require_capability, run_async, unread_in_kernel
from .test_flow import HELD_BACK, MIB, push_until_blocked

INTERVAL, TIMEOUT = 0.3, 0.5
#: The Done-when bound's slack over interval + timeout: the engines' close paths and the
#: hand-off to the handler thread, on a loaded machine.
SLACK = 1.0
#: The black-hole tests' keepalive, and the bound they are held to.
HOLE_INTERVAL, HOLE_TIMEOUT = 0.5, 0.5
BOUND = HOLE_INTERVAL + HOLE_TIMEOUT + SLACK
#: What the sender pushes at a peer that never reads: far more than the buffers between.
CHUNK, CHUNKS = 512 * 1024, 8
#: The raw peer's receive buffer (the kernel doubles it): TCP's window closes quickly.
SMALL_BUFFER = 16 * 1024
ECHO = SERVICE + "echo"


def assert_keepalive_error(text: str, timeout: float) -> None:
    """What onError (or the asyncio API's error) says, on every engine."""
    assert f"no pong came within ping_timeout={timeout} s" in text, text
    assert "unreachable or stopped answering" in text, text


def unmasked_key_frame(payload: bytes) -> bytes:
    """A client's text frame with the all-zero masking key: legal (RFC 6455 5.3 leaves the
    key's choice to the client) and free to build, where XOR-masking MiB in Python is slow."""
    return bytes([0x80 | TEXT, 0x80 | 127]) + struct.pack("!Q", len(payload)) + b"\0" * 4 + payload


def send_in_background(send: Callable[[], None]) -> threading.Thread:
    """Run ``send`` on a daemon thread: it blocks once the peer's window is closed."""

    def run() -> None:
        with contextlib.suppress(OSError, polysocket.WebsocketError):
            send()

    thread = threading.Thread(target=run, name="keepalive-flood", daemon=True)
    thread.start()
    return thread


def test_server_keepalive_fires_while_the_write_buffer_is_full(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    """A client that never reads while the echo handler sends it 4 MiB back, and never
    answers a ping: the server drops it within interval + timeout (onError "keepalive ping
    timeout", onClose 1011), though its ping never left the write buffer."""
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    with RawClient(server.port, "/websockets/v4/service/echo", receive_buffer=SMALL_BUFFER) as raw:
        message = unmasked_key_frame(b"x" * CHUNK)
        flood = send_in_background(lambda: raw.sock.sendall(message * CHUNKS))
        opened = events.wait("onopen", "echo")
        started = time.monotonic()
        closed = events.wait("onclose", "echo", timeout=INTERVAL + TIMEOUT + SLACK)
        elapsed = time.monotonic() - started
        assert events.of(opened.session_id)[-2:] == ["onerror", "onclose"], events.items
        assert_keepalive_error(events.wait("onerror", "echo").payload, TIMEOUT)
        assert closed.close_code == 1011
        assert elapsed < INTERVAL + TIMEOUT + SLACK, f"dropped after {elapsed:.1f} s"
    flood.join(5)


def test_server_keepalive_keeps_a_client_that_answers(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    """A client that reads its echoes and answers every ping at once stays connected over
    five intervals, although the server is sending to it all along."""
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    with RawClient(server.port, "/websockets/v4/service/echo") as raw:
        ponger = LatePongs(raw.sock, raw.reader, 0.0, mask=True).start()
        opened = events.wait("onopen", "echo")
        message = unmasked_key_frame(b"y" * 64 * 1024)
        deadline = time.monotonic() + 5 * INTERVAL
        while time.monotonic() < deadline and not ponger.ended.is_set():
            ponger.send(message)
            time.sleep(0.05)
        assert ponger.pings >= 3, f"{ponger.pings} ping(s) in {5 * INTERVAL} s"
        assert events.of(opened.session_id)[:1] == ["onopen"]
        assert "onclose" not in events.of(opened.session_id), events.items
        ponger.close(1000)
        assert ponger.ended.wait(5)
    assert events.wait("onclose", "echo").close_code == 1000


def test_client_keepalive_fires_while_the_write_buffer_is_full(
    engine: str, raw_server: Callable[..., RawServer]
) -> None:
    """The client side of the same: a server that stops reading while the client sends it
    4 MiB, and never answers a ping, is dropped within interval + timeout."""
    require_capability(engine, "keepalive")
    stop = threading.Event()

    def never_reads(sock: socket.socket, _: Any) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        stop.wait(INTERVAL + TIMEOUT + SLACK + 5)

    server = raw_server(conversation=never_reads)
    recorder = Recorder()
    client = polysocket.createWebsocket(
        server.uri, recorder, engine, ping_interval=INTERVAL, ping_timeout=TIMEOUT
    )
    try:
        assert recorder.wait_for(lambda r: "onopen" in r.names), recorder.errors
        started = time.monotonic()

        def flood() -> None:
            for _ in range(CHUNKS):
                client.send("z" * CHUNK)

        sender = send_in_background(flood)
        closed = recorder.wait_closed(timeout=INTERVAL + TIMEOUT + SLACK)
        elapsed = time.monotonic() - started
        assert closed, "the client kept a connection whose peer never answered a ping"
        assert recorder.names == ["onopen", "onerror", "onclose"], recorder.names
        assert_keepalive_error(recorder.errors[0], TIMEOUT)
        assert recorder.of("onclose")[0].close_code == client.close_code == 1011
        assert elapsed < INTERVAL + TIMEOUT + SLACK, f"dropped after {elapsed:.1f} s"
        sender.join(5)
    finally:
        stop.set()
        client.close()


def test_asyncio_client_keepalive_fires_while_the_write_buffer_is_full(
    engine: str, raw_server: Callable[..., RawServer]
) -> None:
    """The asyncio API's side: ``send()`` awaiting room for a server that stopped reading
    (and never answers a ping) raises ConnectionClosedError 1011 within interval + timeout."""
    require_capability(engine, "keepalive")
    stop = threading.Event()

    def never_reads(sock: socket.socket, _: Any) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        stop.wait(INTERVAL + TIMEOUT + SLACK + 5)

    server = raw_server(conversation=never_reads)

    async def main() -> None:
        ws = await polysocket.connect(
            server.uri, engine=engine, ping_interval=INTERVAL, ping_timeout=TIMEOUT
        )
        started = time.monotonic()
        chunk = "z" * CHUNK
        with pytest.raises(polysocket.ConnectionClosedError) as info:
            async with asyncio.timeout(INTERVAL + TIMEOUT + SLACK + WAIT):
                while True:  # until the window closes, then in send() until the keepalive
                    await ws.send(chunk)
        elapsed = time.monotonic() - started
        assert info.value.code == ws.close_code == 1011, info.value
        assert elapsed < INTERVAL + TIMEOUT + SLACK, f"dropped after {elapsed:.1f} s"
        with pytest.raises(polysocket.ConnectionClosedError) as received:
            await ws.recv()
        assert_keepalive_error(str(received.value.__cause__), TIMEOUT)
        await ws.close()

    try:
        run_async(main())
    finally:
        stop.set()


# -- a black-holed peer ---------------------------------------------------------------------


def test_client_detects_a_black_holed_server(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    """createWebsocket through a relay that turns into a black hole: onError (no pong within
    ping_timeout), then onClose 1011, within interval + timeout + 1 s; nothing left behind."""
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=None)  # only the client's keepalive is under test
    leaks = LeakCheck([background.loop, server._loop])
    with Relay(server.port) as relay:
        recorder = Recorder()
        client = polysocket.createWebsocket(
            relay.uri(ECHO),
            recorder,
            engine,
            ping_interval=HOLE_INTERVAL,
            ping_timeout=HOLE_TIMEOUT,
        )
        client.send("through the relay")
        assert recorder.wait_messages(1) == ["through the relay"]
        relay.black_hole()
        started = time.monotonic()
        assert recorder.wait_closed(BOUND + WAIT), "a black-holed server was never detected"
        elapsed = time.monotonic() - started
        assert recorder.names == ["onopen", "onmessage", "onerror", "onclose"], recorder.names
        assert_keepalive_error(recorder.errors[0], HOLE_TIMEOUT)
        assert recorder.of("onclose")[0].close_code == client.close_code == 1011
        assert elapsed <= BOUND, f"detected after {elapsed:.2f} s (bound {BOUND} s)"
        assert relay.swallowed > 0, "the client's ping never reached the black hole"
        recorder.assert_well_formed()
    # the relay's end reaches the server as TCP's: its session ends too, and with it
    # everything this test opened
    events.wait("onclose", "echo")
    leaks.assert_none_left()


def test_asyncio_client_detects_a_black_holed_server(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    """The asyncio API through the black hole, with nobody awaiting recv(): the connection
    ends with 1011 within the bound all the same, recv() then raises ConnectionClosedError
    caused by the keepalive timeout, and no task of the connection is left on the loop."""
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=None)
    leaks = LeakCheck([server._loop])

    async def main(relay: Relay) -> None:
        tasks_before = asyncio.all_tasks()
        ws = await polysocket.connect(
            relay.uri(ECHO), engine=engine, ping_interval=HOLE_INTERVAL, ping_timeout=HOLE_TIMEOUT
        )
        await ws.send("through the relay")
        assert await ws.recv() == "through the relay"
        relay.black_hole()
        started = time.monotonic()
        while ws.close_code is None and time.monotonic() - started < BOUND + WAIT:
            await asyncio.sleep(0.02)  # busy elsewhere: the core's reader notices alone
        elapsed = time.monotonic() - started
        assert ws.close_code == 1011, ws.close_code
        assert elapsed <= BOUND, f"detected after {elapsed:.2f} s (bound {BOUND} s)"
        with pytest.raises(polysocket.ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.code == 1011
        assert_keepalive_error(str(info.value.__cause__), HOLE_TIMEOUT)
        await ws.close()  # already ended: returns at once
        assert ws.close_code == 1011
        deadline = time.monotonic() + 3
        while (left := asyncio.all_tasks() - tasks_before) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not left, f"tasks left on the caller's loop: {left}"

    with Relay(server.port) as relay:
        run_async(main(relay))
        assert relay.swallowed > 0, "the client's ping never reached the black hole"
    events.wait("onclose", "echo")
    leaks.assert_none_left()


def test_server_detects_a_black_holed_client(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    """A client that answers every ping at once, until the relay between turns into a black
    hole: the server's session ends with onError then onClose 1011 within the bound."""
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=HOLE_INTERVAL, ping_timeout=HOLE_TIMEOUT)
    leaks = LeakCheck([server._loop])
    with Relay(server.port) as relay:
        raw = RawClient(relay.port, ECHO)
        ponger = LatePongs(raw.sock, raw.reader, 0.0, mask=True).start()
        opened = events.wait("onopen", "echo")
        # pongs through the relay keep the session: two pings answered, still open
        assert ponger.wait_pings(2), f"the session ended after {ponger.pings} ping(s)"
        assert events.of(opened.session_id) == ["onopen"], events.items
        relay.black_hole()
        started = time.monotonic()
        closed = events.wait("onclose", "echo", timeout=BOUND + WAIT)
        elapsed = time.monotonic() - started
        assert events.of(opened.session_id) == ["onopen", "onerror", "onclose"], events.items
        assert_keepalive_error(events.wait("onerror", "echo").payload, HOLE_TIMEOUT)
        assert closed.close_code == 1011
        assert elapsed <= BOUND, f"detected after {elapsed:.2f} s (bound {BOUND} s)"
        with contextlib.suppress(OSError):
            raw.sock.shutdown(socket.SHUT_RDWR)  # wakes the ponger's recv()
        raw.close()
        assert ponger.ended.wait(WAIT)
    leaks.assert_none_left()


# -- pings answered whether or not the user reads ---------------------------------------------


def test_asyncio_client_busy_elsewhere_stays_connected(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    """An asyncio client that awaits something else (never recv()) for three times the
    server's interval + timeout, with an echo waiting for it, still answers the server's
    pings: it stays connected and then receives what waited."""
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    busy = 3 * (INTERVAL + TIMEOUT)

    async def main() -> None:
        async with polysocket.connect(server.uri("echo"), engine=engine, ping_interval=None) as ws:
            await ws.send("before")
            await asyncio.sleep(busy)  # busy elsewhere: nobody reads
            assert ws.close_code is None, f"dropped while not reading ({ws.close_code})"
            assert await ws.recv() == "before"
            await ws.send("after")
            assert await ws.recv() == "after"
        assert ws.close_code == 1000

    run_async(main())
    closed = events.wait("onclose", "echo")
    assert events.of(closed.session_id) == ["onopen", "onmessage", "onmessage", "onclose"], (
        events.items
    )
    assert closed.close_code == 1000


def test_asyncio_client_that_does_not_read_stops_reading_at_max_queue(engine: str) -> None:
    """The asyncio API's reader, which answers pings while nobody awaits recv(), is bounded:
    a server pushing 1 MiB messages at a client that never calls recv() is held back by TCP
    once about max_queue bytes wait (the server's sends block), as the callback API is."""
    results: dict[str, int] = {}
    done = threading.Event()

    def conversation(sock: socket.socket, reader: Any) -> None:
        head = bytes([0x80 | BINARY, 127]) + MIB.to_bytes(8, "big")
        pushed = push_until_blocked(sock, head + b"s" * MIB, 96 * MIB, 1.5)
        results["read"] = pushed - unread_in_kernel(sock)
        done.set()
        sock.settimeout(WAIT)
        while reader.frame()[0] != CLOSE:  # the client's close frame
            pass

    raw = RawServer(conversation=conversation)

    async def main() -> None:
        async with polysocket.connect(
            raw.uri, engine=engine, max_size=2 * MIB, max_queue=MIB
        ) as ws:
            assert await asyncio.to_thread(done.wait, WAIT * 2), "the push never stalled"
            assert len(await ws.recv()) == MIB  # what waited is still there, whole

    try:
        run_async(main())
    finally:
        raw.close()
    assert results["read"] < HELD_BACK, f"the client read {results['read'] >> 20} MiB"
