"""The endpoint server (SPEC section 4) served by the in-memory engine: no sockets anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import threading
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import polysocket
from polysocket import server as server_module
from polysocket.endpoints import scan
from polysocket.page import SERVICE_PATH
from polysocket.testing import MemoryEngine, MemoryPeer, MemoryServer, install
from polysocket.transport import Accept, HttpRequest, ServerOptions, Transport, TransportClosed

HANDLERS = "polysocket_test_handlers"


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario, 15)

    return asyncio.run(bounded())


def descriptor(root, endpoint, handler=None):
    (root / f"{endpoint}.websocket").write_text(
        json.dumps({"handler": handler or f"{HANDLERS}:{endpoint}", "endpoint": endpoint})
    )


class ServerRecorder:
    """A server handler recording (method, session id, detail); tests await what they need."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self._changed = threading.Condition()

    def _add(self, method: str, detail: Any = None) -> None:
        with self._changed:
            self.calls.append((method, polysocket.getSession().id, detail))
            self._changed.notify_all()

    def onOpen(self) -> None:
        self._add("onopen")

    def onMessage(self, message: Any) -> Any:
        self._add("onmessage", message)
        return None

    def onError(self, error: str) -> None:
        self._add("onerror", error)

    def onClose(self) -> None:
        self._add("onclose", (polysocket.getCloseCode(), polysocket.getCloseReason()))

    def of(self, method: str) -> list[tuple[str, str, Any]]:
        return [call for call in self.calls if call[0] == method]

    @property
    def methods(self) -> list[str]:
        return [call[0] for call in self.calls]

    async def until(self, done: Callable[[ServerRecorder], bool]) -> None:
        """Wait (without blocking the loop) until ``done(self)`` holds."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: done(self), timeout=10)

        assert await asyncio.to_thread(wait), f"still waiting; calls so far: {self.calls}"


class Echo:
    def onMessage(self, message: Any) -> Any:
        return message


async def closed_with(end: MemoryPeer) -> tuple[int | None, str | None]:
    """Read (answering the close frame) until the connection ends; how it ended."""
    async for _ in end:
        pass
    return end.close_code, end.close_reason


@pytest.fixture
def handlers(monkeypatch):
    """A module the descriptors name handlers in: ``polysocket_test_handlers:<endpoint>``."""
    module = types.ModuleType(HANDLERS)
    module.echo = Echo()
    monkeypatch.setitem(sys.modules, HANDLERS, module)
    return module


@pytest.fixture
def root(tmp_path, handlers):
    descriptor(tmp_path, "echo")
    return tmp_path


@pytest.fixture
def engine():
    engine = MemoryEngine()
    with install(engine):
        yield engine


@pytest.fixture(autouse=True)
def no_leftover_sessions():
    yield
    left = {name: open for name, open in server_module.sessions._by_endpoint.items() if open}
    assert not left, f"test left sessions open: {left}"


@contextlib.asynccontextmanager
async def served(
    engine: MemoryEngine, root: Any, **options: Any
) -> AsyncIterator[tuple[server_module.EndpointServer, MemoryServer]]:
    options.setdefault("allow_module_handlers", True)  # the handlers are in a test module
    async with polysocket.serve(root, port=0, engine="memory", reload=False, **options) as app:
        yield app, engine.servers[app.port]


# -- routing ---------------------------------------------------------------------------------


def test_routing_answers(engine, root):
    async def scenario():
        async with served(engine, root) as (app, server):
            assert app.url == f"http://127.0.0.1:{app.port}/"
            page = await server.request("/")
            assert (page.status, page.content_type) == (200, "text/html; charset=utf-8")
            assert f"{SERVICE_PATH}echo".encode() in page.body
            listing = await server.request("/websockets/v4/endpoints")
            assert listing.content_type == "application/json"
            assert [e["endpoint"] for e in json.loads(listing.body)["endpoints"]] == ["echo"]
            assert (await server.request("/nothing")).status == 404
            post = await server.request("/", method="POST")
            assert (post.status, post.headers) == (405, {"Allow": "GET"})

            plain = await server.request(f"{SERVICE_PATH}echo", headers={"Host": "example:81"})
            assert (plain.status, plain.headers) == (426, {"Upgrade": "websocket"})
            assert f"ws://example:81{SERVICE_PATH}echo".encode() in plain.body
            unknown = await server.request(f"{SERVICE_PATH}nope")
            assert unknown.status == 404 and b"echo" not in unknown.body
            with pytest.raises(polysocket.ConnectError) as refused:
                await server.connect(f"{SERVICE_PATH}nope")
            assert refused.value.status == 404

            upgrade = server.build_request(f"{SERVICE_PATH}echo", upgrade=True)
            assert (await server.request(upgrade)).status == 101  # no session runs for it
            assert server.session_count == 0

    run(scenario())


def test_subprotocol_is_the_clients_first_the_server_allows(engine, root):
    async def scenario():
        async with served(engine, root, subprotocols=["chat", "superchat"]) as (_app, server):
            chosen = await server.connect(
                f"{SERVICE_PATH}echo", subprotocols=["x", "superchat", "chat"]
            )
            unmatched = await server.connect(f"{SERVICE_PATH}echo", subprotocols=["x"])
            assert (chosen.subprotocol, unmatched.subprotocol) == ("superchat", None)
            answer = await server.request(
                server.build_request(f"{SERVICE_PATH}echo", upgrade=True, subprotocols=["chat"])
            )
            assert answer.headers["Sec-WebSocket-Protocol"] == "chat"
            await chosen.close()
            await unmatched.close()

    run(scenario())


# -- sessions --------------------------------------------------------------------------------


def test_session_lifecycle_context_and_get_sessions(engine, root, handlers):
    handlers.rec = recorder = ServerRecorder()
    descriptor(root, "rec")

    async def scenario():
        async with served(engine, root) as (app, server):
            end = await server.connect(f"{SERVICE_PATH}rec?room=1", headers={"X-Test": "yes"})
            [session] = polysocket.getSessions("rec")  # registered once connect() returns
            assert session.endpoint == "rec" and not session.closed
            assert session.request_headers["x-test"] == "yes"
            assert session.remote_address[0] == "127.0.0.1"
            assert polysocket.getSessions("echo") == []
            assert "endpoint=rec" in repr(session)
            assert end.uri == f"ws://127.0.0.1:{app.port}{SERVICE_PATH}rec?room=1"
            assert (end.close_code, end.close_reason) == (None, None)  # open

            await end.send("hello")
            await end.send(b"\x00bin")
            await recorder.until(lambda r: len(r.of("onmessage")) == 2)
            await end.close(4000, "bye")
            assert (end.close_code, end.close_reason) == (4000, "bye")  # the server echoed it
            with pytest.raises(TransportClosed):
                await end.send("late")
            assert polysocket.getSessions("rec") == [] and session.closed
            await recorder.until(lambda r: "onclose" in r.methods)

        assert recorder.methods == ["onopen", "onmessage", "onmessage", "onclose"]
        assert {call[1] for call in recorder.calls} == {session.id}
        assert [call[2] for call in recorder.of("onmessage")] == ["hello", b"\x00bin"]
        assert recorder.calls[-1][2] == (4000, "bye")

    run(scenario())


def test_get_sessions_lists_the_open_ones_oldest_first(engine, root):
    async def scenario():
        async with served(engine, root) as (_app, server):
            ends = [await server.connect(f"{SERVICE_PATH}echo") for _ in range(3)]
            ports = [s.remote_address[1] for s in polysocket.getSessions("echo")]
            assert len(ports) == 3 and ports == sorted(ports)
            await ends[1].close()
            assert [s.remote_address[1] for s in polysocket.getSessions("echo")] == [
                ports[0],
                ports[2],
            ]
            for end in ends:
                await end.close()

    run(scenario())


def test_a_reply_is_what_on_message_returns(engine, root, handlers):
    async def awaited() -> str:
        return "awaited"

    class Replier(ServerRecorder):
        def onMessage(self, message):
            super().onMessage(message)
            if message == "coro":
                return awaited()  # a plain callback may return an awaitable: its result replies
            return {"none": None, "number": 42, "raw": bytearray(b"ra")}.get(
                message, message.upper()
            )

    class AsyncReplier:
        async def onMessage(self, message):
            return f"async:{message}"

    handlers.replier = recorder = Replier()
    handlers.asyncreplier = AsyncReplier()
    descriptor(root, "replier")
    descriptor(root, "asyncreplier")

    async def scenario():
        async with served(engine, root) as (_app, server):
            end = await server.connect(f"{SERVICE_PATH}replier")
            for message in ["hi", "none", "raw", "coro", "number", "after"]:
                await end.send(message)
            assert [await end.receive() for _ in range(4)] == ["HI", b"ra", "awaited", "AFTER"]
            [error] = recorder.of("onerror")  # 42 is no reply; the connection stays open
            assert "TypeError" in error[2] and "int" in error[2]
            assert not polysocket.getSessions("replier")[0].closed
            await end.close()

            other = await server.connect(f"{SERVICE_PATH}asyncreplier")
            await other.send("x")
            assert await other.receive() == "async:x"
            await other.close()

    run(scenario())


def test_a_handler_that_raises_reports_to_on_error_and_the_session_stays_open(
    engine, root, handlers
):
    class Failing(ServerRecorder):
        def onMessage(self, message):
            super().onMessage(message)
            if message == "boom":
                raise ValueError("bad message")
            return f"ok:{message}"

    handlers.failing = recorder = Failing()
    descriptor(root, "failing")

    async def scenario():
        async with served(engine, root) as (_app, server):
            end = await server.connect(f"{SERVICE_PATH}failing")
            await end.send("boom")
            await end.send("next")
            assert await end.receive() == "ok:next"
            await end.close()
            await recorder.until(lambda r: "onclose" in r.methods)
        assert recorder.methods == ["onopen", "onmessage", "onerror", "onmessage", "onclose"]
        assert recorder.of("onerror")[0][2] == "ValueError: bad message"
        assert recorder.of("onclose")[0][2] == (1000, "")

    run(scenario())


def test_a_session_that_fails_is_closed_with_1011(engine, root, monkeypatch, caplog):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot start")

    monkeypatch.setattr(server_module, "Connection", broken)

    async def scenario():
        async with served(engine, root) as (_app, server):
            end = await server.connect(f"{SERVICE_PATH}echo")
            assert await closed_with(end) == (1011, "session failed")

    run(scenario())
    assert "session on /websockets/v4/service/echo failed" in caplog.text
    assert "cannot start" in caplog.text


def test_a_message_over_max_size_closes_the_session_with_1009(engine, root, handlers):
    handlers.rec = recorder = ServerRecorder()
    descriptor(root, "rec")

    async def scenario():
        async with served(engine, root, max_size=10) as (_app, server):
            end = await server.connect(f"{SERVICE_PATH}rec")
            await end.send("x" * 10)
            await end.send("x" * 11)
            assert await closed_with(end) == (1009, "message too big")
            await recorder.until(lambda r: "onclose" in r.methods)
        assert recorder.methods == ["onopen", "onmessage", "onerror", "onclose"]
        assert "max_size=10" in recorder.of("onerror")[0][2]
        assert recorder.of("onclose")[0][2][0] == 1009

    run(scenario())


def test_a_dropped_client_ends_its_session_with_1006(engine, root, handlers):
    handlers.rec = recorder = ServerRecorder()
    descriptor(root, "rec")

    async def scenario():
        async with served(engine, root) as (_app, server):
            end = await server.connect(f"{SERVICE_PATH}rec")
            end.abort()
            await recorder.until(lambda r: "onclose" in r.methods)
            assert polysocket.getSessions("rec") == []
        assert recorder.of("onclose")[0][2] == (1006, "")

    run(scenario())


def test_session_send_and_close_from_outside_a_callback(engine, root):
    async def scenario():
        async with served(engine, root) as (_app, server):
            end = await server.connect(f"{SERVICE_PATH}echo")
            [session] = polysocket.getSessions("echo")
            session.send("pushed")
            session.send(memoryview(b"view"))
            assert [await end.receive(), await end.receive()] == ["pushed", b"view"]
            session.close(4002, "kicked")
            assert session.closed
            with pytest.raises(polysocket.ConnectionClosedError):
                session.send("late")
            assert await closed_with(end) == (4002, "kicked")

    run(scenario())


def test_our_close_crossing_the_clients_leaves_no_task_behind(engine, root):
    async def scenario():
        async with served(engine, root) as (_app, server):
            end = await server.connect(f"{SERVICE_PATH}echo")
            [session] = polysocket.getSessions("echo")
            closing = asyncio.ensure_future(end.close(4000, "client first"))
            await asyncio.sleep(0)  # the client's close frame is on its way...
            session.close()  # ...when the server decides to close too
            await closing
            while server.session_count:
                await asyncio.sleep(0)
            await asyncio.sleep(0)  # a cancelled task needs one more turn to finish
            left = [t for t in asyncio.all_tasks() if "Connection" in repr(t.get_coro())]
            assert not left, f"tasks left behind: {left}"

    run(scenario())


# -- broadcast -------------------------------------------------------------------------------


def test_broadcast_reaches_every_session_of_the_endpoint_and_counts_them(engine, root, handlers):
    handlers.chat = Echo()
    descriptor(root, "chat")

    async def scenario():
        async with served(engine, root) as (_app, server):
            room = [await server.connect(f"{SERVICE_PATH}chat") for _ in range(3)]
            outsider = await server.connect(f"{SERVICE_PATH}echo")
            assert polysocket.broadcast("chat", "news") == 3
            assert [await end.receive() for end in room] == ["news"] * 3

            leaving = polysocket.getSessions("chat")[0]
            leaving.close(4001, "leaving")  # closing, not yet closed: skipped
            assert polysocket.broadcast("chat", b"more") == 2
            assert await closed_with(room[0]) == (4001, "leaving")
            assert [await end.receive() for end in room[1:]] == [b"more", b"more"]
            assert polysocket.broadcast("nobody", "x") == 0

            await outsider.send("mine")
            assert await outsider.receive() == "mine"  # no broadcast reached it
            for end in [*room[1:], outsider]:
                await end.close()

    run(scenario())


def test_the_bundled_chat_sample_broadcasts_from_its_callbacks(engine):
    async def scenario():
        async with polysocket.serve(port=0, engine="memory", reload=False) as app:
            server = engine.servers[app.port]
            alice = await server.connect(f"{SERVICE_PATH}chat")
            assert (await alice.receive()).endswith(" joined")
            bob = await server.connect(f"{SERVICE_PATH}chat")
            joined = await alice.receive()
            assert joined == await bob.receive() and joined.endswith(" joined")
            await bob.send("hi all")
            said = await alice.receive()
            assert said == await bob.receive() and said.endswith(": hi all")
            await bob.close()
            assert (await alice.receive()).endswith(" left")
            await alice.close()

            echo = await server.connect(f"{SERVICE_PATH}my-endpoint")
            await echo.send("hello")
            assert await echo.receive() == "hello"
            await echo.close()

    run(scenario())


# -- shutdown and reload ---------------------------------------------------------------------


def test_closing_the_server_closes_every_session_with_1001_after_on_close(engine, root, handlers):
    handlers.rec = recorder = ServerRecorder()
    descriptor(root, "rec")

    async def scenario():
        app = await polysocket.serve(
            root, port=0, engine="memory", reload=False, allow_module_handlers=True
        )
        server = engine.servers[app.port]
        ends = [
            await server.connect(f"{SERVICE_PATH}rec"),
            await server.connect(f"{SERVICE_PATH}rec"),
            await server.connect(f"{SERVICE_PATH}echo"),
        ]
        readers = [asyncio.ensure_future(closed_with(end)) for end in ends]
        await recorder.until(lambda r: r.methods.count("onopen") == 2)
        await app.close()
        # every onClose has run by the time close() returns
        assert [call[2] for call in recorder.of("onclose")] == [(1001, "server shutting down")] * 2
        assert [await reader for reader in readers] == [(1001, "server shutting down")] * 3
        assert engine.servers == {} and server.closed and server.session_count == 0
        with pytest.raises(ConnectionRefusedError):
            await server.connect(f"{SERVICE_PATH}echo")
        with pytest.raises(polysocket.ConnectError, match="cannot connect"):
            await polysocket.connect(f"ws://127.0.0.1:{app.port}/", engine="memory")
        await app.close()  # twice is harmless

    run(scenario())


def test_closing_the_server_does_not_wait_for_a_client_that_never_answers(engine, root, handlers):
    handlers.rec = recorder = ServerRecorder()
    descriptor(root, "rec")

    async def scenario():
        app = await polysocket.serve(
            root,
            port=0,
            engine="memory",
            reload=False,
            close_timeout=0.2,
            allow_module_handlers=True,
        )
        deaf = await engine.servers[app.port].connect(f"{SERVICE_PATH}rec")
        await recorder.until(lambda r: "onopen" in r.methods)
        await app.close()  # bounded by close_timeout: the deaf client is dropped
        assert recorder.of("onclose")[0][2] == (1006, "")
        # what the deaf client finds when it reads at last: the close frame, no answer to it
        with pytest.raises(TransportClosed) as closed:
            await deaf.receive()
        assert closed.value.code == 1001

    run(scenario())


def test_reload_closes_the_sessions_of_a_removed_endpoint_with_1001(engine, root, handlers):
    handlers.gone = Echo()
    descriptor(root, "gone")

    async def scenario():
        async with served(engine, root) as (app, server):
            gone = await server.connect(f"{SERVICE_PATH}gone")
            kept = await server.connect(f"{SERVICE_PATH}echo")
            (root / "gone.websocket").unlink()
            reader = asyncio.ensure_future(closed_with(gone))
            await app.reload()
            assert await reader == (1001, "endpoint removed")
            assert list(app.scan.endpoints) == ["echo"]
            assert (await server.request(f"{SERVICE_PATH}gone")).status == 404
            await kept.send("still here")
            assert await kept.receive() == "still here"
            await kept.close()

    run(scenario())


def test_reload_leaves_another_servers_sessions_of_the_same_name_alone(engine, tmp_path, handlers):
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        root.mkdir()
        descriptor(root, "echo")

    async def scenario():
        async with served(engine, first) as (app_a, a), served(engine, second) as (_app_b, b):
            on_a = await a.connect(f"{SERVICE_PATH}echo")
            on_b = await b.connect(f"{SERVICE_PATH}echo")
            (first / "echo.websocket").unlink()
            reader = asyncio.ensure_future(closed_with(on_a))
            await app_a.reload()
            assert await reader == (1001, "endpoint removed")
            await on_b.send("still here")
            assert await on_b.receive() == "still here"
            await on_b.close()

    run(scenario())


def test_an_endpoint_removed_between_handshake_and_session_closes_with_1001(engine, root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()

    async def scenario():
        app = server_module.EndpointServer(
            root, engine, ServerOptions(), [], False, allow_module_handlers=True
        )

        class RemovedAfterRouting:
            def route(self, request: HttpRequest) -> Any:
                answer = app.route(request)
                app.scan = scan(empty)  # a reload lands between the handshake and the session
                return answer

            async def session(self, request: HttpRequest, transport: Transport) -> None:
                await app.session(request, transport)

        server = await engine.serve("127.0.0.1", 0, RemovedAfterRouting(), ServerOptions())
        end = await server.connect(f"{SERVICE_PATH}echo")
        assert await closed_with(end) == (1001, "endpoint removed")
        await server.close()

    run(scenario())


def test_the_watcher_reloads_a_changed_folder_and_survives_a_failing_reload(
    engine, root, handlers, monkeypatch, caplog
):
    monkeypatch.setattr(server_module, "RELOAD_INTERVAL", 0.01)
    real_scan = server_module.registry_folder.scan
    scans = []

    def flaky_scan(folder, **options):
        scans.append(folder)
        if len(scans) == 1:
            raise OSError("disk hiccup")
        return real_scan(folder, **options)

    handlers.later = handlers.again = Echo()

    async def scenario():
        async with polysocket.serve(
            root, port=0, engine="memory", allow_module_handlers=True
        ) as app:
            monkeypatch.setattr(server_module.registry_folder, "scan", flaky_scan)
            descriptor(root, "later")
            while not scans:  # the watcher polls; its first reload fails
                await asyncio.sleep(0.01)
            assert "later" not in app.scan.endpoints
            descriptor(root, "again")  # the next change is picked up all the same
            while "again" not in app.scan.endpoints:
                await asyncio.sleep(0.01)
            assert sorted(app.scan.endpoints) == ["again", "echo", "later"]

    run(scenario())
    assert "reloading the registry failed" in caplog.text


def test_a_cancelled_session_drops_its_connection(engine, root, handlers):
    handlers.rec = recorder = ServerRecorder()
    descriptor(root, "rec")

    async def scenario():
        app = server_module.EndpointServer(
            root, engine, ServerOptions(), [], False, allow_module_handlers=True
        )
        tasks = []

        class Watched:
            route = app.route

            async def session(self, request: HttpRequest, transport: Transport) -> None:
                tasks.append(asyncio.current_task())
                await app.session(request, transport)

        server = await engine.serve("127.0.0.1", 0, Watched(), ServerOptions())
        end = await server.connect(f"{SERVICE_PATH}rec")
        tasks[0].cancel()  # what an engine does to a session it gives up on
        assert await closed_with(end) == (1006, "")
        await recorder.until(lambda r: "onclose" in r.methods)
        assert recorder.of("onclose")[0][2] == (1006, "")
        await server.close()

    run(scenario())


def test_run_server_serves_until_sigterm_then_closes_every_session_with_1001(
    engine, root, monkeypatch
):
    signals: dict[int, Callable[[], None]] = {}
    monkeypatch.setattr(  # no real signal: the handler run_server installs is called instead
        asyncio.SelectorEventLoop,
        "add_signal_handler",
        lambda loop, sig, callback: signals.__setitem__(sig, callback),
    )
    seen = []
    start = server_module.EndpointServer.start

    async def client(app: server_module.EndpointServer) -> None:
        end = await engine.servers[app.port].connect(f"{SERVICE_PATH}echo")
        await end.send("hi")
        seen.append(await end.receive())
        signals[signal.SIGTERM]()
        seen.append(await closed_with(end))

    async def start_then_connect(self: Any, host: str, port: int) -> None:
        await start(self, host, port)
        asyncio.get_running_loop().create_task(client(self))

    monkeypatch.setattr(server_module.EndpointServer, "start", start_then_connect)
    polysocket.run_server(
        root, port=0, engine="memory", allow_module_handlers=True
    )  # returns on SIGTERM
    assert seen == ["hi", (1001, "server shutting down")]
    assert set(signals) == {signal.SIGINT, signal.SIGTERM} and engine.servers == {}


def test_the_documented_example(engine, tmp_path, monkeypatch):
    """README's "Testing without a network" and polysocket.testing's docstring."""
    shutil.copytree(server_module.SAMPLE_ROOT, tmp_path / "registry")
    monkeypatch.chdir(tmp_path)

    async def test_my_endpoint():
        async with polysocket.serve("registry/", port=0, engine="memory", reload=False) as app:
            server = engine.servers[app.port]
            assert (await server.request("/")).status == 200
            assert (await server.request("/websockets/v4/service/nope")).status == 404
            end = await server.connect("/websockets/v4/service/my-endpoint")
            await end.send("hello")
            assert await end.receive() == "hello"
            await end.close()
            assert polysocket.getSessions("my-endpoint") == []
            async with polysocket.connect(
                f"ws://test:{app.port}/websockets/v4/service/my-endpoint", engine="memory"
            ) as ws:
                await ws.send("again")
                assert await ws.recv() == "again"

    run(test_my_endpoint())


# -- the engine side -------------------------------------------------------------------------


def test_the_asyncio_client_reaches_a_memory_server_through_the_engine(engine, root):
    async def scenario():
        async with served(engine, root, subprotocols=["chat"]) as (app, _server):
            uri = f"ws://localhost:{app.port}{SERVICE_PATH}echo"
            async with polysocket.connect(
                uri, engine="memory", subprotocols=["chat"], headers={"X-A": "1"}
            ) as ws:
                assert ws.subprotocol == "chat"
                [session] = polysocket.getSessions("echo")
                assert session.request_headers["host"] == f"localhost:{app.port}"
                assert session.request_headers["x-a"] == "1"
                await ws.send("hi")
                assert await ws.recv() == "hi"
            assert ws.close_code == 1000
            with pytest.raises(polysocket.ConnectError) as rejected:
                await polysocket.connect(f"ws://localhost:{app.port}{SERVICE_PATH}x", "memory")
            assert rejected.value.status == 404

    run(scenario())


def test_a_memory_server_refuses_a_client_on_another_event_loop(engine, root, recorder):
    async def scenario():
        async with served(engine, root) as (app, _server):
            uri = f"ws://127.0.0.1:{app.port}{SERVICE_PATH}echo"
            with pytest.raises(polysocket.ConnectError, match="another event loop"):
                polysocket.createWebsocket(uri, recorder, engine="memory")

    run(scenario())


def test_memory_server_close_drops_the_sessions_left_and_cancels_the_stubborn(engine):
    ended: list[Any] = []
    cancelled: asyncio.Event

    class Raw:
        """A bare ServerApp: one session reads until the end, the other ignores everything."""

        def route(self, request: HttpRequest) -> Accept:
            return Accept()

        async def session(self, request: HttpRequest, transport: Transport) -> None:
            try:
                if request.path == "/reader":
                    with pytest.raises(TransportClosed) as closed:
                        while True:
                            await transport.receive()
                    ended.append(("reader", closed.value.code))
                else:
                    await asyncio.Event().wait()
            except asyncio.CancelledError:
                ended.append(("stubborn", "cancelled"))
                cancelled.set()
                raise

    async def scenario():
        nonlocal cancelled
        cancelled = asyncio.Event()
        server = await engine.serve("h", 0, Raw(), ServerOptions(close_timeout=0.05))
        reader = await server.connect("/reader")
        await server.connect("/stubborn")
        assert server.session_count == 2
        await server.close()  # drops both, waits close_timeout, then cancels the stubborn one
        await cancelled.wait()
        assert sorted(ended) == [("reader", None), ("stubborn", "cancelled")]
        assert await closed_with(reader) == (1006, "")

    run(scenario())


def test_serving_needs_the_server_capability_and_a_free_port(engine, root, handlers):
    async def scenario():
        with pytest.raises(OSError, match="taken"):
            async with served(engine, root) as (app, _):
                await engine.serve("127.0.0.1", app.port, app, ServerOptions())

    run(scenario())
    with (
        install(MemoryEngine(name="clientonly", capabilities=frozenset({"client"}))),
        pytest.raises(polysocket.EngineUnavailableError, match="cannot serve"),
    ):
        polysocket.serve(engine="clientonly")
