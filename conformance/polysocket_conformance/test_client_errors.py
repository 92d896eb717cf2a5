"""SPEC 2.1, 2.4, 2.6-2.8, 5, 6: failures, close codes, options, capabilities."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import polysocket
from polysocket.plugins import registry
from polysocket_conformance.peer_processes import Peer
from polysocket_conformance.rawframes import RawServer, frame
from polysocket_conformance.support import (
    WAIT,
    ClosedPort,
    Recorder,
    Tripwire,
    require_capability,
)


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    server = Tripwire()
    yield server
    server.close()


@pytest.fixture
def closed_port() -> Iterator[ClosedPort]:
    port = ClosedPort()
    yield port
    port.close()


# -- close codes (2.8) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, "bye"), (1001, "going"), (1011, "oops"), (4000, "bye")]
)
def test_peer_close_code_and_reason(engine: str, peer: Peer, code: int, reason: str) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send(f"cmd:close:{code}:{reason}")
    assert recorder.wait_closed(), "onClose did not run after the peer closed"
    closed = recorder.of("onclose")
    assert len(closed) == 1
    assert (closed[0].close_code, closed[0].close_reason) == (code, reason)
    assert not recorder.errors, f"onError ran for a clean close: {recorder.errors}"
    assert polysocket.getClient(client.id) is None
    recorder.assert_well_formed()


def test_messages_before_peer_close_all_arrive_first(engine: str, peer: Peer) -> None:
    """SPEC 2.3: a burst then a close: every message arrives, in order, before onClose."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send("cmd:burst:3000")
    client.send("cmd:close:4000:after burst")
    assert recorder.wait_closed(20), f"onClose did not run ({len(recorder.messages)} messages)"
    assert recorder.messages == [str(i) for i in range(3000)]
    closed = recorder.of("onclose")[0]
    assert (closed.close_code, closed.close_reason) == (4000, "after burst")
    assert polysocket.getClient(client.id) is None
    recorder.assert_well_formed()


@pytest.mark.parametrize(
    ("args", "code", "reason"),
    [((), 1000, ""), ((4001, "done"), 4001, "done"), ((1001, "away"), 1001, "away")],
    ids=["plain", "4001", "1001"],
)
def test_client_close_code_and_reason(
    engine: str, peer: Peer, args: tuple[()] | tuple[int, str], code: int, reason: str
) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.close(*args)
    assert recorder.wait_closed(), "onClose did not run after close()"
    closed = recorder.of("onclose")
    assert len(closed) == 1
    assert (closed[0].close_code, closed[0].close_reason) == (code, reason)
    seen = peer.last_close()
    assert (seen["code"], seen["reason"]) == (code, reason), f"the peer received {seen}"
    assert not recorder.errors
    recorder.assert_well_formed()


def test_message_over_max_size(engine: str, peer: Peer) -> None:
    """SPEC 2.8: onError mentions the limit, then onClose with 1009, exactly once each."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine, max_size=1024)
    client.send("small")
    assert recorder.wait_message(lambda m: m == "small")
    client.send("cmd:big:4096")
    assert recorder.wait_closed(), "onClose did not run after an oversized message"
    assert recorder.names == ["onopen", "onmessage", "onerror", "onclose"]
    error = recorder.errors[0]
    assert isinstance(error, str), f"onError got {type(error).__name__}, not str"
    assert "1024" in error, f"the error text does not mention the size limit: {error!r}"
    assert recorder.of("onclose")[0].close_code == 1009
    assert polysocket.getClient(client.id) is None
    assert peer.last_close()["code"] == 1009, "the peer did not receive close code 1009"
    recorder.assert_well_formed()


def test_message_at_max_size_is_accepted(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine, max_size=1024)
    client.send("cmd:big:1024")
    assert recorder.wait_messages(1) == [b"x" * 1024]
    client.close()
    assert recorder.wait_closed()
    assert not recorder.errors
    assert recorder.of("onclose")[0].close_code == 1000


# -- connection lost (2.3, 2.8) -------------------------------------------------------------


def test_peer_killed_mid_stream(
    engine: str, peer: Peer, start_private_peer: Callable[[str], Peer]
) -> None:
    """SIGKILL the peer process while a burst is arriving: exactly one onClose, code 1006."""
    private = start_private_peer(peer.kind)
    recorder = Recorder()
    client = polysocket.createWebsocket(private.uri, recorder, engine)
    client.send("cmd:burst:100000000")
    assert recorder.wait_for(lambda r: len(r.of("onmessage")) >= 200), "the burst never started"
    private.kill()
    assert recorder.wait_closed(20), "onClose did not run after the peer was killed"
    assert len(recorder.of("onclose")) == 1
    assert recorder.of("onclose")[0].close_code == 1006
    assert polysocket.getClient(client.id) is None
    assert client.id not in [c["id"] for c in polysocket.getClients()]
    messages = recorder.messages
    assert messages == [str(i) for i in range(len(messages))], "burst out of order before loss"
    with pytest.raises(polysocket.ConnectionClosedError):
        client.send("too late")
    recorder.assert_well_formed()


def test_peer_drops_connection(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send("cmd:kill")
    assert recorder.wait_closed(), "onClose did not run after the connection dropped"
    assert len(recorder.of("onclose")) == 1
    assert recorder.of("onclose")[0].close_code == 1006
    assert polysocket.getClient(client.id) is None
    recorder.assert_well_formed()


def test_close_bounded_by_close_timeout(engine: str, raw_server: Callable[..., RawServer]) -> None:
    """SPEC 2.7: a peer that never answers the close frame (nor closes TCP): close() returns,
    with onClose run, within close_timeout=0.5 and a little."""
    server = raw_server(answer_close=False)
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri, recorder, engine, close_timeout=0.5)
    assert recorder.opened.wait(WAIT)
    started = time.monotonic()
    client.close()
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"close() with close_timeout=0.5 took {elapsed:.2f} s"
    assert recorder.closed.is_set(), "close() returned before onClose ran"
    assert recorder.names == ["onopen", "onclose"]
    assert recorder.of("onclose")[0].close_code == 1006, "no close frame came back: 1006"
    assert polysocket.getClient(client.id) is None
    recorder.assert_well_formed()


def test_protocol_error_from_peer(engine: str, raw_server: Callable[..., RawServer]) -> None:
    """SPEC 2.3/2.4: a frame with a reserved opcode fails the connection with 1002."""
    server = raw_server([frame(0x3, mask=False)])  # FIN + reserved opcode 0x3, empty
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri, recorder, engine, close_timeout=1)
    assert recorder.wait_closed(), "onClose did not run after a protocol error"
    assert recorder.names == ["onopen", "onerror", "onclose"]
    assert isinstance(recorder.errors[0], str)
    assert recorder.of("onclose")[0].close_code == 1002
    assert server.done.wait(WAIT)
    assert server.close_code == 1002, "the peer did not get the failing close frame"
    assert recorder.messages == []
    assert polysocket.getClient(client.id) is None
    recorder.assert_well_formed()


# -- connect failures (2.1) -----------------------------------------------------------------


def test_connection_refused(engine: str, closed_port: ClosedPort) -> None:
    recorder = Recorder()
    before = polysocket.getClients()
    with pytest.raises(polysocket.ConnectError) as caught:
        polysocket.createWebsocket(closed_port.uri, recorder, engine, open_timeout=5)
    assert isinstance(caught.value, polysocket.WebsocketError)
    assert caught.value.status is None
    assert str(closed_port.port) in str(caught.value), "the error does not name the target"
    assert recorder.calls == [], f"callbacks ran for a refused connection: {recorder.names}"
    assert polysocket.getClients() == before


def test_handshake_rejected(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    before = polysocket.getClients()
    with pytest.raises(polysocket.ConnectError) as caught:
        polysocket.createWebsocket(peer.url("/reject"), recorder, engine)
    assert caught.value.status == 404
    assert "404" in str(caught.value)
    assert recorder.calls == []
    assert polysocket.getClients() == before


def test_open_timeout(engine: str, tripwire: Tripwire) -> None:
    """A server that accepts TCP but never answers the handshake: ConnectError in time."""
    recorder = Recorder()
    before = polysocket.getClients()
    started = time.monotonic()
    with pytest.raises(polysocket.ConnectError) as caught:
        polysocket.createWebsocket(tripwire.uri, recorder, engine, open_timeout=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"open_timeout=0.5 took {elapsed:.2f} s"
    assert tripwire.connections() == 1, "the client never reached the server"
    assert caught.value.status is None
    assert "timed out" in str(caught.value) or "timeout" in str(caught.value)
    assert recorder.calls == []
    assert polysocket.getClients() == before


def test_not_a_websocket_uri(engine: str) -> None:
    with pytest.raises(polysocket.ConnectError):
        polysocket.createWebsocket("http://127.0.0.1:9/", Recorder(), engine)


# -- send / close misuse (2.6, 2.7) ---------------------------------------------------------


def test_send_after_close(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.close()
    with pytest.raises(polysocket.ConnectionClosedError):
        client.send("late")
    with pytest.raises(polysocket.ConnectionClosedError):
        client.send(b"late")
    assert recorder.wait_closed()
    assert recorder.messages == []


def test_send_after_peer_closed(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send("cmd:close:4003:gone")
    assert recorder.wait_closed()
    with pytest.raises(polysocket.ConnectionClosedError) as caught:
        client.send("late")
    assert caught.value.code == 4003


@pytest.mark.parametrize("bad", [123, 1.5, None, ["list"], {"a": 1}], ids=repr)
def test_send_wrong_type(engine: str, peer: Peer, bad: object) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    with pytest.raises(TypeError):
        client.send(bad)  # type: ignore[arg-type]  # the wrong type, on purpose
    client.send("still works")
    assert recorder.wait_message(lambda m: m == "still works"), "the connection broke"
    client.close()
    assert recorder.wait_closed()
    assert recorder.names == ["onopen", "onmessage", "onclose"]


def test_send_text_with_a_lone_surrogate(engine: str, peer: Peer) -> None:
    """A str UTF-8 cannot carry is refused by send(), and nothing is lost."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    with pytest.raises(ValueError, match="surrogate"):
        client.send("caf\udce9")  # what bytes.decode(errors="surrogateescape") leaves
    client.send("still works ✓")
    assert recorder.wait_message(lambda m: m == "still works ✓"), "the connection broke"
    client.close()
    assert recorder.wait_closed()
    assert recorder.names == ["onopen", "onmessage", "onclose"]


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_close_with_invalid_code(engine: str, peer: Peer, code: int) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    with pytest.raises(ValueError):
        client.close(code)
    client.send("still open")
    assert recorder.wait_message(lambda m: m == "still open")
    client.close()
    assert recorder.wait_closed()


# -- resolution before traffic (2.1, 3, 5) --------------------------------------------------


def test_unknown_engine(tripwire: Tripwire) -> None:
    with pytest.raises(polysocket.UnknownEngineError) as caught:
        polysocket.createWebsocket(tripwire.uri, Recorder(), "no-such-engine")
    text = str(caught.value)
    assert "no-such-engine" in text
    installed = registry.names()
    assert installed, "no engine is installed"
    for name in installed:
        assert name in text, f"the error does not list installed engine {name!r}: {text}"
    with pytest.raises(polysocket.UnknownEngineError):
        polysocket.connect(tripwire.uri, engine="no-such-engine")
    assert tripwire.connections() == 0, "an unknown engine still caused network traffic"
    assert polysocket.getClients() == []


def test_bad_handler_path(
    engine: str, tripwire: Tripwire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYSOCKET_ROOT", str(tmp_path))
    for spec in ("no-such-project/no-such-handler", "../outside/handler", "/abs/handler"):
        with pytest.raises(polysocket.HandlerNotFoundError) as caught:
            polysocket.createWebsocket(tripwire.uri, spec, engine)
        assert spec.lstrip("/.") in str(caught.value), "the error does not name the handler"
    assert tripwire.connections() == 0, "a bad handler still caused network traffic"
    assert polysocket.getClients() == []


def test_broken_handler_file(
    engine: str, tripwire: Tripwire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "broken.py").write_text("def onMessage(:\n")
    monkeypatch.setenv("POLYSOCKET_ROOT", str(tmp_path))
    with pytest.raises(polysocket.HandlerNotFoundError) as caught:
        polysocket.createWebsocket(tripwire.uri, "proj/broken", engine)
    assert "proj/broken" in str(caught.value)
    assert tripwire.connections() == 0
    assert polysocket.getClients() == []


def test_unknown_option(engine: str, tripwire: Tripwire) -> None:
    with pytest.raises(polysocket.UnsupportedOptionError) as caught:
        polysocket.createWebsocket(tripwire.uri, Recorder(), engine, no_such_option=1)
    assert "no_such_option" in str(caught.value)
    assert tripwire.connections() == 0
    assert polysocket.getClients() == []


def test_errors_share_one_base() -> None:
    for name in (
        "ConnectError",
        "ConnectionClosedError",
        "HandlerNotFoundError",
        "UnknownEngineError",
        "EngineUnavailableError",
        "UnsupportedOptionError",
        "DescriptorError",
    ):
        assert issubclass(getattr(polysocket, name), polysocket.WebsocketError), name


# -- headers and subprotocols (capabilities) ------------------------------------------------


def test_custom_headers_reach_the_peer(engine: str, peer: Peer) -> None:
    require_capability(engine, "headers")
    recorder = Recorder()
    client = polysocket.createWebsocket(
        peer.uri, recorder, engine, headers={"X-Polysocket-Test": "1"}
    )
    client.send("cmd:headers")
    got = recorder.wait_messages(1)
    client.close()
    assert got, "no reply to cmd:headers"
    headers = json.loads(got[0])
    assert headers.get("x-polysocket-test") == "1", headers


def test_subprotocol_is_negotiated(engine: str, peer: Peer) -> None:
    require_capability(engine, "subprotocols")
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine, subprotocols=["chat"])
    client.send("cmd:subprotocol")
    assert recorder.wait_messages(1) == ["chat"]
    client.close()
    assert recorder.wait_closed(WAIT)
