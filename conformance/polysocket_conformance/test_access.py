"""Issue 9: who may open a session, decided before the 101 on every engine that can serve.

A foreign ``Origin`` gets 403, a handshake without credentials 401 when an authenticator is
set, a principal without the endpoint's role 403; none of them runs any handler code. The
handler reads the principal as ``getSession().principal``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

import polysocket
from polysocket.auth import Handshake, Principal, bearer_tokens

from .peer_processes import PEERS_DIR, PeerUnavailable, node_ws_location, require_peers
from .rawframes import TEXT, RawClient, close_frame, frame
from .server_support import SERVICE, ServerThread, events
from .support import WAIT, Recorder, client_engine

ECHO = SERVICE + "echo"
ALICE = Principal("alice", frozenset({"admin"}))
BOB = Principal("bob", frozenset())
TOKENS = "alice-s3cret alice admin\nbob-t0ken bob\n"


def handshake(
    port: int, path: str, headers: Mapping[str, str] = {}
) -> tuple[int, dict[str, str], str]:
    """An opening handshake that is expected to be refused: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request(
            "GET",
            path,
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Sec-WebSocket-Version": "13",
                **headers,
            },
        )
        response = connection.getresponse()
        fields = {name.lower(): value for name, value in response.getheaders()}
        return response.status, fields, response.read().decode()
    finally:
        connection.close()


def echo_once(port: int, path: str, headers: Mapping[str, str] = {}) -> None:
    """Open a session with a raw client, check one echo, close it with 1000."""
    with RawClient(port, path, headers=list(headers.items())) as client:
        assert client.status_line.startswith("HTTP/1.1 101"), client.status_line
        client.send(frame(TEXT, b"let in"))
        assert client.recv_frame() == (TEXT, True, b"let in")
        client.send(close_frame(1000))
        assert client.until_close()[0] == 1000


def opened(expected: int) -> list[str]:
    """Wait until ``expected`` sessions have opened, then a little longer for one more (a
    session that should not exist); the endpoints of every onopen seen."""
    deadline = time.monotonic() + WAIT
    while sum(e.name == "onopen" for e in events.items) < expected:
        assert time.monotonic() < deadline, f"{expected} sessions did not open: {events.items}"
        time.sleep(0.01)
    time.sleep(0.2)
    return [e.endpoint for e in events.items if e.name == "onopen"]


def test_a_foreign_origin_is_refused_with_403_before_any_handler_runs(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry(origins=["http://allowed.example"])
    own = f"http://127.0.0.1:{server.port}"
    for origin in ("http://evil.example", "https://allowed.example", "null"):
        status, _, body = handshake(server.port, ECHO, {"Origin": origin})
        assert status == 403, (origin, status, body)
        assert repr(origin) in body and "--origin" in body
    assert events.items == [] and polysocket.getSessions("echo") == []
    for allowed in ({"Origin": "http://allowed.example"}, {"Origin": own}, {}):
        echo_once(server.port, ECHO, allowed)
    assert opened(3) == ["echo"] * 3


def test_every_origin_is_allowed_without_a_list(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry()
    echo_once(server.port, ECHO, {"Origin": "http://anywhere.example"})
    assert opened(1) == ["echo"]


def test_an_authenticator_refuses_with_401_and_the_handler_sees_the_principal(
    serve_registry: Callable[..., ServerThread], engine: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    server = serve_registry(authenticate=bearer_tokens(tokens, env=None))
    for refused in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        status, fields, body = handshake(server.port, ECHO, refused)
        assert status == 401, (refused, status, body)
        assert fields["www-authenticate"].startswith("Bearer")
    with pytest.raises(polysocket.ConnectError) as info:
        polysocket.createWebsocket(server.uri("echo"), Recorder(), client_engine(engine))
    assert info.value.status == 401
    assert events.items == []

    recorder = Recorder()
    client = polysocket.createWebsocket(
        server.uri("echo"),
        recorder,
        client_engine(engine),
        headers={"Authorization": "Bearer alice-s3cret"},
    )
    client.send("as alice")
    assert recorder.wait_messages(1) == ["as alice"]
    assert events.wait("onopen", "echo").principal == ALICE
    client.close()
    events.wait("onclose", "echo")
    events.clear()
    echo_once(server.port, ECHO + "?access_token=bob-t0ken")  # what a browser does
    assert events.wait("onopen", "echo").principal == BOB


def test_roles_of_an_endpoint(serve_registry: Callable[..., ServerThread], tmp_path: Path) -> None:
    (tmp_path / "admin.websocket").write_text(
        json.dumps({"handler": "my-project/echo-handler", "endpoint": "admin", "roles": ["admin"]})
    )
    server = serve_registry(authenticate=bearer_tokens(environ={"T": TOKENS}, env="T"))
    path = SERVICE + "admin"
    assert handshake(server.port, path)[0] == 401
    status, _, body = handshake(server.port, path, {"Authorization": "Bearer bob-t0ken"})
    assert status == 403 and "'bob' lacks the role" in body
    assert events.items == []
    echo_once(server.port, path, {"Authorization": "Bearer alice-s3cret"})
    echo_once(server.port, ECHO, {"Authorization": "Bearer bob-t0ken"})  # no roles there
    assert sorted(opened(2)) == ["admin", "echo"]


def test_roles_without_an_authenticator_refuse_everybody(
    serve_registry: Callable[..., ServerThread], tmp_path: Path
) -> None:
    (tmp_path / "admin.websocket").write_text(
        json.dumps({"handler": "my-project/echo-handler", "endpoint": "admin", "roles": ["admin"]})
    )
    server = serve_registry()
    status, _, body = handshake(server.port, SERVICE + "admin")
    assert status == 401 and "authenticates nobody" in body
    assert events.items == []


def test_an_authenticator_that_fails_gets_500_and_the_server_goes_on(
    serve_registry: Callable[..., ServerThread],
) -> None:
    def authenticate(request: Handshake) -> Principal | None:
        if "fail" in request.query:
            raise RuntimeError("the authenticator has a bug")
        return Principal("anyone")

    server = serve_registry(authenticate=authenticate)
    status, _, body = handshake(server.port, ECHO + "?fail")
    assert status == 500 and "bug" not in body
    echo_once(server.port, ECHO)
    assert opened(1) == ["echo"]


def test_listing_and_404_hide_handlers_files_and_names_outside_debug(
    serve_registry: Callable[..., ServerThread], tmp_path: Path
) -> None:
    plain = serve_registry()
    status, _, body = handshake(plain.port, SERVICE + "nope")
    assert status == 404 and "echo" not in body
    listing = _get(plain.port, "/websockets/v4/endpoints")
    assert "echo-handler" not in listing and ".websocket" not in listing
    assert str(tmp_path) not in listing
    debug = serve_registry(debug=True)
    assert "echo-handler" in _get(debug.port, "/websockets/v4/endpoints")
    assert "known endpoints: " in handshake(debug.port, SERVICE + "nope")[2]


def _get(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def _node_client(uri: str, headers: Mapping[str, str]) -> list[dict[str, object]]:
    try:
        node, ws_dir = node_ws_location()
    except PeerUnavailable as exc:
        if require_peers():
            pytest.fail(f"{exc} (POLYSOCKET_REQUIRE_PEERS is set)")
        pytest.skip(str(exc))
    result = subprocess.run(
        [node, str(PEERS_DIR / "ws_client.js"), uri, "1000", "from node"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "POLYSOCKET_WS_PATH": str(ws_dir),
            "POLYSOCKET_WS_HEADERS": json.dumps(dict(headers)),
            "PATH": "/usr/bin:/bin",
        },
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines, result.stderr
    return lines


def test_node_ws_client_with_a_bearer_header(
    serve_registry: Callable[..., ServerThread], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    server = serve_registry(authenticate=bearer_tokens(tokens, env=None))
    assert _node_client(server.uri("echo"), {}) == [{"event": "rejected", "status": 401}]
    assert events.items == []
    lines = _node_client(server.uri("echo"), {"Authorization": "Bearer alice-s3cret"})
    assert [e.get("data") for e in lines if e["event"] == "message"] == ["from node"]
    assert lines[-1]["event"] == "close" and lines[-1]["code"] == 1000
    assert events.wait("onopen", "echo").principal == ALICE
