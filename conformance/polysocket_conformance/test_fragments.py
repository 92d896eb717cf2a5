"""SPEC 2.3, 2.8 and 4: fragmented messages, on both sides, from hand-made frames.

What an engine must do whether or not its library does it: reassemble fragments with
control frames between them; count ``max_size`` over the whole message, not one frame;
check UTF-8 across fragment boundaries (1007); and fail the connection with 1002 for a
continuation frame out of place. The failing side sends its close frame first, so the peer
learns the code.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import polysocket
from polysocket.enginekit import MAX_FRAGMENTS
from polysocket_conformance.peer_processes import Peer
from polysocket_conformance.rawframes import (
    BINARY,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawClient,
    RawServer,
    _Reader,
    close_frame,
    frame,
)
from polysocket_conformance.server_support import ServerThread, events
from polysocket_conformance.support import WAIT, Recorder, require_capability

SERVER_MAX_SIZE = 1024
ECHO = "/websockets/v4/service/echo"


@pytest.fixture
def server(serve_registry: Callable[..., ServerThread]) -> ServerThread:
    return serve_registry(max_size=SERVER_MAX_SIZE)


def received_by_server() -> list[object]:
    return [e.payload for e in events.items if e.name == "onmessage"]


# -- client -> server -----------------------------------------------------------------------


def test_close_frame_in_the_middle_of_a_message_ends_the_server_session_normally(
    server: ServerThread,
) -> None:
    """RFC 6455 5.4 lets control frames interleave with fragments: the unfinished message
    is dropped and the close is a normal one (websockets fails it with 1002)."""
    with RawClient(server.port, ECHO) as client:
        client.send(frame(TEXT, b"hello", fin=False))
        client.send(close_frame(1000))
        code, _, _ = client.reader.until_close()
        assert code == 1000
    closed = events.wait("onclose", "echo")
    assert closed.close_code == 1000
    assert [e.name for e in events.items if e.name in ("onmessage", "onerror")] == []


def test_fragmented_messages_reach_the_server_whole(server: ServerThread) -> None:
    from websockets.sync.client import connect

    with connect(server.uri("echo")) as ws:
        ws.send(["frag", "ment", "ed ✓"])  # websockets sends a list as fragments
        assert ws.recv(timeout=WAIT) == "fragmented ✓"
        ws.send([b"\x00\x01", b"", b"\xff"])
        assert ws.recv(timeout=WAIT) == b"\x00\x01\xff"
    assert events.wait("onclose", "echo").close_code == 1000
    assert received_by_server() == ["fragmented ✓", b"\x00\x01\xff"]


def test_ten_thousand_fragments_reach_the_server_as_one_message(server: ServerThread) -> None:
    with RawClient(server.port, ECHO) as client:
        client.send(
            frame(TEXT, b"", fin=False),
            *[frame(CONTINUATION, b"", fin=False)] * 9998,
            frame(CONTINUATION, "✓".encode()),
        )
        assert client.recv_frame() == (TEXT, True, "✓".encode())
        client.send(close_frame(1000))
        assert client.until_close()[0] == 1000
    assert received_by_server() == ["✓"]


def test_control_frames_between_fragments(server: ServerThread) -> None:
    with RawClient(server.port, ECHO) as client:
        assert client.status_line.startswith("HTTP/1.1 101")
        client.send(
            frame(TEXT, b"a", fin=False),
            frame(PING, b"are you there"),
            frame(CONTINUATION, b"b", fin=False),
            frame(PONG, b"unsolicited"),  # allowed, and ignored
            frame(CONTINUATION, b"c"),
            frame(BINARY, b"\x01", fin=False),
            frame(CONTINUATION, b"\x02"),
        )
        # The pong is written while the frames are read; the echoes after onMessage ran.
        assert client.recv_frame() == (PONG, True, b"are you there")
        assert client.recv_frame() == (TEXT, True, b"abc")
        assert client.recv_frame() == (BINARY, True, b"\x01\x02")
        client.send(close_frame(1000, "done"))
        code, _, _ = client.until_close()
        assert code == 1000
    assert events.wait("onclose", "echo").close_code == 1000
    assert received_by_server() == ["abc", b"\x01\x02"]


def test_character_split_across_fragments_is_accepted(server: ServerThread) -> None:
    with RawClient(server.port, ECHO) as client:
        # "é" is C3 A9: each fragment alone is not valid UTF-8, the message is.
        client.send(frame(TEXT, b"caf\xc3", fin=False), frame(CONTINUATION, b"\xa9"))
        assert client.recv_frame() == (TEXT, True, "café".encode())
        client.send(close_frame(1000))
        assert client.until_close()[0] == 1000
    assert received_by_server() == ["café"]


def test_server_max_size_counts_the_whole_message(server: ServerThread, engine: str) -> None:
    """Two 600-byte fragments: each under max_size=1024, the message over it: 1009."""
    require_capability(engine, "framing")
    with RawClient(server.port, ECHO) as client:
        client.send(frame(BINARY, b"x" * 600, fin=False), frame(CONTINUATION, b"y" * 600))
        code, _, seen = client.until_close()
    assert code == 1009
    assert seen == []
    error = events.wait("onerror", "echo")
    assert "max_size" in error.payload
    assert events.wait("onclose", "echo").close_code == 1009
    assert received_by_server() == []


def test_server_message_at_max_size_in_fragments_is_accepted(server: ServerThread) -> None:
    with RawClient(server.port, ECHO) as client:
        half = SERVER_MAX_SIZE // 2
        client.send(frame(BINARY, b"x" * half, fin=False), frame(CONTINUATION, b"y" * half))
        assert client.recv_frame() == (BINARY, True, b"x" * half + b"y" * half)
        client.send(close_frame(1000))
        assert client.until_close()[0] == 1000


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([frame(TEXT, b"bad \xff")], 1007),
        ([frame(TEXT, b"ok ", fin=False), frame(CONTINUATION, b"\xc3\x28")], 1007),
        ([frame(TEXT, b"ok ", fin=False), frame(CONTINUATION, b"\xed\xa0\x80")], 1007),
        ([frame(CONTINUATION, b"nothing to continue")], 1002),
        ([frame(TEXT, b"first", fin=False), frame(TEXT, b"second")], 1002),
        ([frame(BINARY, b"first", fin=False), frame(BINARY, b"second")], 1002),
    ],
    ids=[
        "utf8-one-frame",
        "utf8-in-a-fragment",
        "utf8-surrogate",
        "lone-continuation",
        "text-inside-fragments",
        "binary-inside-fragments",
    ],
)
def test_server_fails_a_broken_message(
    server: ServerThread, frames: list[bytes], code: int
) -> None:
    """Invalid UTF-8 -> 1007, a continuation frame out of place -> 1002, on the wire too."""
    with RawClient(server.port, ECHO) as client:
        client.send(*frames)
        answer, _, seen = client.until_close()
    assert answer == code
    assert seen == []
    assert events.wait("onclose", "echo").close_code == code
    assert received_by_server() == []


# -- server (a peer) -> client --------------------------------------------------------------


def test_client_max_size_counts_the_whole_message(engine: str, peer: Peer) -> None:
    """cmd:frag:50 is 140 bytes in 50 fragments of at most 3: over max_size=100 as a whole."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine, max_size=100)
    client.send("cmd:frag:50")
    assert recorder.wait_closed(), "onClose did not run after an oversized fragmented message"
    assert recorder.names == ["onopen", "onerror", "onclose"]
    assert "100" in recorder.errors[0]
    assert recorder.of("onclose")[0].close_code == 1009
    assert peer.last_close()["code"] == 1009
    recorder.assert_well_formed()


def test_client_reassembles_fragments_around_control_frames(
    engine: str, raw_server: Callable[..., RawServer]
) -> None:
    server = raw_server(
        [
            frame(TEXT, b"caf\xc3", fin=False, mask=False),
            frame(PING, b"ping", mask=False),
            frame(CONTINUATION, b"\xa9 ", fin=False, mask=False),
            frame(CONTINUATION, b"ok", mask=False),
            frame(BINARY, b"", fin=False, mask=False),
            frame(CONTINUATION, b"\x00", mask=False),
        ]
    )
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri, recorder, engine)
    assert recorder.wait_messages(2) == ["café ok", b"\x00"]
    client.close()
    assert recorder.wait_closed()
    assert server.done.wait(WAIT)
    assert server.close_code == 1000
    assert (PONG, b"ping") in server.received
    recorder.assert_well_formed()


def test_close_frame_in_the_middle_of_a_message_ends_the_client_normally(
    engine: str, raw_server: Callable[..., RawServer]
) -> None:
    def conversation(sock: socket.socket, reader: Any) -> None:
        sock.sendall(frame(TEXT, b"hel", fin=False, mask=False) + close_frame(1000, mask=False))
        code, _, _ = reader.until_close()
        assert code == 1000

    server = raw_server(conversation=conversation)
    recorder = Recorder()
    polysocket.createWebsocket(server.uri, recorder, engine)
    assert recorder.wait_closed()
    assert recorder.of("onclose")[0].close_code == 1000
    assert recorder.of("onmessage") == [] and recorder.of("onerror") == []


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([frame(TEXT, b"\xff", mask=False)], 1007),
        (
            [frame(TEXT, b"a", fin=False, mask=False), frame(CONTINUATION, b"\xc0", mask=False)],
            1007,
        ),
        ([frame(CONTINUATION, b"x", mask=False)], 1002),
        ([frame(TEXT, b"a", fin=False, mask=False), frame(TEXT, b"b", mask=False)], 1002),
    ],
    ids=["utf8", "utf8-in-a-fragment", "lone-continuation", "text-inside-fragments"],
)
def test_client_fails_a_broken_message(
    engine: str, raw_server: Callable[..., RawServer], frames: list[bytes], code: int
) -> None:
    server = raw_server(frames)
    recorder = Recorder()
    polysocket.createWebsocket(server.uri, recorder, engine, close_timeout=2)
    assert recorder.wait_closed(), "onClose did not run after a broken message"
    assert recorder.names == ["onopen", "onerror", "onclose"]
    assert recorder.of("onclose")[0].close_code == code
    assert server.done.wait(WAIT)
    assert server.close_code == code, "the server did not get the failing close frame"
    recorder.assert_well_formed()


# -- endless messages (issue 9) -------------------------------------------------------------

#: Client frames: an empty continuation frame masked with the all-zero key (nothing to mask).
EMPTY_CONTINUATION = bytes([CONTINUATION, 0x80]) + bytes(4)
#: How long an engine may take to count MAX_FRAGMENTS frames on a loaded machine (tornado,
#: the slowest, takes about 3 s unloaded).
FLOOD_LIMIT = 12.0


def test_endless_empty_fragments_fail_with_1009_and_starve_nobody(
    server: ServerThread, engine: str
) -> None:
    """A message of endless empty continuation frames never reaches max_size: past
    ``enginekit.MAX_FRAGMENTS`` frames the server fails it with 1009, and another client's
    echoes stay quick meanwhile. (The flood is bounded, a little over the limit, so that a
    sending thread does not hold the GIL from the server's loop in this process.)"""
    require_capability(engine, "framing")
    from websockets.sync.client import connect

    with RawClient(server.port, ECHO) as flooder:
        flood_id = events.wait("onopen", "echo").session_id
        endless = frame(TEXT, b"", fin=False) + EMPTY_CONTINUATION * (MAX_FRAGMENTS + 10_000)
        codes: list[int | None] = []

        def flood() -> None:
            with contextlib.suppress(OSError):
                flooder.sock.sendall(endless)

        def read_close() -> None:
            with contextlib.suppress(OSError):
                codes.append(flooder.reader.until_close()[0])  # answered, like a real client

        threads = [threading.Thread(target=f, daemon=True) for f in (flood, read_close)]
        with connect(server.uri("echo")) as other:
            started, slowest = time.monotonic(), 0.0
            for thread in threads:
                thread.start()
            while threads[1].is_alive():
                assert time.monotonic() - started < FLOOD_LIMIT, "the endless message goes on"
                sent = time.monotonic()
                other.send("still served?")
                assert other.recv(timeout=WAIT) == "still served?"
                slowest = max(slowest, time.monotonic() - sent)
                time.sleep(0.05)
        for thread in threads:
            thread.join(WAIT)
    assert codes == [1009], f"no 1009 close frame in {WAIT} s: the endless message went on"
    deadline = time.monotonic() + WAIT
    while "onclose" not in events.of(flood_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events.of(flood_id) == ["onopen", "onerror", "onclose"]
    flooded = [e for e in events.items if e.session_id == flood_id]
    assert flooded[-1].close_code == 1009
    error = flooded[1].payload
    assert f"more than {MAX_FRAGMENTS} fragments" in error, error
    assert slowest < 2.0, f"another client waited {slowest:.1f} s for an echo"


def test_endless_fragments_sent_with_the_handshake_are_counted(
    server: ServerThread, engine: str
) -> None:
    """The same flood written together with the opening handshake, before the 101 came:
    the frames that arrive with the request are counted too (an engine that counts bytes
    must start at the first one, or it loses the frame boundaries)."""
    require_capability(engine, "framing")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {ECHO} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    endless = frame(TEXT, b"", fin=False) + EMPTY_CONTINUATION * (MAX_FRAGMENTS + 10_000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sender = threading.Thread(target=sock.sendall, args=(request + endless,), daemon=True)
        sender.start()
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk, f"no handshake answer: {response!r}"
            response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        code, _, _ = _Reader(sock, rest).until_close()
        sender.join(WAIT)
    assert code == 1009
    assert events.wait("onclose", "echo").close_code == 1009


def test_client_fails_endless_empty_fragments_with_1009(
    engine: str, raw_server: Callable[..., RawServer]
) -> None:
    """The client side of the same: a server sending one message in more than
    MAX_FRAGMENTS empty frames gets a 1009 close frame; onError, then onClose 1009."""
    codes: list[int | None] = []

    def endless(sock: socket.socket, reader: Any) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(frame(TEXT, b"", fin=False, mask=False))
            batch = bytes([CONTINUATION, 0]) * 10_000
            for _ in range(MAX_FRAGMENTS // 10_000 + 2):
                sock.sendall(batch)
            code, _, _ = reader.until_close()
            codes.append(code)

    server = raw_server(conversation=endless)
    recorder = Recorder()
    polysocket.createWebsocket(server.uri, recorder, engine)
    assert recorder.wait_closed(FLOOD_LIMIT), "the endless message goes on"
    assert recorder.names == ["onopen", "onerror", "onclose"]
    assert f"more than {MAX_FRAGMENTS} fragments" in recorder.errors[0], recorder.errors
    assert recorder.of("onclose")[0].close_code == 1009
    assert server.done.wait(WAIT) and codes == [1009]
