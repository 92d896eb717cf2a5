"""The redirect rule of ``polysocket.redirects``, through the core's connect path, on an
in-memory engine that answers from a table (the conformance suite runs it on real engines
against a real HTTP server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import polysocket
from polysocket import ConnectError
from polysocket.testing import MemoryEngine, MemoryPeer, MemoryTransport, install
from polysocket.transport import CAPABILITIES, ClientOptions


async def echo(end: MemoryPeer) -> None:
    async for message in end:
        await end.send(message)


class Redirecting(MemoryEngine):
    """Answers the URIs of ``table`` with ``(status, location)``; any other reaches echo."""

    def __init__(self, table: dict[str, tuple[int, str | None]], **kwargs: Any) -> None:
        super().__init__(echo, **kwargs)
        self.table = table
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def connect(self, uri: str, options: ClientOptions) -> MemoryTransport:
        self.seen.append((uri, dict(options.headers)))
        if uri in self.table:
            status, location = self.table[uri]
            raise ConnectError.rejected(uri, status, "answered", location=location)
        return await super().connect(uri, options)


def open_through(engine: Redirecting, uri: str, **options: Any) -> str:
    """Connect with the asyncio API, echo once, return ``connected_uri``."""

    async def run() -> str:
        async with polysocket.connect(uri, engine="memory", **options) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            assert ws.uri == uri
            return ws.connected_uri

    with install(engine):
        return asyncio.run(asyncio.wait_for(run(), 10))


def refused(engine: Redirecting, uri: str, **options: Any) -> ConnectError:
    async def attempt() -> None:
        await polysocket.connect(uri, engine="memory", **options)

    with install(engine), pytest.raises(ConnectError) as caught:
        asyncio.run(asyncio.wait_for(attempt(), 10))
    return caught.value


def test_relative_and_http_locations_are_resolved_and_mapped() -> None:
    engine = Redirecting(
        {
            "ws://a/x/start": (301, "next?q=1#frag"),
            "ws://a/x/next?q=1": (308, "https://b:8443/there"),
        },
        capabilities=CAPABILITIES,
    )
    assert open_through(engine, "ws://a/x/start") == "wss://b:8443/there"
    assert [uri for uri, _ in engine.seen] == [
        "ws://a/x/start",
        "ws://a/x/next?q=1",
        "wss://b:8443/there",
    ]


def test_credentials_are_dropped_only_across_origins() -> None:
    engine = Redirecting({"ws://a/1": (302, "/2"), "ws://a/2": (307, "ws://b/3")})
    headers = {"Authorization": "Bearer t", "Cookie": "c=1", "X-Other": "kept"}
    open_through(engine, "ws://a/1", headers=headers)
    assert [h for _, h in engine.seen] == [headers, headers, {"X-Other": "kept"}]


def test_a_wss_location_needs_the_tls_capability() -> None:
    engine = Redirecting({"ws://a/1": (302, "wss://a/2")})
    error = refused(engine, "ws://a/1")
    assert "'tls'" in str(error) and [uri for uri, _ in engine.seen] == ["ws://a/1"]


def test_the_limit_counts_redirects_not_requests() -> None:
    table: dict[str, tuple[int, str | None]] = {
        f"ws://a/{i}": (302, f"ws://a/{i + 1}") for i in range(10)
    }
    assert open_through(Redirecting(table), "ws://a/0") == "ws://a/10"
    table["ws://a/10"] = (302, "ws://a/11")
    engine = Redirecting(table)
    error = refused(engine, "ws://a/0")
    assert str(error).startswith("too many redirects (10) connecting to ws://a/0: ws://a/0 ->")
    assert str(error).count(" -> ") == 11 and len(engine.seen) == 11


def test_downgrade_and_other_schemes_are_refused() -> None:
    engine = Redirecting({"wss://a/1": (301, "http://a/2")}, capabilities=CAPABILITIES)
    error = refused(engine, "wss://a/1")
    assert "from wss://a/1 to ws://a/2" in str(error) and error.location == "http://a/2"
    engine = Redirecting({"ws://a/1": (302, "mailto:x@a")})
    error = refused(engine, "ws://a/1")
    assert "not a WebSocket URI" in str(error) and error.status == 302


def test_other_answers_stay_the_engines_error() -> None:
    engine = Redirecting({"ws://a/1": (300, "ws://a/2"), "ws://a/3": (302, None)})
    for uri in ("ws://a/1", "ws://a/3"):
        error = refused(engine, uri)
        assert str(error).startswith(f"{uri} rejected the WebSocket handshake")
    assert [uri for uri, _ in engine.seen] == ["ws://a/1", "ws://a/3"]
    assert "Location: ws://a/2" in str(refused(engine, "ws://a/1"))
