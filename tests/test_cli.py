"""The command line, run as a user runs it: in its own process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

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


def test_serve_admission_flags_are_checked_by_the_parser(capsys):
    from polysocket.cli import build_parser

    args = build_parser().parse_args(["serve", "--open-timeout", "2.5", "--max-connections", "7"])
    assert (args.open_timeout, args.max_connections) == (2.5, 7)
    for bad in (["--open-timeout", "0"], ["--max-connections", "-1"], ["--max-connections", "x"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])
        assert "is not a positive" in capsys.readouterr().err
