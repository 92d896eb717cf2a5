"""Redirects on connect (issue 11): one rule on every engine, followed by the core.

A small real HTTP server answers the WebSocket handshake with redirects; the chains end at
a polysocket echo server. Every test counts the requests each server saw, so an engine that
followed a redirect by itself (or followed one it must refuse) fails here.
"""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import polysocket

from .server_support import SERVICE, ServerThread, events, write_registry
from .support import (
    WAIT,
    Recorder,
    TlsContexts,
    Tripwire,
    require_capability,
    run_async,
    tls_contexts,
)


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up before the answer (the open_timeout test) is no failure


class RedirectServer:
    """An HTTP server on a thread that answers each path of its table with a redirect (or
    any status) and records every request. ``delay`` holds each answer back that long."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, delay: float = 0.0) -> None:
        self.routes: dict[str, tuple[int, str | None]] = {}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self.scheme = "wss" if ssl_context is not None else "ws"
        owner = self

        class Answer(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests.append(
                        SeenRequest(
                            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
                        )
                    )
                time.sleep(delay)
                status, location = owner.routes.get(self.path, (404, None))
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads self.requests

        self._server = _QuietServer(("127.0.0.1", 0), Answer)
        if ssl_context is not None:
            # The handshake runs in the connection's own thread, not in the accept loop.
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def uri(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def route(self, path: str, location: str | None, status: int = 302) -> str:
        """Answer ``path`` with ``status`` and ``location``; return the path's URI."""
        self.routes[path] = (status, location)
        return self.uri(path)

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT)


@pytest.fixture
def redirect_server() -> Iterator[Callable[..., RedirectServer]]:
    started: list[RedirectServer] = []

    def start(ssl_context: ssl.SSLContext | None = None, delay: float = 0.0) -> RedirectServer:
        started.append(RedirectServer(ssl_context, delay))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def serve_target(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Where redirects end: the suite's polysocket echo server (``server_support``), on the
    default engine, since what is under test is the client's engine."""
    events.clear()
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        started.append(ServerThread(write_registry(tmp_path), "aiohttp", **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def target(serve_target: Callable[..., ServerThread]) -> ServerThread:
    return serve_target()


@pytest.fixture(scope="module")
def tls() -> TlsContexts:
    return tls_contexts("127.0.0.1", "localhost")


def sessions() -> int:
    """WebSocket sessions the target server opened."""
    return len([e for e in events.items if e.name == "onopen"])


def echo_through(uri: str, engine: str, **options: Any) -> polysocket.WebsocketClient:
    """Open ``uri`` with ``engine``, check that an echo comes back, and close."""
    recorder = Recorder()
    client = polysocket.createWebsocket(uri, recorder, engine, **options)
    try:
        client.send("through the redirect")
        assert recorder.wait_messages(1) == ["through the redirect"]
    finally:
        client.close()
    return client


def refused(uri: str, engine: str, **options: Any) -> polysocket.ConnectError:
    with pytest.raises(polysocket.ConnectError) as caught:
        polysocket.createWebsocket(uri, Recorder(), engine, **options)
    assert polysocket.getClients() == []
    return caught.value


def chain(server: RedirectServer, hops: int, end: str) -> str:
    """``hops`` redirects, /hop/0 to /hop/1 ... to ``end``; the URI of the first."""
    for i in range(hops):
        server.route(f"/hop/{i}", end if i == hops - 1 else server.uri(f"/hop/{i + 1}"))
    return server.uri("/hop/0")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_status_is_followed(
    engine: str,
    status: int,
    redirect_server: Callable[..., RedirectServer],
    target: ServerThread,
) -> None:
    server = redirect_server()
    uri = server.route("/old", target.uri("echo"), status)
    client = echo_through(uri, engine)
    assert server.paths() == ["/old"]
    request = server.requests[0]
    assert request.method == "GET" and request.headers.get("upgrade", "").lower() == "websocket"
    assert sessions() == 1
    assert client.uri == uri, "the client keeps the URI it was created with"
    assert client.connected_uri == target.uri("echo")


def test_redirect_relative_location(
    engine: str, redirect_server: Callable[..., RedirectServer], target: ServerThread
) -> None:
    server = redirect_server()
    uri = server.route("/a/start", "next", 307)  # resolved against /a/start: /a/next
    server.route("/a/next", "/b/last?x=1", 301)  # absolute path, same server
    server.route("/b/last?x=1", target.uri("echo"), 308)
    client = echo_through(uri, engine)
    assert server.paths() == ["/a/start", "/a/next", "/b/last?x=1"]
    assert sessions() == 1
    assert client.connected_uri == target.uri("echo")


def test_redirect_http_location_is_mapped_to_ws(
    engine: str, redirect_server: Callable[..., RedirectServer], target: ServerThread
) -> None:
    server = redirect_server()
    http_url = target.url(f"{SERVICE}echo")
    assert http_url.startswith("http://")
    client = echo_through(server.route("/old", http_url, 301), engine)
    assert server.paths() == ["/old"]
    assert sessions() == 1
    assert client.connected_uri == target.uri("echo")


def test_redirect_chain_of_ten_is_followed(
    engine: str,
    redirect_server: Callable[..., RedirectServer],
    target: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="polysocket.client")
    server = redirect_server()
    echo_through(chain(server, 10, target.uri("echo")), engine)
    assert server.paths() == [f"/hop/{i}" for i in range(10)]
    assert sessions() == 1
    hops = [r for r in caplog.records if r.name == "polysocket.client" and "redirect" in r.msg]
    assert len(hops) == 10, [r.getMessage() for r in hops]
    assert "/hop/9" in hops[-1].getMessage() and target.uri("echo") in hops[-1].getMessage()


def test_redirect_chain_of_eleven_fails(
    engine: str, redirect_server: Callable[..., RedirectServer], target: ServerThread
) -> None:
    server = redirect_server()
    error = refused(chain(server, 11, target.uri("echo")), engine)
    assert "too many redirects (10)" in str(error)
    assert server.uri("/hop/0") in str(error) and server.uri("/hop/10") in str(error)
    assert target.uri("echo") in str(error), "the chain ends with the Location not followed"
    assert server.paths() == [f"/hop/{i}" for i in range(11)]
    assert sessions() == 0
    assert error.status == 302 and error.location == target.uri("echo")


def test_redirect_loop_stops_at_the_limit(
    engine: str, redirect_server: Callable[..., RedirectServer]
) -> None:
    server = redirect_server()
    uri = server.route("/loop", "/loop", 307)
    error = refused(uri, engine)
    assert "too many redirects (10)" in str(error)
    assert server.paths() == ["/loop"] * 11


def test_redirect_to_another_scheme_is_refused(
    engine: str, redirect_server: Callable[..., RedirectServer]
) -> None:
    server = redirect_server()
    error = refused(server.route("/old", "ftp://127.0.0.1/file", 302), engine)
    assert "ftp://127.0.0.1/file" in str(error) and "not a WebSocket URI" in str(error)
    assert (error.status, error.location) == (302, "ftp://127.0.0.1/file")
    assert server.paths() == ["/old"]


@pytest.mark.parametrize("status", [300, 304])
def test_other_3xx_is_rejected_with_its_location(
    engine: str, status: int, redirect_server: Callable[..., RedirectServer]
) -> None:
    server = redirect_server()
    elsewhere = server.uri("/elsewhere")
    error = refused(server.route("/old", elsewhere, status), engine)
    assert (error.status, error.location) == (status, elsewhere)
    assert server.paths() == ["/old"]


def test_redirect_without_location_is_rejected(
    engine: str, redirect_server: Callable[..., RedirectServer]
) -> None:
    server = redirect_server()
    error = refused(server.route("/old", None, 302), engine)
    assert (error.status, error.location) == (302, None)
    assert server.paths() == ["/old"]


def test_redirect_hops_share_one_open_timeout(
    engine: str, redirect_server: Callable[..., RedirectServer]
) -> None:
    """Each answer takes 0.4 s: with open_timeout=1 the third hop is never answered, and
    the whole connect gives up after 1 s, not 1 s per hop."""
    server = redirect_server(delay=0.4)
    uri = server.route("/slow", "/slow", 307)
    started = time.monotonic()
    error = refused(uri, engine, open_timeout=1.0)
    elapsed = time.monotonic() - started
    assert "timed out after 1.0 s" in str(error) and "redirected" in str(error)
    assert elapsed < 2.0, f"the connect took {elapsed:.2f} s, more than one open_timeout"
    assert 2 <= len(server.paths()) <= 3


def test_redirect_drops_credentials_for_another_origin(
    engine: str, redirect_server: Callable[..., RedirectServer], target: ServerThread
) -> None:
    require_capability(engine, "headers")
    server = redirect_server()
    uri = server.route("/old", target.uri("echo"), 302)  # another port: another origin
    headers = {"Authorization": "Bearer secret", "Cookie": "a=b", "X-Kept": "yes"}
    echo_through(uri, engine, headers=headers)
    assert server.requests[0].headers["authorization"] == "Bearer secret"
    seen = events.wait("onopen").request_headers
    assert seen.get("x-kept") == "yes"
    assert "authorization" not in seen and "cookie" not in seen, seen


def test_redirect_with_the_asyncio_api(
    engine: str, redirect_server: Callable[..., RedirectServer], target: ServerThread
) -> None:
    server = redirect_server()
    uri = server.route("/old", target.uri("echo"), 308)

    async def exchange() -> tuple[str, Any]:
        async with polysocket.connect(uri, engine=engine) as ws:
            await ws.send("asyncio")
            return ws.connected_uri, await ws.recv()

    assert run_async(exchange()) == (target.uri("echo"), "asyncio")
    assert server.paths() == ["/old"]
    assert sessions() == 1


# -- TLS ----------------------------------------------------------------------------------


def test_redirect_wss_to_wss_is_followed(
    engine: str,
    tls: TlsContexts,
    redirect_server: Callable[..., RedirectServer],
    serve_target: Callable[..., ServerThread],
) -> None:
    require_capability(engine, "tls")
    server_context, client_context = tls
    server = redirect_server(server_context)
    secure = serve_target(ssl=server_context)
    end = secure.uri("echo").replace("ws://", "wss://", 1)
    client = echo_through(server.route("/old", end, 301), engine, ssl=client_context)
    assert server.paths() == ["/old"]
    assert sessions() == 1
    assert client.connected_uri == end


def test_redirect_wss_to_ws_downgrade_is_refused(
    engine: str, tls: TlsContexts, redirect_server: Callable[..., RedirectServer]
) -> None:
    require_capability(engine, "tls")
    server_context, client_context = tls
    server = redirect_server(server_context)
    plain = Tripwire()
    try:
        uri = server.route("/old", plain.uri, 302)
        error = refused(uri, engine, ssl=client_context)
        assert "downgrade" in str(error) and uri in str(error) and plain.uri in str(error)
        assert server.paths() == ["/old"]
        assert plain.connections() == 0, "the ws:// Location was connected to"
        # https:// to http:// is the same downgrade
        http_uri = f"http://127.0.0.1:{plain.port}/echo"
        error = refused(server.route("/http", http_uri, 307), engine, ssl=client_context)
        assert "downgrade" in str(error)
        assert plain.connections() == 0
    finally:
        plain.close()
