"""polysocket.asgi: the adapter driven by a hand-written ASGI server (no socket), then the
factory run by a real uvicorn process and echoed through with the websockets library."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import polysocket
from polysocket.asgi import AsgiApp, AsgiTransport, app
from polysocket.errors import UnsupportedOptionError
from polysocket.transport import TransportClosed

WAIT = 10.0
ECHO_PATH = "/websockets/v4/service/echo"
ECHO = "def onMessage(message):\n    return message\n"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    (tmp_path / "echo.py").write_text(ECHO)
    (tmp_path / "echo.websocket").write_text(
        json.dumps({"handler": "echo", "endpoint": "echo", "description": "Echo"})
    )
    return tmp_path


class FakeServer:
    """One ASGI connection as a server would drive it: events in, messages out."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for event in events:
            self.incoming.put_nowait(event)
        self.sent: list[dict[str, Any]] = []
        self.new = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))
        self.new.set()

    async def wait_for(self, kind: str) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                for message in self.sent:
                    if message["type"] == kind:
                        return message
                self.new.clear()
                await self.new.wait()


def http_scope(path: str, root_path: str = "", raw: bool = True) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"example.test")],
        "client": ["127.0.0.1", 5000],
    }
    if raw:
        scope["raw_path"] = path.encode()
    return scope


def ws_scope(path: str, **extra: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"example.test"), (b"upgrade", b"websocket")],
        "client": ["127.0.0.1", 5001],
        "subprotocols": [],
    }
    scope.update(extra)
    return scope


async def get(asgi: AsgiApp, scope: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes]:
    server = FakeServer({"type": "http.request", "body": b""})
    await asgi(scope, server.receive, server.send)
    start, body = server.sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


def test_http_page_listing_and_404(registry: Path) -> None:
    asgi = app(registry, reload=False)

    async def main() -> None:
        status, headers, body = await get(asgi, http_scope("/"))
        assert status == 200 and headers[b"content-type"].startswith(b"text/html")
        assert headers[b"content-length"] == str(len(body)).encode()
        status, _, body = await get(asgi, http_scope("/websockets/v4/endpoints"))
        assert status == 200
        assert [e["endpoint"] for e in json.loads(body)["endpoints"]] == ["echo"]
        status, _, body = await get(asgi, http_scope("/nothing"))
        assert status == 404 and b"nothing at /nothing" in body
        status, headers, _ = await get(asgi, http_scope(ECHO_PATH))
        assert status == 426 and headers[b"upgrade"] == b"websocket"

    asyncio.run(main())


@pytest.mark.parametrize("raw", [True, False], ids=["raw_path", "path"])
def test_root_path_is_taken_off_before_routing(registry: Path, raw: bool) -> None:
    """Mounted under /rt: the server's path includes the root path (ASGI 3)."""
    asgi = app(registry, reload=False)

    async def main() -> None:
        status, _, body = await get(asgi, http_scope("/rt/websockets/v4/endpoints", "/rt", raw))
        assert status == 200 and json.loads(body)["endpoints"][0]["path"] == ECHO_PATH
        status, _, _ = await get(asgi, http_scope("/rtx/websockets/v4/endpoints", "/rt", raw))
        assert status == 404  # /rtx is not under /rt

    asyncio.run(main())


def test_websocket_echo_then_the_client_closes(registry: Path) -> None:
    asgi = app(registry, reload=False)

    async def main() -> None:
        server = FakeServer({"type": "websocket.connect"})
        running = asyncio.ensure_future(asgi(ws_scope(ECHO_PATH), server.receive, server.send))
        assert (await server.wait_for("websocket.accept")).get("subprotocol") is None
        [session] = polysocket.getSessions("echo")
        assert session.remote_address == ("127.0.0.1", 5001)
        server.incoming.put_nowait({"type": "websocket.receive", "text": "hello"})
        server.incoming.put_nowait({"type": "websocket.receive", "bytes": b"\x00\xff"})
        async with asyncio.timeout(WAIT):
            while len([m for m in server.sent if m["type"] == "websocket.send"]) < 2:
                await server.wait_for("websocket.send")
                await asyncio.sleep(0.01)
        sends = [m for m in server.sent if m["type"] == "websocket.send"]
        assert sends[0]["text"] == "hello" and sends[1]["bytes"] == b"\x00\xff"
        server.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        async with asyncio.timeout(WAIT):
            await running
        assert polysocket.getSessions("echo") == []

    asyncio.run(main())


def test_subprotocol_is_selected_by_the_core(registry: Path) -> None:
    asgi = app(registry, reload=False, subprotocols=["chat"])

    async def main() -> None:
        server = FakeServer({"type": "websocket.connect"})
        scope = ws_scope(ECHO_PATH, subprotocols=["other", "chat"])
        running = asyncio.ensure_future(asgi(scope, server.receive, server.send))
        assert (await server.wait_for("websocket.accept"))["subprotocol"] == "chat"
        server.incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})
        async with asyncio.timeout(WAIT):
            await running

    asyncio.run(main())


def test_unknown_endpoint_is_a_denial_response_where_offered(registry: Path) -> None:
    asgi = app(registry, reload=False)

    async def main() -> None:
        server = FakeServer({"type": "websocket.connect"})
        scope = ws_scope("/websockets/v4/service/nope", extensions={"websocket.http.response": {}})
        await asgi(scope, server.receive, server.send)
        start, body = server.sent
        assert start["type"] == "websocket.http.response.start" and start["status"] == 404
        assert b"no endpoint 'nope' here" in body["body"]

        server = FakeServer({"type": "websocket.connect"})
        await asgi(ws_scope("/websockets/v4/service/nope"), server.receive, server.send)
        assert [m["type"] for m in server.sent] == ["websocket.close"]  # the server's 403

    asyncio.run(main())


def test_max_size_is_enforced_by_the_adapter(registry: Path) -> None:
    asgi = app(registry, reload=False, max_size=10)

    async def main() -> None:
        server = FakeServer(
            {"type": "websocket.connect"}, {"type": "websocket.receive", "bytes": b"x" * 11}
        )
        running = asyncio.ensure_future(asgi(ws_scope(ECHO_PATH), server.receive, server.send))
        close = await server.wait_for("websocket.close")
        assert close["code"] == 1009
        server.incoming.put_nowait({"type": "websocket.disconnect", "code": 1009})
        async with asyncio.timeout(WAIT):
            await running

    asyncio.run(main())


def test_lifespan_starts_the_watcher_and_shutdown_closes_sessions_with_1001(
    registry: Path,
) -> None:
    asgi = app(registry)

    async def main() -> None:
        lifespan = FakeServer({"type": "lifespan.startup"})
        life = asyncio.ensure_future(asgi({"type": "lifespan"}, lifespan.receive, lifespan.send))
        await lifespan.wait_for("lifespan.startup.complete")
        assert asgi.server._watcher is not None  # type: ignore[attr-defined]
        server = FakeServer({"type": "websocket.connect"})
        running = asyncio.ensure_future(asgi(ws_scope(ECHO_PATH), server.receive, server.send))
        await server.wait_for("websocket.accept")
        lifespan.incoming.put_nowait({"type": "lifespan.shutdown"})
        close = await server.wait_for("websocket.close")
        assert (close["code"], close["reason"]) == (1001, "server shutting down")
        server.incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})
        await lifespan.wait_for("lifespan.shutdown.complete")
        async with asyncio.timeout(WAIT):
            await asyncio.gather(life, running)
        assert asgi.server._watcher is None  # type: ignore[attr-defined]

    asyncio.run(main())


def test_abort_ends_a_pending_receive() -> None:
    async def main() -> None:
        server = FakeServer()
        transport = AsgiTransport(server.receive, server.send, None, None)
        reading = asyncio.ensure_future(transport.receive())
        await asyncio.sleep(0.01)
        transport.abort()
        with pytest.raises(TransportClosed) as ended:
            await asyncio.wait_for(reading, WAIT)
        assert ended.value.code is None
        await transport.close(1000, "")  # nothing more is sent after an abort
        assert server.sent == []

    asyncio.run(main())


def test_options_the_asgi_server_owns_are_refused() -> None:
    with pytest.raises(UnsupportedOptionError, match="--ws-per-message-deflate"):
        app(compression="deflate")
    with pytest.raises(UnsupportedOptionError, match="--ssl-certfile"):
        app(ssl=object())


# -- a real uvicorn --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_uvicorn(
    registry: Path, *flags: str, app: tuple[str, ...] = ("polysocket.asgi:app", "--factory")
) -> Iterator[int]:
    """``uvicorn APP FLAGS`` (by default the factory) on a free port, serving ``registry``."""
    pytest.importorskip("uvicorn")
    port = free_port()
    env = {**os.environ, "POLYSOCKET_ROOT": str(registry)}
    command = [sys.executable, "-m", "uvicorn", *app]
    command += ["--port", str(port), "--log-level", "warning", *flags]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(f"uvicorn exited: {process.communicate()[1]}") from None
                assert time.monotonic() < deadline, "uvicorn did not listen"
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def uvicorn_factory(registry: Path) -> Iterator[int]:
    with running_uvicorn(registry) as port:
        yield port


def test_uvicorn_factory_serves_the_registry(uvicorn_factory: int) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    base = f"127.0.0.1:{uvicorn_factory}"
    with connect(f"ws://{base}{ECHO_PATH}", open_timeout=WAIT) as ws:
        ws.send("through uvicorn ✓")
        assert ws.recv(timeout=WAIT) == "through uvicorn ✓"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=WAIT) == b"\x00\x01"
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{base}/websockets/v4/service/nope", open_timeout=WAIT)
    assert refused.value.response.status_code == 404  # the denial response extension
    with urllib.request.urlopen(f"http://{base}/websockets/v4/endpoints", timeout=WAIT) as r:
        assert json.loads(r.read())["endpoints"][0]["endpoint"] == "echo"


def test_uvicorn_flags_tls_and_workers(registry: Path, tmp_path: Path) -> None:
    """uvicorn's own flags: TLS from its certificate files, two worker processes (each
    with its own sessions), every connection echoed by one of them."""
    import ssl

    trustme = pytest.importorskip("trustme")
    from websockets.sync.client import connect

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    flags = ("--workers", "2", "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
    with running_uvicorn(registry, *flags) as port:
        uri = f"wss://127.0.0.1:{port}{ECHO_PATH}"
        deadline = time.monotonic() + WAIT
        echoed: list[str | bytes] = []
        while len(echoed) < 4:  # the workers may still be starting: retry until they answer
            try:
                with connect(uri, ssl=context, open_timeout=WAIT) as ws:
                    ws.send(f"tls {len(echoed)}")
                    echoed.append(ws.recv(timeout=WAIT))
            except OSError:
                assert time.monotonic() < deadline, "no worker answered over TLS"
                time.sleep(0.1)
        assert echoed == [f"tls {i}" for i in range(4)]


# -- mounted in a FastAPI application, reached by Node's ws ----------------------------------

SERVICE = """
import os

from fastapi import FastAPI

import polysocket.asgi

app = FastAPI()
realtime = polysocket.asgi.app(os.environ["POLYSOCKET_ROOT"])


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


app.mount("/rt", realtime)
"""


def test_fastapi_app_with_its_own_route_and_a_mounted_registry(
    registry: Path, tmp_path: Path
) -> None:
    """A FastAPI service with its own /health route and the registry mounted at /rt, run by
    uvicorn: both answer, and Node's `ws` client echoes through the mounted endpoint."""
    pytest.importorskip("fastapi")
    from polysocket_conformance.peer_processes import (
        PEERS_DIR,
        PeerUnavailable,
        node_ws_location,
        require_peers,
    )

    try:
        node, ws_dir = node_ws_location()
    except PeerUnavailable as exc:
        if require_peers():
            pytest.fail(f"{exc} (POLYSOCKET_REQUIRE_PEERS is set)")
        pytest.skip(str(exc))
    (tmp_path / "service.py").write_text(SERVICE)
    app = ("service:app", "--app-dir", str(tmp_path))
    with running_uvicorn(registry, app=app) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=WAIT) as health:
            assert json.loads(health.read()) == {"status": "ok"}
        uri = f"ws://127.0.0.1:{port}/rt{ECHO_PATH}"
        result = subprocess.run(
            [node, str(PEERS_DIR / "ws_client.js"), uri, "1000", "hi", "ünïcode"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"POLYSOCKET_WS_PATH": str(ws_dir), "PATH": "/usr/bin:/bin"},
        )
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert lines[0] == {"event": "open"}, result.stdout + result.stderr
        assert [e["data"] for e in lines if e["event"] == "message"] == ["hi", "ünïcode"]
        assert lines[-1]["event"] == "close" and lines[-1]["code"] == 1000, lines
        # the registry's page at /, under the mount too
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/rt/", timeout=WAIT) as page:
            assert page.status == 200
