"""Admission (issue 9): what a server does with connections before the handshake, the same
on every engine. Driven by raw sockets: peers that send nothing, half a request, too many
header lines, or more handshakes than ``max_connections`` allows.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polysocket_conformance.rawframes import TEXT, RawClient, close_frame, frame
from polysocket_conformance.server_support import ServerThread, events
from polysocket_conformance.support import WAIT, require_capability, ss_command

ECHO = "/websockets/v4/service/echo"
OPEN_TIMEOUT = 0.5


def dropped_after(sock: socket.socket, limit: float = 5.0) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset), reading what it sends."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {limit} s") from None
    return time.monotonic() - start


def test_silent_socket_is_dropped_after_open_timeout(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry(open_timeout=OPEN_TIMEOUT)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        elapsed = dropped_after(sock)
    assert 0.3 < elapsed < 3.0, f"dropped after {elapsed:.2f} s with open_timeout=0.5"


def test_half_sent_request_is_dropped_after_open_timeout(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry(open_timeout=OPEN_TIMEOUT)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(f"GET {ECHO} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode())
        elapsed = dropped_after(sock)
    assert 0.3 < elapsed < 3.0, f"dropped after {elapsed:.2f} s with open_timeout=0.5"


def test_idle_keepalive_connection_is_dropped_after_open_timeout(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry(open_timeout=OPEN_TIMEOUT)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
        start = time.monotonic()
        assert sock.recv(12) == b"HTTP/1.1 200"
        dropped_after(sock)
        elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"an idle connection stayed {elapsed:.2f} s with open_timeout=0.5"


def test_open_timeout_does_not_end_an_open_session(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry(open_timeout=OPEN_TIMEOUT)
    with RawClient(server.port, ECHO) as client:
        assert client.status_line.startswith("HTTP/1.1 101")
        time.sleep(3 * OPEN_TIMEOUT)
        client.send(frame(TEXT, b"still here"))
        opcode, _, payload = client.recv_frame()
        assert (opcode, payload) == (TEXT, b"still here")
        client.send(close_frame(1000))
        assert client.reader.until_close()[0] == 1000


def refused(port: int, path: str = ECHO) -> tuple[RawClient, bytes]:
    """A handshake's answer and its body (``Content-Length``)."""
    client = RawClient(port, path)
    try:
        length = int((client.response_header("Content-Length") or ["0"])[0])
        return client, client.reader.exact(length)
    finally:
        client.close()


def admitted_again(port: int, path: str) -> RawClient:
    """A handshake that gets its 101 once a session has ended (sessions end asynchronously)."""
    deadline = time.monotonic() + WAIT
    while True:
        client = RawClient(port, path)
        if client.status_line.startswith("HTTP/1.1 101") or time.monotonic() > deadline:
            return client
        client.close()
        time.sleep(0.05)


def test_max_connections_refuses_excess_handshakes_with_503(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry(max_connections=2)
    first, second = RawClient(server.port, ECHO), RawClient(server.port, ECHO)
    try:
        assert first.status_line.startswith("HTTP/1.1 101")
        assert second.status_line.startswith("HTTP/1.1 101")
        third, body = refused(server.port)
        assert third.status_line.startswith("HTTP/1.1 503"), third.status_line
        assert third.response_header("Retry-After")
        assert b"max_connections" in body
        with RawClient(server.port, "/") as page:  # plain HTTP is not a WebSocket connection
            assert not page.status_line.startswith("HTTP/1.1 503")
        first.send(close_frame(1000))
        assert first.reader.until_close()[0] == 1000
        first.close()
        fourth = admitted_again(server.port, ECHO)
        assert fourth.status_line.startswith("HTTP/1.1 101"), fourth.status_line
        fourth.close()
    finally:
        first.close()
        second.close()


def test_descriptor_max_connections_limits_its_endpoint(
    serve_registry: Callable[..., ServerThread], tmp_path: Path
) -> None:
    (tmp_path / "limited.websocket").write_text(
        json.dumps(
            {"handler": "my-project/echo-handler", "endpoint": "limited", "max_connections": 1}
        )
    )
    server = serve_registry()
    limited = "/websockets/v4/service/limited"
    with RawClient(server.port, limited) as first:
        assert first.status_line.startswith("HTTP/1.1 101"), first.status_line
        second, body = refused(server.port, limited)
        assert second.status_line.startswith("HTTP/1.1 503"), second.status_line
        assert b"'limited'" in body
        with RawClient(server.port, ECHO) as other:  # other endpoints are not limited by it
            assert other.status_line.startswith("HTTP/1.1 101")
        first.send(close_frame(1000))
        assert first.reader.until_close()[0] == 1000
    events.wait("onclose", "limited")
    again = admitted_again(server.port, limited)
    assert again.status_line.startswith("HTTP/1.1 101"), again.status_line
    again.close()


def test_too_many_header_lines_get_431(serve_registry: Callable[..., ServerThread]) -> None:
    server = serve_registry()
    many = [(f"X-Filler-{i}", "x") for i in range(200)]
    for path in (ECHO, "/"):
        with RawClient(server.port, path, headers=many) as client:
            assert client.status_line.startswith("HTTP/1.1 431"), (path, client.status_line)
    with RawClient(server.port, ECHO, headers=many[:100]) as client:  # within the limit
        assert client.status_line.startswith("HTTP/1.1 101"), client.status_line


def listen_backlogs(port: int) -> set[int]:
    """The listen queue sizes of the sockets listening on ``port`` (``ss``'s Send-Q column)."""
    ss = ss_command()
    lines = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return {int(line.split()[2]) for line in lines if line.strip()}


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def test_server_listens_with_a_backlog_of_2048_by_default(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry()
    assert listen_backlogs(server.port) == {min(2048, somaxconn())}


def test_backlog_option_sets_the_listen_queue(
    serve_registry: Callable[..., ServerThread],
) -> None:
    server = serve_registry(backlog=300)  # not asyncio's 100 nor the default
    assert listen_backlogs(server.port) == {300}


def bind_alongside(port: int) -> None:
    """Bind (and close) a socket with ``SO_REUSEPORT`` on 127.0.0.1:``port``, as another
    worker process would; ``OSError`` when the listening sockets there do not share it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))


def test_reuse_port_lets_another_process_share_the_port(
    serve_registry: Callable[..., ServerThread], engine: str
) -> None:
    """``reuse_port=True`` (``polysocket serve --workers``): the listening sockets carry
    ``SO_REUSEPORT``, so another socket bound with it shares the port; without the option
    the kernel refuses that bind."""
    require_capability(engine, "reuse_port")
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("this operating system lacks SO_REUSEPORT")
    bind_alongside(serve_registry(reuse_port=True).port)
    with pytest.raises(OSError) as refused:
        bind_alongside(serve_registry().port)
    assert refused.value.errno == errno.EADDRINUSE
