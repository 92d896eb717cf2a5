"""``polysocket connect``'s flags, against a raw websockets server that reports what it got."""

from __future__ import annotations

import asyncio
import json
import queue
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trustme
from polysocket_conformance.peer_processes import port_outside_the_ephemeral_range
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol


class ReportingServer:
    """websockets, used raw, in a thread: each connection is answered with one JSON line
    (its request headers and subprotocol), then echoes."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port = 0
        self._tls = tls
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        await ws.send(json.dumps({"headers": headers, "subprotocol": ws.subprotocol}))
        async for message in ws:
            await ws.send(message)

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(
            self._handler, "127.0.0.1", 0, ssl=self._tls, select_subprotocol=_first_offered
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def __enter__(self) -> ReportingServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set_result, None)
        self._thread.join(10)


def _first_offered(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    return offered[0] if offered else None  # websockets refuses no offer if given a list


def connect(*args: str, stdin: str = "ping\n") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polysocket", "connect", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def report(stdout: str) -> dict[str, object]:
    line = next(line for line in stdout.splitlines() if line.startswith("< {"))
    return json.loads(line[2:])  # type: ignore[no-any-return]


def test_header_origin_and_subprotocol_flags_reach_the_server() -> None:
    with ReportingServer() as server:
        result = connect(
            f"ws://127.0.0.1:{server.port}/",
            "-H", "X-Token: abc 123",
            "--header", "X-Other:two",
            "--origin", "https://app.example",
            "--subprotocol", "superchat",
            "--subprotocol", "chat",
            "--ping-interval", "off",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = report(result.stdout)
    headers = got["headers"]
    assert isinstance(headers, dict)
    assert headers["x-token"] == "abc 123" and headers["x-other"] == "two"
    assert headers["origin"] == "https://app.example"
    assert [p.strip() for p in str(headers["sec-websocket-protocol"]).split(",")] == [
        "superchat",
        "chat",
    ]
    assert got["subprotocol"] == "superchat"  # the first offered: the order was kept
    assert "< ping" in result.stdout  # and the session went on: the echo came back


def test_a_malformed_header_is_a_usage_error() -> None:
    result = connect("ws://127.0.0.1:9/", "-H", "no colon here")
    assert result.returncode == 2
    assert "'Name: value'" in result.stderr


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[ReportingServer, Path]]:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    with ReportingServer(context) as server, authority.cert_pem.tempfile() as cafile:
        yield server, Path(cafile)


def test_wss_to_an_unknown_authority_fails_then_cafile_or_insecure_connects(
    tls_server: tuple[ReportingServer, Path],
) -> None:
    server, cafile = tls_server
    uri = f"wss://127.0.0.1:{server.port}/"
    refused = connect(uri, stdin="")
    assert refused.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
    for flags in (["--cafile", str(cafile)], ["-k"], ["--insecure"]):
        result = connect(uri, *flags)
        assert result.returncode == 0, (flags, result.stderr)
        assert "< ping" in result.stdout, (flags, result.stdout)


def test_a_missing_cafile_is_reported_without_a_traceback() -> None:
    result = connect("wss://127.0.0.1:9/", "--cafile", "/nonexistent/ca.pem", stdin="")
    assert result.returncode == 1
    assert "polysocket:" in result.stderr and "Traceback" not in result.stderr


def test_proxy_none_connects_directly_despite_the_environment() -> None:
    with ReportingServer() as server:
        uri = f"ws://127.0.0.1:{server.port}/"
        env_proxy = "http://127.0.0.1:9"  # nothing listens there
        base = [sys.executable, "-m", "polysocket", "connect", uri]
        env = {"PATH": "/usr/bin:/bin", "http_proxy": env_proxy, "no_proxy": ""}
        through = subprocess.run(
            base, input="", capture_output=True, text=True, timeout=60, env=env
        )
        direct = subprocess.run(
            [*base, "--proxy", "none"], input="ping\n", capture_output=True, text=True,
            timeout=60, env=env,
        )  # fmt: skip
    assert through.returncode == 1 and "127.0.0.1:9" in through.stderr, through.stderr
    assert direct.returncode == 0, direct.stderr
    assert "< ping" in direct.stdout


def _serve(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "polysocket", "serve", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if f":{port}/" in line:
            return process
    raise AssertionError(f"polysocket serve did not start on {port}")


def test_reconnect_flag_survives_a_server_restart() -> None:
    """The sample server killed (SIGKILL) and started again on the same port: `connect
    --reconnect` says it lost the connection, reconnects, and echoes the next line."""
    port = port_outside_the_ephemeral_range()
    server = _serve(port)
    client = subprocess.Popen(
        [
            sys.executable, "-m", "polysocket", "connect", "--reconnect",
            f"ws://127.0.0.1:{port}/websockets/v4/service/my-endpoint",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    stdout, stdin = client.stdout, client.stdin
    assert stdout is not None and stdin is not None

    def read_lines() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()

    def wait_for(text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in lines.get(timeout=max(0.01, deadline - time.monotonic())):
                    return
            except queue.Empty:
                break
        raise AssertionError(f"no {text!r} from polysocket connect within {timeout} s")

    try:
        wait_for("connected", 20)
        stdin.write("before\n")
        stdin.flush()
        wait_for("< before", 10)
        server.kill()
        server.wait(10)
        server = _serve(port)
        # the default policy: the first attempt within 5 s (jitter), the next 3.1 s + jitter
        wait_for("connected", 30)
        stdin.write("after\n")
        stdin.flush()
        wait_for("< after", 10)
        stdin.close()
        assert client.wait(10) == 0
        stderr = client.stderr.read() if client.stderr else ""
        assert "reconnecting" in stderr, stderr
    finally:
        client.kill()
        server.kill()
        server.wait(10)
