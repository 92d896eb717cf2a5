"""polysocket.asgi: the adapter driven by a hand-written ASGI server (no socket), then the
factory run by real uvicorn and hypercorn processes and reached with the websockets library
(and Node's ws, for a FastAPI service that mounts a registry)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import polysocket
from polysocket.asgi import AsgiApp, AsgiTransport, app
from polysocket.errors import UnsupportedOptionError
from polysocket.transport import TransportClosed

WAIT = 10.0
ECHO_PATH = "/websockets/v4/service/echo"
ECHO = """
import polysocket


def onMessage(message):
    if isinstance(message, str) and message.startswith("close "):
        _, code, reason = message.split(" ", 2)
        polysocket.getSession().close(int(code), reason)
        return None
    return message
"""
#: Every message goes to every session of the room; "count" answers how many there are, and
#: each session that closes tells the others its close code and reason.
ROOM = """
import polysocket


def onMessage(message):
    endpoint = polysocket.getSession().endpoint
    if message == "count":
        return str(len(polysocket.getSessions(endpoint)))
    polysocket.broadcast(endpoint, message)


def onClose():
    code, reason = polysocket.getCloseCode(), polysocket.getCloseReason()
    polysocket.broadcast(polysocket.getSession().endpoint, f"closed {code} {reason}")
"""


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    (tmp_path / "echo.py").write_text(ECHO)
    (tmp_path / "echo.websocket").write_text(
        json.dumps({"handler": "echo", "endpoint": "echo", "description": "Echo"})
    )
    (tmp_path / "room.py").write_text(ROOM)
    (tmp_path / "room.websocket").write_text(json.dumps({"handler": "room", "endpoint": "room"}))
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
        assert [e["endpoint"] for e in json.loads(body)["endpoints"]] == ["echo", "room"]
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


def test_a_session_the_server_cancels_is_closed_with_1001(registry: Path) -> None:
    """hypercorn cancels the application of each connection still open when its grace time
    at shutdown ends: the client is told 1001 (going away), not the server's 1011."""
    asgi = app(registry, reload=False)

    async def main() -> None:
        server = FakeServer({"type": "websocket.connect"})
        running = asyncio.ensure_future(asgi(ws_scope(ECHO_PATH), server.receive, server.send))
        await server.wait_for("websocket.accept")
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, WAIT)
        close = await server.wait_for("websocket.close")
        assert (close["code"], close["reason"]) == (1001, "server shutting down")
        assert [m["type"] for m in server.sent].count("websocket.close") == 1
        assert polysocket.getSessions("echo") == []

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


# -- real ASGI servers: uvicorn and hypercorn -----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class AsgiServer:
    """How one ASGI server runs an application, and what it lets the application know."""

    name: str
    #: The app argument that runs ``polysocket.asgi.app()``, the zero-argument factory.
    factory: tuple[str, ...]
    #: The app argument for the attribute ``app`` of a module file.
    module_app: Callable[[Path], tuple[str, ...]]
    #: The flags that make it listen on 127.0.0.1:port.
    listen: Callable[[int], tuple[str, ...]]
    #: The close code a client reads when the server stops (SIGTERM, SIGINT) with it open.
    shutdown_code: int
    #: Whether the peer's close code reaches the application (``websocket.disconnect``).
    reports_peer_close_code: bool

    def command(self, app: tuple[str, ...], port: int, flags: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", self.name, *app, *self.listen(port), *flags]


SERVERS = {
    "uvicorn": AsgiServer(
        "uvicorn",
        factory=("polysocket.asgi:app", "--factory"),
        module_app=lambda module: (f"{module.stem}:app", "--app-dir", str(module.parent)),
        listen=lambda port: ("--port", str(port), "--log-level", "warning"),
        # it ends WebSockets itself with 1012 (service restart) before the lifespan shutdown
        shutdown_code=1012,
        reports_peer_close_code=True,
    ),
    "hypercorn": AsgiServer(
        "hypercorn",
        factory=("polysocket.asgi:app()",),  # "module:expression": a call runs the factory
        module_app=lambda module: (f"{module}:app",),
        # a second of grace at shutdown (3 s by default) keeps the tests short
        listen=lambda port: ("--bind", f"127.0.0.1:{port}", "--graceful-timeout", "1"),
        # it cancels what is still open after its grace time, before the lifespan shutdown:
        # polysocket closes those with 1001 then (hypercorn itself would say 1011)
        shutdown_code=1001,
        # every close by the peer reaches the application as 1006 (pgjones/hypercorn#127)
        reports_peer_close_code=False,
    ),
}


@dataclasses.dataclass(frozen=True)
class Running:
    """An ASGI server process that listens on 127.0.0.1:``port``."""

    process: subprocess.Popen[str]
    port: int


@contextlib.contextmanager
def running_server(
    server: AsgiServer, registry: Path, *flags: str, app: tuple[str, ...] | None = None
) -> Iterator[Running]:
    """``server`` (a process of its own) running ``app`` (by default the factory) on a free
    port with ``registry`` as $POLYSOCKET_ROOT, once it listens."""
    pytest.importorskip(server.name)
    port = free_port()
    env = {**os.environ, "POLYSOCKET_ROOT": str(registry)}
    command = server.command(app or server.factory, port, flags)
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(
                        f"{server.name} exited: {process.communicate()[1]}"
                    ) from None
                assert time.monotonic() < deadline, f"{server.name} did not listen"
                time.sleep(0.1)
        yield Running(process, port)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@contextlib.contextmanager
def running_uvicorn(
    registry: Path, *flags: str, app: tuple[str, ...] | None = None
) -> Iterator[int]:
    """``uvicorn APP FLAGS`` (by default the factory) on a free port, serving ``registry``."""
    with running_server(SERVERS["uvicorn"], registry, *flags, app=app) as running:
        yield running.port


@pytest.fixture(params=sorted(SERVERS))
def asgi_server(request: pytest.FixtureRequest) -> AsgiServer:
    return SERVERS[request.param]


@pytest.fixture
def served(asgi_server: AsgiServer, registry: Path) -> Iterator[str]:
    """The factory run by each ASGI server: its ``127.0.0.1:PORT``."""
    with running_server(asgi_server, registry) as running:
        yield f"127.0.0.1:{running.port}"


def test_asgi_server_serves_the_registry(served: str) -> None:
    """Echo (text and binary), an unknown endpoint refused with a real HTTP 404 through the
    Denial Response extension (both servers offer it), the JSON list over HTTP."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with connect(f"ws://{served}{ECHO_PATH}", open_timeout=WAIT) as ws:
        ws.send("through the ASGI server ✓")
        assert ws.recv(timeout=WAIT) == "through the ASGI server ✓"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=WAIT) == b"\x00\x01"
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{served}/websockets/v4/service/nope", open_timeout=WAIT)
    assert refused.value.response.status_code == 404
    assert b"no endpoint 'nope' here" in refused.value.response.body
    with urllib.request.urlopen(f"http://{served}/websockets/v4/endpoints", timeout=WAIT) as r:
        assert sorted(e["endpoint"] for e in json.loads(r.read())["endpoints"]) == [
            "echo",
            "room",
        ]


def test_broadcast_and_get_sessions_across_two_clients(served: str) -> None:
    """Two clients of one endpoint: getSessions() counts both, broadcast() reaches both."""
    from websockets.sync.client import connect

    room = f"ws://{served}/websockets/v4/service/room"
    with connect(room, open_timeout=WAIT) as alice, connect(room, open_timeout=WAIT) as bob:
        alice.send("count")
        assert alice.recv(timeout=WAIT) == "2"
        bob.send("to everyone")
        assert alice.recv(timeout=WAIT) == "to everyone"
        assert bob.recv(timeout=WAIT) == "to everyone"
    with connect(room, open_timeout=WAIT) as carol:
        carol.send("count")  # the closed sessions are gone from getSessions()
        assert carol.recv(timeout=WAIT) == "1"


def test_close_codes_both_ways(asgi_server: AsgiServer, served: str) -> None:
    """A handler's close(4001, "asked") reaches the client with its code and reason; a
    client's close(4000, "bye") reaches the handler's getCloseCode() (seen by another client
    through a broadcast from onClose) where the server reports it."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(f"ws://{served}{ECHO_PATH}", open_timeout=WAIT) as ws:
        ws.send("close 4001 asked")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=WAIT)
        assert (ws.close_code, ws.close_reason) == (4001, "asked")
    room = f"ws://{served}/websockets/v4/service/room"
    with connect(room, open_timeout=WAIT) as watcher, connect(room, open_timeout=WAIT) as leaving:
        watcher.send("count")
        assert watcher.recv(timeout=WAIT) == "2"
        leaving.close(4000, "bye")
        seen = "closed 4000 bye" if asgi_server.reports_peer_close_code else "closed 1006 "
        assert watcher.recv(timeout=WAIT) == seen


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_server_stop_closes_open_sessions(
    asgi_server: AsgiServer, registry: Path, stop: signal.Signals
) -> None:
    """Stopped by a signal with a session open, each server ends it with a close frame
    (uvicorn: 1012 of its own; hypercorn: 1001 from polysocket, when it cancels the
    application after its grace time) and exits."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with running_server(asgi_server, registry) as running:
        process = running.process
        uri = f"ws://127.0.0.1:{running.port}{ECHO_PATH}"
        with connect(uri, open_timeout=WAIT) as ws:
            ws.send("before the stop")
            assert ws.recv(timeout=WAIT) == "before the stop"
            process.send_signal(stop)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=WAIT)
            assert ws.protocol.close_rcvd is not None, "closed without a close frame"
            assert ws.protocol.close_rcvd.code == asgi_server.shutdown_code
        _, errors = process.communicate(timeout=WAIT)
        assert process.returncode in (0, -stop), errors
        assert "did not shut down cleanly" not in errors  # the lifespan shutdown's failure


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
    asgi_server: AsgiServer, registry: Path, tmp_path: Path
) -> None:
    """A FastAPI service with its own /health route and the registry mounted at /rt, run by
    each ASGI server: both answer, and Node's `ws` client echoes through the mounted
    endpoint."""
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
    app = asgi_server.module_app(tmp_path / "service.py")
    with running_server(asgi_server, registry, app=app) as running:
        port = running.port
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
