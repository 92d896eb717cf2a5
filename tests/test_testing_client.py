"""polysocket.testing.TestClient: a registry served in-process with no sockets, driven by a
plain (blocking) test, its handlers run on handler threads as on a real server."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import polysocket
from polysocket.auth import Handshake, Principal
from polysocket.plugins import registry as engines
from polysocket.runtime import background
from polysocket.server import SAMPLE_ROOT
from polysocket.testing import HandshakeRefused, ReceiveTimeout, TestClient

ROOT = Path(__file__).resolve().parent.parent

#: A handler that records its callbacks in events.jsonl next to it (real evidence, read by
#: the test after the fact), replies to onMessage by return value, and obeys commands.
RECORDING_HANDLER = """
import json
import time
from pathlib import Path

import polysocket

EVENTS = Path(__file__).with_name("events.jsonl")


def record(method, **detail):
    session = polysocket.getSession()
    line = {"method": method, "session": session.id, **detail}
    with EVENTS.open("a") as events:
        events.write(json.dumps(line) + "\\n")


def slow(callback):
    # a client asks for a slow onOpen or onClose with the header X-Slow: onopen / onclose
    if polysocket.getSession().request_headers.get("x-slow") == callback:
        time.sleep(0.3)


def onOpen():
    slow("onopen")
    record("onopen", principal=getattr(polysocket.getSession().principal, "name", None))


def onMessage(message):
    record("onmessage", binary=isinstance(message, bytes))
    if message == "fail":
        raise ValueError("the handler failed on purpose")
    if message == "bye":
        polysocket.getSession().close(4000, "asked to leave")
        return None
    if message == "count":
        return str(len(polysocket.getSessions(polysocket.getSession().endpoint)))
    if isinstance(message, bytes):
        return message[::-1]
    return message.upper()


def onError(error):
    record("onerror", error=error)
    polysocket.getSession().send("error: " + error)


def onClose():
    slow("onclose")
    record("onclose", code=polysocket.getCloseCode(), reason=polysocket.getCloseReason())
"""


def events(root: Path) -> list[dict[str, Any]]:
    path = root / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry with the recording handler at endpoint "shout" and, needing the role
    "admin", at "admin-only"."""
    (tmp_path / "recording.py").write_text(RECORDING_HANDLER)
    (tmp_path / "shout.websocket").write_text(
        json.dumps({"handler": "recording", "endpoint": "shout", "description": "Upper case"})
    )
    (tmp_path / "admin-only.websocket").write_text(
        json.dumps({"handler": "recording", "endpoint": "admin-only", "roles": ["admin"]})
    )
    return tmp_path


def _own_threads() -> set[threading.Thread]:
    """Threads that would be left over: everything but pools that outlive their work, the
    background loop (started once per process), its default executor's workers
    ("asyncio_N", which a server's shutdown uses) and idle handler-pool workers (they end
    after IDLE_SECONDS on their own)."""
    pools = ("polysocket-loop", "polysocket-handler", "asyncio_")
    return {thread for thread in threading.enumerate() if not thread.name.startswith(pools)}


def _loop_tasks() -> int:
    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # not this one

    return background.run(count(), "counting tasks", 5)


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Every test here leaves no task on polysocket's loop, no thread of its own, no
    session and no engine behind."""
    tasks, threads, engine_names = _loop_tasks(), _own_threads(), set(engines.names())
    yield
    deadline = time.monotonic() + 5
    while _loop_tasks() > tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _loop_tasks() == tasks, "tasks left on polysocket's event loop"
    assert _own_threads() <= threads, f"threads left: {_own_threads() - threads}"
    assert set(engines.names()) == engine_names, "an engine left registered"


def test_echo_of_the_bundled_sample_text_and_binary() -> None:
    with TestClient() as client, client.connect("my-endpoint") as ws:
        ws.send("hi")
        assert ws.receive() == "hi"
        ws.send(b"\x00\xffbinary")
        echoed = ws.receive()
        assert isinstance(echoed, bytes) and echoed == b"\x00\xffbinary"
        assert ws.session is not None and ws.session.endpoint == "my-endpoint"
    assert ws.close_code == 1000
    assert polysocket.getSessions("my-endpoint") == []


def test_reply_by_return_value_and_binary_replies(registry: Path) -> None:
    with TestClient(registry) as client, client.connect("shout") as ws:
        ws.send("hello")
        assert ws.receive() == "HELLO"
        ws.send(bytearray(b"abc"))
        assert ws.receive() == b"cba"
    assert [(e["method"], e.get("binary")) for e in events(registry)] == [
        ("onopen", None),
        ("onmessage", False),
        ("onmessage", True),
        ("onclose", None),
    ]


def test_broadcast_reaches_both_sessions_of_the_sample_chat() -> None:
    with TestClient() as client, client.connect("chat") as alice, client.connect("chat") as bob:
        assert alice.session is not None and bob.session is not None
        alice_id, bob_id = alice.session.id[:8], bob.session.id[:8]
        assert alice.receive() == f"* {alice_id} joined"
        assert alice.receive() == f"* {bob_id} joined"
        assert bob.receive() == f"* {bob_id} joined"
        alice.send("hello, all")
        assert alice.receive() == f"{alice_id}: hello, all"
        assert bob.receive() == f"{alice_id}: hello, all"
        bob.close()
        assert alice.receive() == f"* {bob_id} left"


def test_get_sessions_counts_the_open_sessions(registry: Path) -> None:
    with TestClient(registry) as client:
        first = client.connect("shout")
        first.send("count")
        assert first.receive() == "1"
        with client.connect("shout") as second:
            second.send("count")
            assert second.receive() == "2"
            assert len(polysocket.getSessions("shout")) == 2
        first.send("count")
        assert first.receive() == "1"
        first.close()
        assert polysocket.getSessions("shout") == []


def test_close_waits_for_on_close_and_leaving_closes_the_rest_with_1001(registry: Path) -> None:
    with TestClient(registry) as client:
        closed = client.connect("shout", headers={"X-Slow": "onclose"})
        left_open = client.connect("shout")
        closed.close(4321, "done here")
        # close() returned after onClose did: the line is in the file already
        assert [e for e in events(registry) if e["method"] == "onclose"] == [
            {"method": "onclose", "session": closed.session.id, "code": 4321, "reason": "done here"}
        ]
        assert closed.close_code == 4321
    assert [e for e in events(registry) if e["method"] == "onclose"][1:] == [
        {
            "method": "onclose",
            "session": left_open.session.id,
            "code": 1001,
            "reason": "server shutting down",
        }
    ]
    assert (left_open.close_code, left_open.close_reason) == (1001, "server shutting down")
    with pytest.raises(polysocket.ConnectionClosedError, match="closed, with code 4321"):
        closed.receive(timeout=3)
    with pytest.raises(polysocket.ConnectionClosedError, match="closed, with code 1001"):
        left_open.receive(timeout=3)
    with pytest.raises(polysocket.ConnectionClosedError, match="closed, with code 1001"):
        left_open.send("too late")


def test_connect_returns_after_on_open_returned(registry: Path) -> None:
    with TestClient(registry) as client, client.connect("shout", headers={"X-Slow": "onopen"}):
        assert [e["method"] for e in events(registry)] == ["onopen"]


def test_a_close_from_the_server_ends_receive_with_its_code(registry: Path) -> None:
    with TestClient(registry) as client, client.connect("shout") as ws:
        ws.send("bye")
        with pytest.raises(polysocket.ConnectionClosedError) as ended:
            ws.receive()
        assert (ended.value.code, ended.value.reason) == (4000, "asked to leave")
        assert "code 4000 (asked to leave)" in str(ended.value)
        with pytest.raises(polysocket.ConnectionClosedError):
            ws.send("still there?")
    assert events(registry)[-1]["code"] == 4000


def test_an_error_in_a_handler_reaches_on_error(registry: Path) -> None:
    with TestClient(registry) as client, client.connect("shout") as ws:
        ws.send("fail")
        reply = ws.receive()
        assert isinstance(reply, str) and reply.startswith("error: ")
        assert "the handler failed on purpose" in reply
        ws.send("still open")
        assert ws.receive() == "STILL OPEN"
    assert [e["method"] for e in events(registry)].count("onerror") == 1


def test_receive_times_out_with_a_clear_error_and_the_connection_stays_open(
    registry: Path,
) -> None:
    with TestClient(registry, timeout=2) as client, client.connect("shout") as ws:
        started = time.monotonic()
        with pytest.raises(ReceiveTimeout, match=r"no message from .*shout within 0.2 s"):
            ws.receive(timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 3
        ws.send("later")
        assert ws.receive() == "LATER"


def test_iteration_ends_when_the_server_closes(registry: Path) -> None:
    with TestClient(registry) as client, client.connect("shout") as ws:
        for word in ("a", "b", "bye"):
            ws.send(word)
        assert list(ws) == ["A", "B"]
        assert ws.close_code == 4000


def test_unknown_endpoint_is_refused_with_404_and_the_servers_text() -> None:
    with TestClient() as client:
        with pytest.raises(HandshakeRefused) as refused:
            client.connect("no-such-endpoint")
        assert refused.value.status == 404
        assert "no endpoint 'no-such-endpoint' here" in refused.value.text
        assert "HTTP 404" in str(refused.value) and "no-such-endpoint" in str(refused.value)
        assert isinstance(refused.value, polysocket.ConnectError)


def test_authentication_refuses_with_401_and_roles_with_403(registry: Path) -> None:
    def authenticate(handshake: Handshake) -> Principal | None:
        token = handshake.headers.get("authorization")
        return Principal("ann", frozenset({"user"})) if token == "Bearer good" else None

    with TestClient(registry, authenticate=authenticate) as client:
        with pytest.raises(HandshakeRefused) as unauthenticated:
            client.connect("shout")
        assert unauthenticated.value.status == 401
        with pytest.raises(HandshakeRefused) as forbidden:
            client.connect("admin-only", headers={"Authorization": "Bearer good"})
        assert forbidden.value.status == 403
        with client.connect("shout", headers={"Authorization": "Bearer good"}) as ws:
            assert ws.session is not None and ws.session.principal is not None
            assert ws.session.principal.name == "ann"
    assert [e.get("principal") for e in events(registry) if e["method"] == "onopen"] == ["ann"]


def test_a_full_endpoint_is_refused_with_503(registry: Path) -> None:
    with TestClient(registry, max_connections=1) as client, client.connect("shout"):
        with pytest.raises(HandshakeRefused) as full:
            client.connect("shout")
        assert full.value.status == 503
        assert full.value.headers.get("Retry-After")


def test_http_answers_page_listing_and_426() -> None:
    with TestClient() as client:
        page = client.get("/")
        assert page.status == 200 and "my-endpoint" in page.text
        listing = client.get("/websockets/v4/endpoints")
        assert {e["endpoint"] for e in listing.json()["endpoints"]} == {"chat", "my-endpoint"}
        assert client.get("/websockets/v4/service/my-endpoint").status == 426


def test_two_clients_at_once_and_a_client_used_outside_with() -> None:
    with (
        TestClient() as one,
        TestClient() as two,
        one.connect("my-endpoint") as a,
        two.connect("my-endpoint") as b,
    ):
        a.send("from a")
        b.send("from b")
        assert (a.receive(), b.receive()) == ("from a", "from b")
    with pytest.raises(RuntimeError, match="in a with block"):
        one.connect("my-endpoint")
    with pytest.raises(TypeError, match="engine="):
        TestClient(engine="aiohttp")


def test_the_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TestClient example of the README's section, in order, in one namespace (the
    later ones use the first one's import), with the sample copied to ./registry."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing without a network", 1)[1].split("\n## ", 1)[0]
    snippets = [s for s in re.findall(r"```python\n(.*?)```", section, re.S) if "TestClient" in s]
    assert len(snippets) >= 2, "the README's TestClient examples are gone"
    shutil.copytree(SAMPLE_ROOT, tmp_path / "registry")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert tests, "the README example defines no test"
    for test in tests:
        test()
