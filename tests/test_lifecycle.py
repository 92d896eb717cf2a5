"""Issue 9, item 6: live reload that a handler module cannot wedge or kill, endpoint names that
stay with their descriptor, module handlers refused by the server unless allowed, and a
shutdown that a hung import does not hold up. Served by the in-memory engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import polysocket
from polysocket.endpoints import scan
from polysocket.page import SERVICE_PATH
from polysocket.runtime import background
from polysocket.testing import MemoryEngine, install
from polysocket.transport import Accept, HttpRequest, ServerOptions, Transport, TransportClosed

ECHO = "def onMessage(message):\n    return message\n"
#: A module that never finishes executing: it waits on an event nobody sets.
HANGS = "import threading\nthreading.Event().wait()\n"


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario, 15)

    return asyncio.run(bounded())


def descriptor(root: Path, file: str, endpoint: str, handler: str) -> Path:
    path = root / file
    path.write_text(json.dumps({"handler": handler, "endpoint": endpoint}))
    return path


def handler_file(root: Path, name: str, source: str) -> None:
    (root / f"{name}.py").write_text(source)


@pytest.fixture
def engine():
    engine = MemoryEngine()
    with install(engine):
        yield engine


@pytest.fixture
def root(tmp_path: Path) -> Path:
    handler_file(tmp_path, "echo", ECHO)
    descriptor(tmp_path, "m-echo.websocket", "echo", "echo")
    return tmp_path


async def echoes(engine: MemoryEngine, port: int, endpoint: str) -> bool:
    """Whether ``endpoint`` is served and echoes."""
    end = await engine.servers[port].connect(SERVICE_PATH + endpoint)
    await end.send("ping")
    answer = await asyncio.wait_for(end.receive(), 5)
    await end.close()
    return answer == "ping"


def problems(app: polysocket.EndpointServer) -> str:
    return "\n".join(str(p) for p in app.scan.problems)


# -- a handler module that raises SystemExit / KeyboardInterrupt at import ----------------


@pytest.mark.parametrize("raised", ["SystemExit(3)", "KeyboardInterrupt()"])
def test_a_handler_raising_systemexit_at_import_is_a_descriptor_problem_at_start(
    engine, root, raised
):
    handler_file(root, "quits", f"raise {raised}\n")
    descriptor(root, "quits.websocket", "quits", "quits")

    async def scenario():
        async with polysocket.serve(root, port=0, engine="memory", reload=False) as app:
            assert list(app.scan.endpoints) == ["echo"]
            assert "handler 'quits'" in problems(app)
            assert raised.split("(")[0] in problems(app)
            assert await echoes(engine, app.port, "echo")

    run(scenario())


@pytest.mark.parametrize("raised", ["SystemExit(3)", "KeyboardInterrupt()"])
def test_a_handler_raising_systemexit_at_import_is_a_descriptor_problem_on_reload(
    engine, root, raised
):
    async def scenario():
        async with polysocket.serve(root, port=0, engine="memory", reload=False) as app:
            handler_file(root, "quits", f"raise {raised}\n")
            descriptor(root, "quits.websocket", "quits", "quits")
            await app.reload()
            assert list(app.scan.endpoints) == ["echo"]
            assert raised.split("(")[0] in problems(app)
            assert await echoes(engine, app.port, "echo")

    run(scenario())


# -- a handler module that hangs at import ------------------------------------------------


def test_a_handler_hanging_at_import_is_a_problem_within_import_timeout(engine, root):
    """At start and on reload: the hung module costs import_timeout once, is listed as a
    problem, leaves a daemon thread behind, and is not executed again while it hangs."""
    handler_file(root, "hangs", HANGS)
    descriptor(root, "hangs.websocket", "hangs", "hangs")

    async def scenario():
        started = time.monotonic()
        async with polysocket.serve(
            root, port=0, engine="memory", reload=False, import_timeout=0.3
        ) as app:
            assert time.monotonic() - started < 3
            assert list(app.scan.endpoints) == ["echo"]
            assert "handler 'hangs' did not finish importing within 0.3 s" in problems(app)
            hung = [t for t in threading.enumerate() if t.name == "polysocket-import hangs"]
            assert len(hung) == 1 and hung[0].daemon
            descriptor(root, "later.websocket", "later", "echo")
            reloaded = time.monotonic()
            await app.reload()  # the same hung file: not waited for again
            assert time.monotonic() - reloaded < 0.3
            assert sorted(app.scan.endpoints) == ["echo", "later"]
            assert "did not finish importing" in problems(app)
            assert [t.name for t in threading.enumerate()].count("polysocket-import hangs") == 1
            assert await echoes(engine, app.port, "later")

    run(scenario())


def test_a_handler_that_imports_slowly_is_served_once_it_has_loaded(engine, root):
    handler_file(root, "slow", "import time\ntime.sleep(0.6)\n" + ECHO)
    descriptor(root, "slow.websocket", "slow", "slow")

    async def scenario():
        async with polysocket.serve(
            root, port=0, engine="memory", reload=False, import_timeout=0.2
        ) as app:
            assert "slow" not in app.scan.endpoints
            await asyncio.sleep(0.8)
            await app.reload()  # the import finished meanwhile: its module is used
            assert "slow" in app.scan.endpoints, problems(app)
            assert await echoes(engine, app.port, "slow")

    run(scenario())


def test_import_timeout_is_checked():
    with pytest.raises(TypeError, match="import_timeout must be a positive number"):
        polysocket.serve(import_timeout=0)


# -- endpoint names stay with their descriptor ----------------------------------------------


def test_at_first_scan_the_first_descriptor_in_path_order_wins(root):
    descriptor(root, "a-other.websocket", "echo", "echo")
    result = scan(root)
    assert result.endpoints["echo"].file.name == "a-other.websocket"
    [duplicate] = result.problems
    assert "a-other.websocket (served)" in str(duplicate)
    assert "m-echo.websocket (ignored)" in str(duplicate)


def test_on_reload_a_served_endpoint_keeps_its_descriptor(engine, root):
    """A new descriptor that sorts first claims a served name: the name stays where it is,
    and the newcomer is the one reported (naming both files)."""
    handler_file(root, "shout", "def onMessage(message):\n    return message.upper()\n")

    async def scenario():
        async with polysocket.serve(root, port=0, engine="memory", reload=False) as app:
            descriptor(root, "a-takeover.websocket", "echo", "shout")
            await app.reload()
            assert app.scan.endpoints["echo"].file.name == "m-echo.websocket"
            [duplicate] = app.scan.problems
            assert duplicate.files == (root / "m-echo.websocket", root / "a-takeover.websocket")
            assert "a-takeover.websocket (ignored)" in str(duplicate)
            assert await echoes(engine, app.port, "echo")  # not shouted
            (root / "m-echo.websocket").unlink()  # the owner leaves: the newcomer takes over
            await app.reload()
            assert app.scan.endpoints["echo"].file.name == "a-takeover.websocket"
            assert app.scan.problems == []

    run(scenario())


# -- module handlers ------------------------------------------------------------------------


@pytest.fixture
def module_handler(tmp_path, monkeypatch):
    """An importable module on sys.path, outside the registry folder."""
    package = tmp_path / "site" / "lifecycle_test_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ws.py").write_text(
        ECHO
        + "class Obj:\n    onMessage = staticmethod(onMessage)\n"
        + "class Recorder:\n    got = []\n"
        + "    @classmethod\n    def onMessage(cls, message):\n        cls.got.append(message)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "lifecycle_test_pkg.ws"
    for name in ("lifecycle_test_pkg", "lifecycle_test_pkg.ws"):
        sys.modules.pop(name, None)


def test_the_server_refuses_module_handlers_unless_allowed(engine, root, module_handler):
    descriptor(root, "mod.websocket", "mod", module_handler)
    descriptor(root, "obj.websocket", "obj", module_handler + ":Obj")

    async def scenario():
        async with polysocket.serve(root, port=0, engine="memory", reload=False) as app:
            assert list(app.scan.endpoints) == ["echo"]
            text = problems(app)
            assert "lifecycle_test_pkg.ws' is not a file under the registry folder" in text
            assert "allow_module_handlers=True" in text and "--allow-module-handlers" in text
            assert module_handler not in sys.modules  # refused before any import
        async with polysocket.serve(
            root, port=0, engine="memory", reload=False, allow_module_handlers=True
        ) as app:
            assert sorted(app.scan.endpoints) == ["echo", "mod", "obj"], problems(app)
            assert await echoes(engine, app.port, "mod")

    run(scenario())


def test_clients_keep_accepting_module_handlers(engine, module_handler):
    """createWebsocket still resolves a module name (the refusal is the server's alone)."""
    server = background.run(engine.serve("127.0.0.1", 0, _Greeter(), ServerOptions()), "serve")
    try:
        client = polysocket.createWebsocket(
            f"ws://127.0.0.1:{server.port}/", module_handler + ":Recorder", "memory"
        )
        deadline = time.monotonic() + 5
        recorder = sys.modules[module_handler].Recorder
        while not recorder.got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.got == ["hello from the server"]
        client.close()
    finally:
        background.run(server.close(), "close")


class _Greeter:
    """A bare ServerApp: every request is accepted, greeted, and closed."""

    def route(self, request: HttpRequest) -> Accept:
        return Accept(None)

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        await transport.send("hello from the server")
        with contextlib.suppress(TransportClosed):
            while True:
                await transport.receive()


# -- shutdown while a reload is wedged --------------------------------------------------------


def test_sigterm_exits_while_a_reload_hangs_on_a_handler_import(tmp_path):
    """A handler module that hangs at import, added while the server runs: the reload lists
    it as a problem, and SIGTERM still exits 0 at once (the import's thread is a daemon)."""
    handler_file(tmp_path, "echo", ECHO)
    descriptor(tmp_path, "echo.websocket", "echo", "echo")
    command = ["serve", str(tmp_path), "--port", "0", "--close-timeout", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "polysocket", *command, "--import-timeout", "0.5"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stderr or ()), daemon=True)
    reader.start()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 10
        while not any(text in line for line in log):
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{''.join(log)}"
            time.sleep(0.05)

    try:
        wait_for("serving 1 endpoint(s)")
        handler_file(tmp_path, "hangs", HANGS)
        descriptor(tmp_path, "hangs.websocket", "hangs", "hangs")
        time.sleep(1.5)  # the watcher sees it within 0.5 s; then the import hangs
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, "".join(log)
        assert time.monotonic() - started < 2, "".join(log)
        reader.join(5)
        assert any("did not finish importing within 0.5 s" in line for line in log), log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
