"""Close frames no well-behaved peer sends, on both sides of an engine (RFC 6455 7.4)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import polysocket
import pytest
from polysocket_conformance.server_support import ServerThread, events, write_registry
from polysocket_conformance.support import WAIT, Recorder, require_capability

from rawframes import CLOSE, RawClient, RawFrameServer, close_frame, frame

pytestmark = pytest.mark.polysocket_conformance

INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535]


@pytest.fixture
def server(engine: str, tmp_path) -> Iterator[ServerThread]:
    require_capability(engine, "server")
    events.clear()
    running = ServerThread(write_registry(tmp_path), engine)
    yield running
    running.stop()


@pytest.mark.parametrize("code", INVALID_CODES)
def test_server_fails_an_invalid_close_code_with_1002(server, code):
    client = RawClient(server.port, "/websockets/v4/service/echo")
    try:
        client.send(frame(CLOSE, struct.pack("!H", code)))
        answer, _, _ = client.until_close()
    finally:
        client.close()
    assert answer == 1002
    assert events.wait("onclose", "echo").close_code == 1002


@pytest.mark.parametrize(("sent", "seen"), [(4321, 4321), (None, 1005)], ids=["code", "empty"])
def test_server_echoes_a_valid_close_frame(server, sent, seen):
    client = RawClient(server.port, "/websockets/v4/service/echo")
    try:
        client.send(close_frame(sent, "bye") if sent else frame(CLOSE))
        answer, _, _ = client.until_close()
    finally:
        client.close()
    # RFC 6455 5.5.1: the answer "typically echoes" the code; to an empty close frame, an
    # empty one or 1000 (aiohttp cannot send an empty close frame).
    assert answer in ((sent,) if sent else (None, 1000))
    closed = events.wait("onclose", "echo")
    assert (closed.close_code, closed.close_reason) == (seen, "bye" if sent else "")


@pytest.mark.parametrize("code", INVALID_CODES)
def test_client_fails_an_invalid_close_code_with_1002(engine, code):
    server = RawFrameServer([frame(CLOSE, struct.pack("!H", code), mask=False)])
    try:
        recorder = Recorder()
        polysocket.createWebsocket(server.uri, recorder, engine, close_timeout=2)
        assert recorder.wait_closed()
        assert recorder.names == ["onopen", "onerror", "onclose"]
        assert recorder.of("onclose")[0].close_code == 1002
        assert server.done.wait(WAIT)
        assert server.close_code == 1002
        recorder.assert_well_formed()
    finally:
        server.close()
