"""SPEC 2.8 and 4: close frames no well-behaved peer sends, on both sides (RFC 6455 7.4).

A close code that may not travel on the wire (0-999, 1004-1006, 1015, 1016-2999, 5000 and
up) fails the connection with 1002 on every engine, whatever the library would do.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

import polysocket
from polysocket_conformance.rawframes import CLOSE, RawClient, RawServer, close_frame, frame
from polysocket_conformance.server_support import ServerThread, events
from polysocket_conformance.support import WAIT, Recorder

INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535]


@pytest.fixture
def server(serve_registry: Callable[..., ServerThread]) -> ServerThread:
    return serve_registry()


@pytest.mark.parametrize("code", INVALID_CODES)
def test_server_fails_an_invalid_close_code_with_1002(server: ServerThread, code: int) -> None:
    with RawClient(server.port, "/websockets/v4/service/echo") as client:
        client.send(frame(CLOSE, struct.pack("!H", code)))
        answer, _, _ = client.until_close()
    assert answer == 1002
    assert events.wait("onclose", "echo").close_code == 1002


@pytest.mark.parametrize(("sent", "seen"), [(4321, 4321), (None, 1005)], ids=["code", "empty"])
def test_server_echoes_a_valid_close_frame(
    server: ServerThread, sent: int | None, seen: int
) -> None:
    with RawClient(server.port, "/websockets/v4/service/echo") as client:
        client.send(close_frame(sent, "bye") if sent else frame(CLOSE))
        answer, _, _ = client.until_close()
    # RFC 6455 5.5.1: the answer "typically echoes" the code; to an empty close frame, an
    # empty one or 1000 (aiohttp cannot send an empty close frame).
    assert answer in ((sent,) if sent else (None, 1000))
    closed = events.wait("onclose", "echo")
    assert (closed.close_code, closed.close_reason) == (seen, "bye" if sent else "")


@pytest.mark.parametrize("code", INVALID_CODES)
def test_client_fails_an_invalid_close_code_with_1002(
    engine: str, raw_server: Callable[..., RawServer], code: int
) -> None:
    server = raw_server([frame(CLOSE, struct.pack("!H", code), mask=False)])
    recorder = Recorder()
    polysocket.createWebsocket(server.uri, recorder, engine, close_timeout=2)
    assert recorder.wait_closed()
    assert recorder.names == ["onopen", "onerror", "onclose"]
    assert isinstance(recorder.errors[0], str) and recorder.errors[0]
    assert recorder.of("onclose")[0].close_code == 1002
    assert server.done.wait(WAIT)
    assert server.close_code == 1002
    recorder.assert_well_formed()
