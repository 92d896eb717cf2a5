"""SPEC section 4 and issue 3: the endpoint server, on every engine that can serve."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import polysocket

from .peer_processes import PEERS_DIR, PeerUnavailable, node_ws_location, require_peers
from .rawframes import TEXT, RawClient, close_frame, frame
from .server_support import ServerThread, add_descriptor, events, write_registry
from .support import WAIT, Recorder, client_engine, require_capability


@pytest.fixture
def server(serve_registry: Callable[..., ServerThread]) -> ServerThread:
    return serve_registry(max_size=1 << 20)


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_echo_endpoint_and_session_details(server: ServerThread, engine: str) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(
        server.uri("echo"), recorder, client_engine(engine), headers={"X-Polysocket-Test": "yes"}
    )
    client.send("hello")
    assert recorder.wait_messages(1) == ["hello"]
    opened = events.wait("onopen", "echo")
    assert opened.endpoint == "echo" and opened.session_id
    assert opened.remote_address[0] == "127.0.0.1"
    assert opened.request_headers.get("x-polysocket-test") == "yes"
    [session] = polysocket.getSessions("echo")
    assert session.id == opened.session_id
    client.close()
    closed = events.wait("onclose", "echo")
    assert closed.close_code == 1000
    assert events.of(opened.session_id) == ["onopen", "onmessage", "onclose"]
    assert polysocket.getSessions("echo") == []


def test_five_hundred_messages_on_one_connection(server: ServerThread) -> None:
    """A client that sends 500 messages at once: the session's onMessage sees each, in order,
    and every echo comes back, in order (past the point where an engine stops reading)."""
    sent = [f"message {i}" for i in range(500)]
    with RawClient(server.port, "/websockets/v4/service/echo") as client:
        client.send(*(frame(TEXT, text.encode()) for text in sent))
        echoes = [client.recv_frame() for _ in sent]
        client.send(close_frame(1000))
        assert client.reader.until_close()[0] == 1000
    assert echoes == [(TEXT, True, text.encode()) for text in sent]
    assert events.wait("onclose", "echo").close_code == 1000
    assert [e.payload for e in events.items if e.name == "onmessage"] == sent


def test_interop_matrix(engine: str, other_engine: str, tmp_path: Path) -> None:
    """A client on each engine against the server on each engine, both ways round (one way
    only with a server-only engine: it has no client)."""
    from polysocket.plugins import registry

    pairs = [
        (client_side, server_engine)
        for client_side, server_engine in ((engine, other_engine), (other_engine, engine))
        if "client" in registry.get(client_side).capabilities
    ]
    if not pairs:
        require_capability(other_engine, "client")
    for client_side, server_engine in pairs:
        require_capability(server_engine, "server")
        running = ServerThread(write_registry(tmp_path / server_engine), server_engine)
        try:
            recorder = Recorder()
            client = polysocket.createWebsocket(running.uri("echo"), recorder, client_side)
            client.send("text ✓ 𝄞")
            client.send(b"\x00\xffbinary")
            client.send("x" * (1 << 20))
            messages = recorder.wait_messages(3)
            assert messages == ["text ✓ 𝄞", b"\x00\xffbinary", "x" * (1 << 20)]
            client.close(4001, "matrix")
            assert recorder.of("onclose")[0].close_code == 4001
        finally:
            running.stop()


def test_server_side_close_codes_both_ways(server: ServerThread, engine: str) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri("echo"), recorder, client_engine(engine))
    client.send("close:4000:bye")
    assert recorder.wait_closed()
    call = recorder.of("onclose")[0]
    assert (call.close_code, call.close_reason) == (4000, "bye")
    assert events.wait("onclose", "echo").close_code == 4000

    events.clear()
    client = polysocket.createWebsocket(server.uri("echo"), Recorder(), client_engine(engine))
    events.wait("onopen", "echo")
    client.close(4002, "from client")
    closed = events.wait("onclose", "echo")
    assert (closed.close_code, closed.close_reason) == (4002, "from client")


def test_broadcast_reaches_every_session(server: ServerThread, engine: str) -> None:
    recorders = [Recorder() for _ in range(3)]
    clients = [
        polysocket.createWebsocket(server.uri("chat"), r, client_engine(engine)) for r in recorders
    ]
    deadline = time.monotonic() + WAIT
    while len(polysocket.getSessions("chat")) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(polysocket.getSessions("chat")) == 3
    clients[0].send("to everyone")
    for recorder in recorders:
        assert recorder.wait_messages(1) == ["to everyone"]
    assert polysocket.broadcast("chat", "from the server") == 3
    for recorder in recorders:
        assert recorder.wait_messages(2)[1] == "from the server"
    for client in clients:
        client.close()


BROADCAST_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_broadcast_frames_are_exact_at_every_length_boundary(
    server: ServerThread, kind: str
) -> None:
    """broadcast encodes a message once for every session: each gets one final, unmasked
    frame with no extension bits and the payload as sent, at each length encoding."""
    path = "/websockets/v4/service/chat"
    with RawClient(server.port, path) as first, RawClient(server.port, path) as second:
        deadline = time.monotonic() + WAIT
        while len(polysocket.getSessions("chat")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        for size in BROADCAST_SIZES:
            payload = "é" * (size // 2) + "x" * (size % 2) if kind == "text" else bytes(size)
            assert polysocket.broadcast("chat", payload) == 2
            wire = payload.encode() if isinstance(payload, str) else payload
            for client in (first, second):
                head = client.reader.exact(2)
                assert head[0] == (0x81 if kind == "text" else 0x82), (size, head)
                assert not head[1] & 0x80, "a server's frame must not be masked"
                client.reader.buffer[:0] = head
                assert client.recv_frame() == (head[0] & 0x0F, True, wire), size


def test_broadcasts_and_own_messages_keep_the_order_they_were_made_in(
    server: ServerThread, engine: str
) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri("interleaving"), recorder, client_engine(engine))
    try:
        client.send("200")
        expected = [f"{kind} {i}" for i in range(200) for kind in ("own", "all")]
        assert recorder.wait_messages(len(expected)) == expected
    finally:
        client.close()


def test_unknown_endpoint_is_refused_with_404(server: ServerThread, engine: str) -> None:
    with pytest.raises(polysocket.ConnectError) as info:
        polysocket.createWebsocket(server.uri("nope"), Recorder(), client_engine(engine))
    assert info.value.status == 404
    assert polysocket.getClients() == []


def test_http_answers(server: ServerThread) -> None:
    status, kind, body = http_get(server.url("/"))
    assert status == 200 and kind.startswith("text/html")
    assert "new WebSocket(" in body and "echo test" in body
    status, kind, body = http_get(server.url("/websockets/v4/endpoints"))
    listing = json.loads(body)
    assert status == 200 and kind.startswith("application/json")
    endpoints = sorted(e["endpoint"] for e in listing["endpoints"])
    assert endpoints == ["chat", "echo", "failing", "interleaving"]
    status, _, body = http_get(server.url("/websockets/v4/service/echo"))
    assert status == 426 and "WebSocket" in body
    status, _, _ = http_get(server.url("/no/such/page"))
    assert status == 404


def test_http_answers_are_sent_as_the_core_made_them(server: ServerThread) -> None:
    """No ETag added by the library, which would let a browser get a 304 instead of the
    core's answer (tornado adds one unless told not to)."""
    with urllib.request.urlopen(server.url("/"), timeout=WAIT) as response:
        assert response.status == 200 and "ETag" not in response.headers
    revalidate = urllib.request.Request(server.url("/"), headers={"If-None-Match": "*"})
    with urllib.request.urlopen(revalidate, timeout=WAIT) as response:
        assert response.status == 200


def test_handler_failing_in_every_callback_does_not_stop_the_server(
    server: ServerThread, engine: str
) -> None:
    failing = Recorder()
    client = polysocket.createWebsocket(server.uri("failing"), failing, client_engine(engine))
    client.send("anything")
    events.wait("onmessage", "failing")
    error = events.wait("onerror", "failing")
    assert "onMessage fails on purpose" in error.payload or "onOpen fails" in error.payload
    echo = Recorder()
    other = polysocket.createWebsocket(server.uri("echo"), echo, client_engine(engine))
    other.send("still served")
    assert echo.wait_messages(1) == ["still served"]
    assert not client.closed, "a failing callback closed the session"
    client.close()
    events.wait("onclose", "failing")
    other.close()


def test_garbage_instead_of_a_handshake(server: ServerThread, engine: str) -> None:
    for garbage in (
        b"\x00\xff\x13GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"A" * 70000,
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as raw:
            raw.sendall(garbage)
            raw.settimeout(2)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                raw.recv(1024)
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri("echo"), recorder, client_engine(engine))
    client.send("after garbage")
    assert recorder.wait_messages(1) == ["after garbage"]
    client.close()


def test_oversized_message_to_the_server_closes_with_1009(
    server: ServerThread, engine: str
) -> None:
    require_capability(engine, "framing")
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri("echo"), recorder, client_engine(engine))
    client.send(b"x" * ((1 << 20) + 1))
    assert recorder.wait_closed()
    assert recorder.of("onclose")[0].close_code == 1009
    error = events.wait("onerror", "echo")
    assert "max_size" in error.payload
    assert events.wait("onclose", "echo").close_code == 1009


def test_live_reload_adds_and_removes_endpoints(server: ServerThread, engine: str) -> None:
    add_descriptor(server.root, "late.websocket", "my-project/echo-handler", "late")
    recorder = Recorder()
    deadline = time.monotonic() + 2.5
    while True:
        try:
            client = polysocket.createWebsocket(server.uri("late"), recorder, client_engine(engine))
            break
        except polysocket.ConnectError:
            assert time.monotonic() < deadline, "a new descriptor was not served within 2 s"
            time.sleep(0.1)
    client.send("late hello")
    assert recorder.wait_messages(1) == ["late hello"]
    (server.root / "late.websocket").unlink()
    assert recorder.wait_closed(timeout=2.5), "the session of a removed endpoint stayed open"
    assert recorder.of("onclose")[0].close_code == 1001
    with pytest.raises(polysocket.ConnectError):
        polysocket.createWebsocket(server.uri("late"), Recorder(), client_engine(engine))


@pytest.mark.polysocket_server
def test_shutdown_closes_sessions_with_1001_and_runs_on_close(engine: str, tmp_path: Path) -> None:
    require_capability(engine, "server")
    events.clear()
    running = ServerThread(write_registry(tmp_path), engine)
    recorder = Recorder()
    polysocket.createWebsocket(running.uri("echo"), recorder, client_engine(engine))
    events.wait("onopen", "echo")
    running.stop()
    assert recorder.wait_closed()
    assert recorder.of("onclose")[0].close_code == 1001
    assert events.wait("onclose", "echo").close_code == 1001


def test_node_ws_client_against_the_server(server: ServerThread) -> None:
    try:
        node, ws_dir = node_ws_location()
    except PeerUnavailable as exc:
        if require_peers():
            pytest.fail(f"{exc} (POLYSOCKET_REQUIRE_PEERS is set)")
        pytest.skip(str(exc))
    result = subprocess.run(
        [node, str(PEERS_DIR / "ws_client.js"), server.uri("echo"), "4003", "hi", "ünïcode"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"POLYSOCKET_WS_PATH": str(ws_dir), "PATH": "/usr/bin:/bin"},
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"event": "open"}, result.stdout + result.stderr
    assert [e["data"] for e in lines if e["event"] == "message"] == ["hi", "ünïcode"]
    assert lines[-1]["event"] == "close" and lines[-1]["code"] == 4003
    closed = events.wait("onclose", "echo")
    assert (closed.close_code, closed.close_reason) == (4003, "node done")


def test_node_ws_client_gets_404_for_an_unknown_endpoint(server: ServerThread) -> None:
    try:
        node, ws_dir = node_ws_location()
    except PeerUnavailable as exc:
        if require_peers():
            pytest.fail(f"{exc} (POLYSOCKET_REQUIRE_PEERS is set)")
        pytest.skip(str(exc))
    result = subprocess.run(
        [node, str(PEERS_DIR / "ws_client.js"), server.uri("nope"), "1000", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"POLYSOCKET_WS_PATH": str(ws_dir), "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(result.stdout.splitlines()[0]) == {"event": "rejected", "status": 404}
