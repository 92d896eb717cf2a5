"""The command line, run as a user runs it: in its own process."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed

import polysocket


def run(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "polysocket", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_demo_runs_the_seed_example():
    result = run("demo")
    assert result.returncode == 0, result.stderr
    assert "Message: hello" in result.stderr
    assert "Connection closed (1000)" in result.stderr
    assert "open clients now: []" in result.stderr


def test_unknown_engine_is_a_clear_error():
    result = run("demo", "--engine", "nope")
    assert result.returncode == 2
    assert "unknown engine 'nope'" in result.stderr and "aiohttp" in result.stderr


@pytest.fixture
def served_sample():
    process = subprocess.Popen(
        [sys.executable, "-m", "polysocket", "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    port = None
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        if found:
            port = int(found.group(1))
            break
    assert port, "".join(lines)
    rest = []
    reader = threading.Thread(target=lambda: rest.extend(process.stderr), daemon=True)
    reader.start()
    yield process, port, rest
    if process.poll() is None:
        process.kill()
    process.wait(10)


def test_serve_then_sigterm_closes_sessions_with_1001_and_exits_0(served_sample):
    process, port, log = served_sample
    closed = threading.Event()
    seen = {}

    echoed = threading.Event()

    class Handler:
        def onMessage(self, message):
            seen["echo"] = message
            echoed.set()

        def onClose(self):
            seen["close"] = polysocket.getCloseCode()
            closed.set()

    uri = f"ws://127.0.0.1:{port}/websockets/v4/service/my-endpoint"
    client = polysocket.createWebsocket(uri, Handler())
    client.send("hello")
    assert echoed.wait(10)
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert closed.wait(10)
    assert seen == {"echo": "hello", "close": 1001}
    text = "".join(log)
    assert "Connection closed (1001)" in text, text


def test_connect_sends_stdin_lines_and_prints_replies(served_sample):
    _, port, _ = served_sample
    uri = f"ws://127.0.0.1:{port}/websockets/v4/service/my-endpoint"
    result = run("connect", uri, input="hello\nworld\n", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "< hello" in result.stdout and "< world" in result.stdout
    assert "closed: 1000" in result.stdout


def test_connect_to_an_unknown_endpoint_says_404(served_sample):
    _, port, _ = served_sample
    result = run("connect", f"ws://127.0.0.1:{port}/websockets/v4/service/nope", input="")
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr


def start_serve(*args, env=None):
    """``polysocket serve --port 0 ARGS`` in its own process: (process, port, log lines)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "polysocket", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return process, int(found.group(1)), lines
    process.wait(10)
    raise AssertionError("".join(lines))


def handshake_status(port, path, headers):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "GET",
            path,
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
                **headers,
            },
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_serve_with_tokens_origins_and_debug(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# who may connect\ncli-s3cret dana admin\n")
    process, port, lines = start_serve(
        "--tokens", str(tokens), "--origin", "https://app.example.com", "--debug"
    )
    try:
        assert any("1 bearer token(s) from " + str(tokens) in line for line in lines), lines
        path = "/websockets/v4/service/my-endpoint"
        token = {"Authorization": "Bearer cli-s3cret"}
        assert handshake_status(port, path, {}) == 401
        assert handshake_status(port, path, token) == 101
        assert handshake_status(port, path, {**token, "Origin": "http://evil.example"}) == 403
        assert handshake_status(port, path, {**token, "Origin": "https://app.example.com"}) == 101
        uri = f"ws://127.0.0.1:{port}{path}"
        result = run("connect", uri, input="")
        assert result.returncode == 1 and "HTTP 401" in result.stderr
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/websockets/v4/endpoints") as answer:
            assert b'"handler": "my-project/ws-handler"' in answer.read()  # --debug
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_serve_takes_tokens_from_the_environment_alone():
    process, port, _ = start_serve(env={"POLYSOCKET_TOKENS": "env-t0ken erin"})
    try:
        path = "/websockets/v4/service/my-endpoint"
        assert handshake_status(port, path, {}) == 401
        assert handshake_status(port, f"{path}?access_token=env-t0ken", {}) == 101
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_serve_refuses_a_bad_token_file_or_origin(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("lonely-token\n")
    result = run("serve", "--port", "0", "--tokens", str(tokens))
    assert result.returncode == 2
    assert f"{tokens}:1: expected 'TOKEN NAME [ROLE,ROLE]'" in result.stderr
    assert "lonely-token" not in result.stderr
    result = run("serve", "--port", "0", "--origin", "app.example.com")
    assert result.returncode == 2 and "'app.example.com' is not an origin" in result.stderr


STUCK_HANDLER = """
import time

def onMessage(message):
    time.sleep(60)  # stuck: onClose can never run
"""

FLOOD_HANDLER = """
import polysocket

def onOpen():
    session = polysocket.getSession()
    try:
        while True:  # to a client that never reads: the server's writer gets stuck too
            session.send(b"x" * 65536)
    except polysocket.ConnectionClosedError:
        pass
"""


def raw_upgrade(port, path):
    """A client socket past the handshake that never reads."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def _engine_param(name: str) -> object:
    from polysocket.plugins import registry

    installed = any(row.name == name and row.status == "available" for row in registry.statuses())
    reason = f"the {name} engine is not installed (pip install -e engines/polysocket-{name})"
    return pytest.param(name, marks=pytest.mark.skipif(not installed, reason=reason))


@pytest.mark.parametrize("engine", ["aiohttp", "websockets", "tornado", _engine_param("picows")])
def test_sigterm_exits_within_close_timeout_however_many_handlers_are_stuck(tmp_path, engine):
    """8 sessions whose onMessage sleeps 60 s and 2 whose client never reads while the
    handler floods it: SIGTERM sends 1001 to all at once; the process exits 0 within
    close_timeout (1.5 s) + 2 s, and says which handlers it left behind."""
    from websockets.sync.client import connect

    (tmp_path / "stuck.py").write_text(STUCK_HANDLER)
    (tmp_path / "flood.py").write_text(FLOOD_HANDLER)
    for name in ("stuck", "flood"):
        (tmp_path / f"{name}.websocket").write_text(
            f'{{"handler": "{name}", "endpoint": "{name}"}}'
        )
    command = ["serve", str(tmp_path), "--port", "0", "--engine", engine, "--close-timeout", "1.5"]
    process = subprocess.Popen(
        [sys.executable, "-m", "polysocket", *command],
        stderr=subprocess.PIPE,
        text=True,
    )
    with contextlib.ExitStack() as stack:
        stack.callback(process.wait, 10)
        stack.callback(lambda: process.poll() is None and process.kill())
        log = []
        for line in process.stderr:
            log.append(line)
            if found := re.search(r"on http://127\.0\.0\.1:(\d+)/", line):
                port = int(found.group(1))
                break
        else:
            pytest.fail("".join(log))
        reader = threading.Thread(target=lambda: log.extend(process.stderr), daemon=True)
        reader.start()
        uri = f"ws://127.0.0.1:{port}/websockets/v4/service/stuck"
        clients = [stack.enter_context(connect(uri, open_timeout=10)) for _ in range(8)]
        for client in clients:
            client.send("take your time")
        for _ in range(2):
            stack.enter_context(raw_upgrade(port, "/websockets/v4/service/flood"))
        time.sleep(0.5)  # every onMessage is asleep, every flood's buffers are full
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        codes = []
        for client in clients:
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
            codes.append(closed.value.rcvd.code if closed.value.rcvd else None)
        assert process.wait(10) == 0
        took = time.monotonic() - started
        reader.join(5)
        text = "".join(log)
        assert codes == [1001] * 8, text
        assert took <= 1.5 + 2, f"exit took {took:.1f} s; log:\n{text}"
        # the floods' onOpen ended with the close, so their onClose ran: not stuck
        assert (
            "shutdown: 8 session(s) still in a handler callback after close_timeout=1.5 s" in text
        ), text
        assert "8 x " in text and "stuck.py (endpoint 'stuck')" in text, text


def test_serve_admission_flags_are_checked_by_the_parser(capsys):
    from polysocket.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--open-timeout", "2.5", "--max-connections", "7", "--backlog", "4096"]
    )
    assert (args.open_timeout, args.max_connections, args.backlog) == (2.5, 7, 4096)
    assert build_parser().parse_args(["serve"]).backlog is None  # ServerOptions' 2048
    for bad in (
        ["--open-timeout", "0"],
        ["--max-connections", "-1"],
        ["--max-connections", "x"],
        ["--backlog", "0"],
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])
        assert "is not a positive" in capsys.readouterr().err
