"""The registry folder: descriptors, their faults, routing decisions, live reload."""

from __future__ import annotations

import asyncio
import json

import pytest

from polysocket import DescriptorError
from polysocket.endpoints import scan
from polysocket.plugins import registry
from polysocket.server import EndpointServer
from polysocket.transport import (
    Accept,
    HttpRequest,
    HttpResponse,
    ServerOptions,
    TransportClosed,
)

ECHO = "def onMessage(message):\n    return message\n"


def descriptor(folder, file, **fields):
    path = folder / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))
    return path


@pytest.fixture
def root(tmp_path):
    (tmp_path / "my-project").mkdir()
    (tmp_path / "my-project" / "ws-handler.py").write_text(ECHO)
    descriptor(
        tmp_path,
        "my-endpoint.websocket",
        handler="my-project/ws-handler",
        endpoint="my-endpoint",
        description="My Websocket",
    )
    return tmp_path


def test_good_descriptors_are_found_recursively(root):
    descriptor(root, "deep/er/other.websocket", handler="my-project/ws-handler", endpoint="o.t-1")
    result = scan(root)
    assert sorted(result.endpoints) == ["my-endpoint", "o.t-1"]
    assert result.endpoints["my-endpoint"].description == "My Websocket"
    assert result.problems == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"handler": "my-project/ws-handler"}), "missing field(s) endpoint"),
        (json.dumps({"endpoint": "x"}), "missing field(s) handler"),
        (json.dumps({"handler": "my-project/ws-handler", "endpoint": "a b"}), "must match"),
        (json.dumps({"handler": "my-project/missing", "endpoint": "x"}), "not found"),
        (json.dumps({"handler": "../escape", "endpoint": "x"}), "leaves the handler root"),
    ],
)
def test_a_bad_descriptor_is_named_and_the_others_still_served(root, content, expected):
    bad = root / "bad.websocket"
    bad.write_text(content)
    result = scan(root)
    assert list(result.endpoints) == ["my-endpoint"]
    [problem] = result.problems
    assert isinstance(problem, DescriptorError)
    assert "bad.websocket" in str(problem) and expected in str(problem)
    assert problem.files == (bad,)


def test_duplicate_endpoint_names_both_files(root):
    descriptor(root, "z-copy.websocket", handler="my-project/ws-handler", endpoint="my-endpoint")
    result = scan(root)
    assert list(result.endpoints) == ["my-endpoint"]
    assert result.endpoints["my-endpoint"].file.name == "my-endpoint.websocket"
    [problem] = result.problems
    assert "my-endpoint.websocket" in str(problem) and "z-copy.websocket" in str(problem)
    assert len(problem.files) == 2


def test_missing_registry_folder(tmp_path):
    with pytest.raises(DescriptorError, match="does not exist"):
        scan(tmp_path / "nope")


def request(path, upgrade=True, subprotocols=(), method="GET"):
    return HttpRequest(method, path, "", {"host": "h:1"}, ("127.0.0.1", 1), upgrade, subprotocols)


def test_routing_decisions(root):
    server = EndpointServer(root, registry.get("aiohttp"), ServerOptions(), ["chat"], False)

    def route(*args, **kwargs):
        return server.route(request(*args, **kwargs))

    assert route("/websockets/v4/service/my-endpoint") == Accept(None)
    assert route("/websockets/v4/service/my-endpoint", subprotocols=("x", "chat")) == Accept("chat")
    unknown = route("/websockets/v4/service/nope")
    assert isinstance(unknown, HttpResponse) and unknown.status == 404
    assert b"my-endpoint" not in unknown.body  # the names are listed at /, not here
    plain = route("/websockets/v4/service/my-endpoint", upgrade=False)
    assert plain.status == 426 and plain.headers["Upgrade"] == "websocket"
    page = route("/", upgrade=False)
    assert page.status == 200 and b"new WebSocket(" in page.body and b"My Websocket" in page.body
    listing = route("/websockets/v4/endpoints", upgrade=False)
    assert json.loads(listing.body)["endpoints"][0]["endpoint"] == "my-endpoint"
    assert route("/elsewhere", upgrade=False).status == 404
    assert route("/", upgrade=False, method="POST").status == 405


def test_listing_shows_descriptor_problems_in_debug_mode(root):
    (root / "broken.websocket").write_text("{")
    server = EndpointServer(root, registry.get("aiohttp"), ServerOptions(), [], False, debug=True)
    listing = json.loads(server.listing())
    assert listing["problems"][0]["files"] == ["broken.websocket"]
    assert "not valid JSON" in listing["problems"][0]["error"]
    assert listing["problem_count"] == 1
    [endpoint] = listing["endpoints"]
    assert endpoint["handler"] == "my-project/ws-handler"
    assert endpoint["file"] == "my-endpoint.websocket"
    unknown = server.route(request("/websockets/v4/service/nope"))
    assert isinstance(unknown, HttpResponse) and b"known endpoints: my-endpoint" in unknown.body


def test_listing_outside_debug_mode_shows_names_descriptions_paths_and_a_count(root):
    """No handler specs, files or problem texts (which name files, absolute ones for a
    handler module that is missing) for anyone who asks."""
    (root / "broken.websocket").write_text("{")
    descriptor(root, "lost.websocket", handler="my-project/gone", endpoint="lost")
    server = EndpointServer(root, registry.get("aiohttp"), ServerOptions(), [], False)
    listing = json.loads(server.listing())
    assert listing == {
        "endpoints": [
            {
                "endpoint": "my-endpoint",
                "description": "My Websocket",
                "path": "/websockets/v4/service/my-endpoint",
            }
        ],
        "problem_count": 2,
    }
    page = server.route(request("/", upgrade=False))
    assert isinstance(page, HttpResponse) and b"2 descriptor problem(s)" in page.body
    for body in (server.listing(), page.body):
        for secret in (b"ws-handler", b"broken.websocket", b"gone", str(root).encode()):
            assert secret not in body


def test_reload_picks_up_added_and_removed_descriptors(root):
    server = EndpointServer(root, registry.get("aiohttp"), ServerOptions(), [], False)
    descriptor(root, "new.websocket", handler="my-project/ws-handler", endpoint="new")
    (root / "my-endpoint.websocket").unlink()
    asyncio.run(server.reload())
    assert list(server.scan.endpoints) == ["new"]


def _memory_connection():
    from polysocket.testing import MemoryPeer, MemoryTransport, _Pipe
    from polysocket.transport import ClientOptions

    to_server, to_client = _Pipe(), _Pipe()
    transport = MemoryTransport(to_server, to_client, None)
    return transport, MemoryPeer(to_client, to_server, "ws://test/", ClientOptions())


def test_session_returns_with_the_connection_closed(root):
    """ServerApp.session(): the engine awaits it and has nothing left to close."""
    server = EndpointServer(root, registry.get("aiohttp"), ServerOptions(), [], False)

    async def scenario():
        transport, peer = _memory_connection()
        session = asyncio.ensure_future(
            server.session(request("/websockets/v4/service/my-endpoint"), transport)
        )
        await peer.send("hi")
        assert await asyncio.wait_for(peer.receive(), 5) == "hi"
        await asyncio.wait_for(peer.close(4000, "bye"), 5)
        with pytest.raises(TransportClosed) as answer:
            await peer.receive()
        assert answer.value.code == 4000  # the server echoed the close frame
        await asyncio.wait_for(session, 5)
        assert transport.closed.is_set()

    asyncio.run(scenario())


def test_a_failing_session_closes_with_1011(root, monkeypatch, caplog):
    import polysocket.server

    def broken(*args, **kwargs):
        raise RuntimeError("cannot start")

    monkeypatch.setattr(polysocket.server, "Connection", broken)
    server = EndpointServer(root, registry.get("aiohttp"), ServerOptions(), [], False)

    async def scenario():
        transport, peer = _memory_connection()
        session = asyncio.ensure_future(
            server.session(request("/websockets/v4/service/my-endpoint"), transport)
        )
        with pytest.raises(TransportClosed) as closed:
            await asyncio.wait_for(peer.receive(), 5)
        assert (closed.value.code, closed.value.reason) == (1011, "session failed")
        await asyncio.wait_for(session, 5)  # returns, does not raise

    asyncio.run(scenario())
    assert "cannot start" in caplog.text


def test_descriptor_max_connections_must_be_a_positive_int(root):
    for bad in (0, -1, "3", 2.5, True):
        descriptor(
            root, "x.websocket", handler="my-project/ws-handler", endpoint="x", max_connections=bad
        )
        problems = [str(p) for p in scan(root).problems]
        assert any("max_connections must be a positive integer" in p for p in problems), bad
    descriptor(
        root, "x.websocket", handler="my-project/ws-handler", endpoint="x", max_connections=3
    )
    assert scan(root).endpoints["x"].max_connections == 3


def test_max_connections_counts_pending_handshakes_until_dropped_or_timed_out(root, monkeypatch):
    import polysocket.server as server_module

    options = ServerOptions(max_connections=1, open_timeout=10)
    server = EndpointServer(root, registry.get("aiohttp"), options, [], False)
    first = request("/websockets/v4/service/my-endpoint")
    assert server.route(first) == Accept(None)
    busy = server.route(request("/websockets/v4/service/my-endpoint"))
    assert busy.status == 503 and b"max_connections" in busy.body
    assert busy.headers["Retry-After"]
    del first  # the engine dropped the connection before the session: room again
    second = request("/websockets/v4/service/my-endpoint")
    assert server.route(second) == Accept(None)
    clock = server_module.time.monotonic() + 11  # open_timeout later: room again too
    monkeypatch.setattr(server_module.time, "monotonic", lambda: clock)
    assert server.route(request("/websockets/v4/service/my-endpoint")) == Accept(None)


def test_too_many_header_lines_get_431(root):
    server = EndpointServer(root, registry.get("aiohttp"), ServerOptions(), [], False)
    lines = [(f"x-{i}", "v") for i in range(129)]
    from polysocket.enginekit import http_request

    answer = server.route(http_request("GET", "/", lines, None))
    assert answer.status == 431 and b"129 header lines" in answer.body
    assert server.route(http_request("GET", "/", lines[:128], None)).status == 200


def test_an_unreadable_registry_folder_is_an_error_not_an_empty_registry(root, monkeypatch):
    # Out of descriptors (EMFILE), os.walk used to skip the folder silently: live reload
    # then saw "every descriptor removed" and closed every endpoint.
    import errno
    import os

    from polysocket.endpoints import snapshot

    def out_of_descriptors(path):
        raise OSError(errno.EMFILE, "Too many open files", str(path))

    monkeypatch.setattr(os, "scandir", out_of_descriptors)
    with pytest.raises(OSError):
        snapshot(root)
    with pytest.raises(OSError):
        scan(root)
