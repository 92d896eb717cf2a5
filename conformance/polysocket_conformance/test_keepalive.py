"""Keepalive while the write buffer is full (issue 9), on both sides of every engine.

A peer that stops reading while this side sends closes TCP's window: our ping then sits
behind megabytes of unsent data and no pong can come back. The pong wait must run from the
moment the ping is queued, not from when it is written (which is never), so such a peer is
dropped within ``ping_interval + ping_timeout``. Raw sockets with a small receive buffer play
the peer, so that the window closes after a few hundred KiB.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import polysocket

from .rawframes import TEXT, LatePongs, RawClient, RawServer
from .server_support import ServerThread, events
from .support import Recorder, require_capability

INTERVAL, TIMEOUT = 0.3, 0.5
#: Slack over interval + timeout for a loaded machine, and for the engines' close paths.
MARGIN = 2.5
#: What the sender pushes at a peer that never reads: far more than the buffers between.
CHUNK, CHUNKS = 512 * 1024, 8
#: The raw peer's receive buffer (the kernel doubles it): TCP's window closes quickly.
SMALL_BUFFER = 16 * 1024


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
    timeout", onClose 1006), though its ping never left the write buffer."""
    require_capability(engine, "keepalive")
    server = serve_registry(ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    with RawClient(server.port, "/websockets/v4/service/echo", receive_buffer=SMALL_BUFFER) as raw:
        message = unmasked_key_frame(b"x" * CHUNK)
        flood = send_in_background(lambda: raw.sock.sendall(message * CHUNKS))
        opened = events.wait("onopen", "echo")
        started = time.monotonic()
        closed = events.wait("onclose", "echo", timeout=INTERVAL + TIMEOUT + MARGIN)
        elapsed = time.monotonic() - started
        assert events.of(opened.session_id)[-2:] == ["onerror", "onclose"], events.items
        error = events.wait("onerror", "echo").payload
        assert "keepalive ping timeout" in error, error
        assert closed.close_code == 1006
        assert elapsed < INTERVAL + TIMEOUT + MARGIN, f"dropped after {elapsed:.1f} s"
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
        stop.wait(INTERVAL + TIMEOUT + MARGIN + 5)

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
        closed = recorder.wait_closed(timeout=INTERVAL + TIMEOUT + MARGIN)
        elapsed = time.monotonic() - started
        assert closed, "the client kept a connection whose peer never answered a ping"
        assert any("keepalive ping timeout" in e for e in recorder.errors), recorder.errors
        assert recorder.of("onclose")[0].close_code == 1006
        assert elapsed < INTERVAL + TIMEOUT + MARGIN, f"dropped after {elapsed:.1f} s"
        sender.join(5)
    finally:
        stop.set()
        client.close()
