"""Property tests: whatever messages a user sends, through any client engine to any server
engine, arrive identical and in order, both ways (issue 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polysocket

from .server_support import ServerThread, events
from .support import Recorder, require_capability

MIRROR = """
from polysocket_conformance.server_support import events

def onMessage(message):
    events.record("onmessage", message)
    return message
"""

KIB = 1024
#: Sizes up to 256 KiB without asking hypothesis to draw a quarter-million characters.
long_text = st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(0, 256 * KIB))
long_binary = st.builds(
    lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(0, 64 * KIB)
)
message = st.one_of(
    st.text(max_size=64),  # any Unicode, astral planes and "" included
    st.binary(max_size=64),
    long_text,
    long_binary,
)


@pytest.fixture(scope="module")
def mirror_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], ServerThread]]:
    """One mirror server per server engine, started on first use, for the whole module."""
    running: dict[str, ServerThread] = {}

    def server_on(engine: str) -> ServerThread:
        require_capability(engine, "server")
        if engine not in running:
            root = tmp_path_factory.mktemp(f"mirror-{engine}")
            (root / "mirror.py").write_text(MIRROR)
            (root / "mirror.websocket").write_text('{"handler": "mirror", "endpoint": "mirror"}')
            running[engine] = ServerThread(Path(root), engine)
        return running[engine]

    yield server_on
    for server in running.values():
        server.stop()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(message, max_size=12))
def test_any_messages_arrive_identical_and_in_order(
    engine: str,
    other_engine: str,
    mirror_servers: Callable[[str], ServerThread],
    messages: list[str | bytes],
) -> None:
    server = mirror_servers(other_engine)
    events.clear()
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri("mirror"), recorder, engine)
    try:
        for item in messages:
            client.send(item)
        echoed = recorder.wait_messages(len(messages))
    finally:
        client.close()
    received = [e.payload for e in events.items if e.name == "onmessage"]
    assert [type(m) for m in received] == [type(m) for m in messages]
    assert received == messages, "the server did not receive what the client sent"
    assert echoed == messages, "the client did not receive what the server sent"
