"""SPEC 2.1-2.3, 2.5, 2.7 and 3: the seed, the callback lifecycle, handlers, threads."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import polysocket
from polysocket_conformance.peer_processes import Peer
from polysocket_conformance.support import (
    OUTSIDE,
    WAIT,
    AsyncRecorder,
    Recorder,
    handler_source,
    outside_callback_state,
    shared_recorder,
)


def test_seed(engine: str, peer: Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dirigible example, verbatim in Python: a handler file under the handler root."""
    key = f"seed-{tmp_path.name}"
    (tmp_path / "my-project").mkdir()
    (tmp_path / "my-project" / "ws-handler.py").write_text(handler_source(key))
    monkeypatch.setenv("POLYSOCKET_ROOT", str(tmp_path))
    recorder = shared_recorder(key)
    before = polysocket.getClients()

    websocket = polysocket.createWebsocket(peer.uri, "my-project/ws-handler", engine)
    listed = polysocket.getClients()
    assert listed == [
        *before,
        {"id": websocket.id, "uri": peer.uri, "handler": "my-project/ws-handler", "engine": engine},
    ]
    websocket.send("hello")
    assert recorder.wait_message(lambda m: m == "hello"), f"no echo: {recorder.names}"

    found = polysocket.getClientByHandler("my-project/ws-handler")
    assert found is websocket
    found.close()

    assert recorder.wait_closed(), f"onClose did not run: {recorder.names}"
    assert recorder.names == ["onopen", "onmessage", "onclose"]
    assert recorder.of("onclose")[0].close_code == 1000
    assert polysocket.getClients() == before == []
    recorder.assert_well_formed()


def test_lifecycle_order_and_context(engine: str, peer: Peer) -> None:
    """onOpen once and first, onClose once and last; the context API inside and outside."""
    recorder = Recorder()
    assert outside_callback_state() == OUTSIDE

    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    assert recorder.opened.wait(WAIT), "onOpen did not run"
    for i in range(3):
        client.send(f"m{i}")
    assert recorder.wait_messages(3) == ["m0", "m1", "m2"]
    assert outside_callback_state() == OUTSIDE, "the context API leaked out of a callback"
    client.close()
    assert recorder.wait_closed(), "onClose did not run"

    recorder.assert_well_formed()
    assert recorder.names == ["onopen", "onmessage", "onmessage", "onmessage", "onclose"]
    opened, *messages, closed = recorder.calls
    assert opened.session is client, "getSession() in onOpen is not the client"
    assert client.id in opened.client_ids, "the client was not registered during onOpen"
    assert opened.message is None and opened.error is None and opened.close_code is None
    for call, text in zip(messages, ["m0", "m1", "m2"], strict=True):
        assert call.session is client
        assert call.message == text, "getMessage() differs from the onMessage argument"
        assert call.close_code is None and call.error is None
        assert client.id in call.client_ids
    assert closed.session is client
    assert client.id not in closed.client_ids, "the client was still registered during onClose"
    assert (closed.close_code, closed.close_reason) == (1000, "")
    assert closed.message is None and closed.error is None
    assert outside_callback_state() == OUTSIDE


def test_client_registry(engine: str, peer: Peer) -> None:
    """getClients() oldest first; getClient(id); getClientByHandler finds the oldest."""
    first, second, other = Recorder(), Recorder(), Recorder()
    a = polysocket.createWebsocket(peer.uri, first, engine)
    b = polysocket.createWebsocket(peer.uri, second, engine)
    c = polysocket.createWebsocket(peer.uri, first, engine)
    try:
        assert len({a.id, b.id, c.id}) == 3, "client ids are not unique"
        assert [info["id"] for info in polysocket.getClients()] == [a.id, b.id, c.id]
        for client in (a, b, c):
            assert polysocket.getClient(client.id) is client
            assert (client.uri, client.engine) == (peer.uri, engine)
        assert polysocket.getClientByHandler(first) is a
        assert polysocket.getClientByHandler(second) is b
        assert polysocket.getClientByHandler(other) is None
        a.close()
        assert polysocket.getClient(a.id) is None
        assert polysocket.getClientByHandler(first) is c
        assert [info["id"] for info in polysocket.getClients()] == [b.id, c.id]
    finally:
        for client in (a, b, c):
            client.close()
    assert polysocket.getClients() == []
    assert first.wait_closed() and second.wait_closed()


def test_handler_as_dotted_module_with_snake_case_callbacks(
    engine: str, peer: Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 3: "pkg.module" and "pkg.module:obj" handlers; on_open... spellings."""
    key = f"dotted-{tmp_path.name}"
    package = tmp_path / f"conformance_handlers_{tmp_path.name.replace('-', '_')}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ws_handler.py").write_text(
        handler_source(key, snake_case=True)
        + "\n\nclass Obj:\n    pass\n\n\nobj = Obj()\nobj.onMessage = on_message\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    recorder = shared_recorder(key)

    client = polysocket.createWebsocket(peer.uri, f"{package.name}.ws_handler", engine)
    client.send("dotted")
    assert recorder.wait_message(lambda m: m == "dotted")
    client.close()
    assert recorder.wait_closed()
    assert recorder.names == ["onopen", "onmessage", "onclose"]

    second = polysocket.createWebsocket(peer.uri, f"{package.name}.ws_handler:obj", engine)
    second.send("attribute")
    assert recorder.wait_message(lambda m: m == "attribute")
    second.close()
    # obj has onMessage only: no further onOpen/onClose on the shared recorder.
    assert recorder.names == ["onopen", "onmessage", "onclose", "onmessage"]


def test_close_twice_is_fine(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.close()
    client.close()
    client.close(4005, "again")
    assert recorder.wait_closed()
    assert len(recorder.of("onclose")) == 1
    assert recorder.of("onclose")[0].close_code == 1000
    recorder.assert_well_formed()


class ClosesOnMessage(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.close_returned = threading.Event()

    def on_message_hook(self, message: Any) -> None:
        polysocket.getSession().close()
        self.close_returned.set()


def test_close_from_inside_on_message(engine: str, peer: Peer) -> None:
    """SPEC 2.7: close() from a callback returns (no deadlock); onClose follows with 1000."""
    recorder = ClosesOnMessage()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send("close me")
    assert recorder.close_returned.wait(WAIT), "close() inside onMessage did not return"
    assert recorder.wait_closed(), "onClose did not follow close() from onMessage"
    assert recorder.names == ["onopen", "onmessage", "onclose"]
    assert recorder.of("onclose")[0].close_code == 1000
    assert peer.last_close()["code"] == 1000
    recorder.assert_well_formed()


class SlowOnMessage(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.sleeping = threading.Event()
        self.woke = threading.Event()

    def on_message_hook(self, message: Any) -> None:
        self.sleeping.set()
        time.sleep(2)  # the behaviour under test: a blocking handler
        self.woke.set()


def test_slow_handler_does_not_delay_other_clients(engine: str, peer: Peer) -> None:
    """SPEC 2.5: a callback that blocks holds only its own connection."""
    slow, fast = SlowOnMessage(), Recorder()
    a = polysocket.createWebsocket(peer.uri, slow, engine)
    b = polysocket.createWebsocket(peer.uri, fast, engine)
    a.send("sleep")
    assert slow.sleeping.wait(WAIT), "A's onMessage never started"
    started = time.monotonic()
    for i in range(100):
        b.send(str(i))
    got = fast.wait_messages(100, timeout=1.5)
    elapsed = time.monotonic() - started
    assert got == [str(i) for i in range(100)], f"B got {len(got)}/100 echoes in {elapsed:.2f} s"
    assert not slow.woke.is_set(), "B's echoes only arrived after A's 2 s callback ended"
    b.close()
    assert slow.woke.wait(WAIT)
    a.close()
    assert slow.wait_closed() and fast.wait_closed()


class RaisesOnMessage(Recorder):
    def on_message_hook(self, message: Any) -> None:
        if message == "raise":
            raise ValueError("conformance boom 42")


def test_callback_exception_goes_to_on_error(engine: str, peer: Peer) -> None:
    """SPEC 2.5: a raising callback is reported through onError; the connection stays open."""
    recorder = RaisesOnMessage()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send("raise")
    assert recorder.errored.wait(WAIT), "onError did not run for a raising onMessage"
    client.send("after")
    assert recorder.wait_message(lambda m: m == "after"), "the connection did not stay open"
    client.close()
    assert recorder.wait_closed()
    assert recorder.names == ["onopen", "onmessage", "onerror", "onmessage", "onclose"]
    error = recorder.errors[0]
    assert isinstance(error, str), f"onError got {type(error).__name__}, not str"
    assert "conformance boom 42" in error
    assert "Error: " + error  # the seed's idiom works
    call = recorder.of("onerror")[0]
    assert call.error == error, "getError() differs from the onError argument"
    assert recorder.of("onclose")[0].close_code == 1000
    recorder.assert_well_formed()


def test_async_callbacks(engine: str, peer: Peer) -> None:
    """SPEC 2.5: a handler of async def callbacks runs on the loop, in order, never overlapping."""
    recorder = AsyncRecorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    expected = [f"a{i}" for i in range(200)]
    for text in expected:
        client.send(text)
    assert recorder.wait_messages(200) == expected
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed(on_loop=True)
    assert recorder.of("onclose")[0].close_code == 1000
    assert recorder.of("onopen")[0].session is client


def test_sync_api_inside_running_event_loop(engine: str, peer: Peer) -> None:
    """The sync API, called synchronously from a coroutine (Jupyter, a web framework handler...)."""
    recorder = Recorder()

    async def main() -> list[Any]:
        asyncio.get_running_loop()
        client = polysocket.createWebsocket(peer.uri, recorder, engine)
        client.send("from a loop")
        client.send(b"\x01binary")
        got = recorder.wait_messages(2)
        client.close()
        return got

    assert asyncio.run(main()) == ["from a loop", b"\x01binary"]
    assert recorder.wait_closed()
    assert recorder.of("onclose")[0].close_code == 1000
    recorder.assert_well_formed()


@pytest.mark.parametrize("spelling", ["camelCase", "snake_case"])
def test_both_spellings_exist(spelling: str) -> None:
    """SPEC 1: every public function in both spellings, the same object."""
    pairs = {
        "createWebsocket": "create_websocket",
        "getClients": "get_clients",
        "getClient": "get_client",
        "getClientByHandler": "get_client_by_handler",
        "getMessage": "get_message",
        "getError": "get_error",
        "getMethod": "get_method",
        "isOnOpen": "is_on_open",
        "isOnMessage": "is_on_message",
        "isOnError": "is_on_error",
        "isOnClose": "is_on_close",
        "getSession": "get_session",
        "getCloseCode": "get_close_code",
        "getCloseReason": "get_close_reason",
    }
    for camel, snake in pairs.items():
        name = camel if spelling == "camelCase" else snake
        assert callable(getattr(polysocket, name, None)), f"polysocket.{name} is missing"
        assert getattr(polysocket, camel) is getattr(polysocket, snake)
