"""SPEC 2.3, 2.7 and 4: the closing handshake this side starts, on both sides, with hand-made
peers that do what RFC 6455 allows and libraries seldom do.

- Between our close frame and the peer's, the peer may still send messages (RFC 6455 5.5.1:
  it may finish sending what it has first). They reach ``onMessage``, in order, before
  ``onClose``.
- A peer that never answers the close frame (and never closes TCP): ``close()`` returns,
  and ``onClose`` has run, within ``close_timeout`` and a little.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import polysocket
from polysocket_conformance.rawframes import TEXT, RawClient, RawServer, close_frame, frame
from polysocket_conformance.server_support import ServerThread, events
from polysocket_conformance.support import WAIT, Recorder, require_capability

ECHO = "/websockets/v4/service/echo"
LATE = ["late 1", "late 2", "late 3"]
#: Between the peer's last message and its close frame.
PEER_PAUSE = 0.2
#: What close() may take with close_timeout=0.5 and a silent peer.
CLOSE_BOUND = 1.5


def server_messages() -> list[object]:
    return [e.payload for e in events.items if e.name == "onmessage"]


def test_server_delivers_messages_sent_after_its_close_frame(
    serve_registry: Callable[..., ServerThread], engine: str
) -> None:
    require_capability(engine, "framing")
    server = serve_registry()
    with RawClient(server.port, ECHO) as client:
        client.send(frame(TEXT, b"close:4000:enough"))  # the session closes in onMessage
        code, reason, _ = client.reader.until_close()
        assert (code, reason) == (4000, "enough")
        client.send(*(frame(TEXT, text.encode()) for text in LATE))
        time.sleep(PEER_PAUSE)  # the peer is slow to answer: not an assertion
        client.send(close_frame(4000))
        while client.sock.recv(4096):  # the server closes TCP first (RFC 6455 7.1.1)
            pass
    closed = events.wait("onclose", "echo")
    assert server_messages() == ["close:4000:enough", *LATE]
    assert (closed.close_code, closed.close_reason) == (4000, "enough")


def test_client_delivers_messages_sent_after_its_close_frame(
    engine: str, raw_server: Callable[..., RawServer]
) -> None:
    def conversation(sock: socket.socket, reader: Any) -> None:
        code, _, _ = reader.until_close()
        sock.sendall(b"".join(frame(TEXT, text.encode(), mask=False) for text in LATE))
        time.sleep(PEER_PAUSE)  # the peer is slow to answer: not an assertion
        sock.sendall(close_frame(code or 1000, mask=False))

    server = raw_server(conversation=conversation)
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri, recorder, engine)
    assert recorder.opened.wait(WAIT)
    client.close(4000, "enough")
    assert recorder.wait_closed()
    assert recorder.messages == LATE
    assert recorder.names == ["onopen", "onmessage", "onmessage", "onmessage", "onclose"]
    closed = recorder.of("onclose")[0]
    assert (closed.close_code, closed.close_reason) == (4000, "enough")
    recorder.assert_well_formed()


def test_server_close_bounded_by_close_timeout(
    serve_registry: Callable[..., ServerThread], engine: str
) -> None:
    """A client that never answers the close frame, nor closes TCP: the session's close()
    returns within close_timeout=0.5 (and a little), with onClose run (1006)."""
    require_capability(engine, "framing")
    server = serve_registry(close_timeout=0.5)
    with RawClient(server.port, ECHO) as client:
        events.wait("onopen", "echo")
        [session] = polysocket.getSessions("echo")
        assert isinstance(session, polysocket.ServerSession)  # one process: local
        started = time.monotonic()
        session.close(4000, "leaving")  # outside callbacks: waits for onClose too
        elapsed = time.monotonic() - started
        assert elapsed < CLOSE_BOUND, f"close() with close_timeout=0.5 took {elapsed:.2f} s"
        closed = events.wait("onclose", "echo", timeout=0)
        assert client.reader.until_close()[0] == 4000, "the close frame never left"
    assert closed.close_code == 1006, "no close frame came back: 1006"
    assert polysocket.getSessions("echo") == []
