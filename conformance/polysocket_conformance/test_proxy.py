"""Client connections through real proxies (issue 11), on every engine with ``proxy``.

The proxy is ``pproxy`` (HTTP CONNECT, SOCKS5, SOCKS4; with and without credentials), the
server a polysocket server on the engine under test. Every test that goes through the proxy
asserts that the proxy was asked for the tunnel (its log); where the proxy resolves the name
(HTTP, ``socks5h``) the URI's host is one only the proxy can resolve, so an engine that
connected by itself instead of over the tunnel it was handed fails too.
"""

from __future__ import annotations

import itertools
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import polysocket

from .peer_processes import PeerUnavailable, require_peers
from .proxies_support import ONLY_VIA_PROXY, PASSWORD, ProxyPeer, start_proxy
from .server_support import ServerThread
from .support import (
    ClosedPort,
    Recorder,
    Tripwire,
    handler_source,
    require_capability,
    run_async,
    shared_recorder,
    tls_contexts,
)


@pytest.fixture(scope="module")
def proxy_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPeer]:
    try:
        peer = start_proxy(tmp_path_factory.mktemp("proxy"))
    except PeerUnavailable as exc:
        if require_peers():
            pytest.fail(f"{exc} (POLYSOCKET_REQUIRE_PEERS is set, so this is an error)")
        pytest.skip(str(exc))
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def proxy(engine: str, proxy_peer: ProxyPeer, monkeypatch: pytest.MonkeyPatch) -> ProxyPeer:
    """The proxy, for an engine with ``proxy``; no proxy variable is set from outside."""
    require_capability(engine, "proxy")
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    if proxy_peer.process.poll() is not None:
        raise RuntimeError(f"pproxy exited; its output:\n{proxy_peer.log()[-4000:]}")
    return proxy_peer


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ONLY_VIA_PROXY and a client context that trusts it."""
    return tls_contexts(ONLY_VIA_PROXY)


_runs = itertools.count()


def seed_through(
    uri: str, engine: str, root: Path, monkeypatch: pytest.MonkeyPatch, **options: object
) -> Recorder:
    """The seed's client example (a handler file with onOpen/onMessage/onError/onClose,
    ``createWebsocket``, ``send``, ``close``) with ``options``; returns its recorder."""
    root = root / f"seed-{next(_runs)}"  # a handler root (and recorder) per run
    key = f"proxy-{root.parent.name}-{root.name}"
    (root / "my-project").mkdir(parents=True)
    (root / "my-project" / "ws-handler.py").write_text(handler_source(key))
    monkeypatch.setenv("POLYSOCKET_ROOT", str(root))
    recorder = shared_recorder(key)
    client = polysocket.createWebsocket(uri, "my-project/ws-handler", engine, **options)
    client.send("hello")
    assert recorder.wait_message(lambda m: m == "hello"), f"no echo: {recorder.names}"
    polysocket.getClientByHandler("my-project/ws-handler").close()  # type: ignore[union-attr]
    assert recorder.wait_closed(), f"onClose did not run: {recorder.names}"
    assert recorder.names == ["onopen", "onmessage", "onclose"]
    assert polysocket.getClients() == []
    return recorder


#: (listener, scheme, host in the URI): the proxy resolves the name for http and socks5h,
#: socks5 and socks4 take an address resolved here.
ROUTES = [
    ("http", "http", ONLY_VIA_PROXY),
    ("http-auth", "http", ONLY_VIA_PROXY),
    ("socks5", "socks5h", ONLY_VIA_PROXY),
    ("socks5-auth", "socks5h", ONLY_VIA_PROXY),
    ("socks5", "socks5", "127.0.0.1"),
    ("socks5-auth", "socks5", "127.0.0.1"),
    ("socks4", "socks4", "127.0.0.1"),
]


def via_proxy_only(uri: str) -> str:
    """``uri`` with the host only the proxy resolves."""
    return uri.replace("127.0.0.1", ONLY_VIA_PROXY, 1)


@pytest.mark.parametrize(
    ("listener", "scheme", "host"), ROUTES, ids=[f"{r[1]}-{r[0]}-{r[2]}" for r in ROUTES]
)
def test_seed_through_a_proxy(
    engine: str,
    proxy: ProxyPeer,
    serve_registry: Callable[..., ServerThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: str,
    scheme: str,
    host: str,
) -> None:
    server = serve_registry()
    uri = server.uri("echo").replace("127.0.0.1", host, 1)
    seed_through(uri, engine, tmp_path, monkeypatch, proxy=proxy.url(listener, scheme))
    assert proxy.wait_tunnels_to(host, server.port, 1) == 1, proxy.log()[-2000:]


@pytest.mark.parametrize("listener", ["http-auth", "socks5-auth"])
def test_wss_through_a_proxy(
    engine: str,
    proxy: ProxyPeer,
    serve_registry: Callable[..., ServerThread],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: str,
) -> None:
    """TLS runs end to end over the tunnel, checked against the URI's host name (the
    certificate names only ONLY_VIA_PROXY, never an address)."""
    require_capability(engine, "tls")
    server_context, client_context = tls
    server = serve_registry(ssl=server_context)
    uri = f"wss://{ONLY_VIA_PROXY}:{server.port}/websockets/v4/service/echo"
    scheme = "http" if listener.startswith("http") else "socks5h"
    options = {"proxy": proxy.url(listener, scheme), "ssl": client_context}
    seed_through(uri, engine, tmp_path, monkeypatch, **options)
    assert proxy.wait_tunnels_to(ONLY_VIA_PROXY, server.port, 1) == 1, proxy.log()[-2000:]
    with pytest.raises(polysocket.ConnectError):  # a CA nobody trusts: refused over the tunnel
        polysocket.createWebsocket(uri, Recorder(), engine, proxy=options["proxy"])
    assert proxy.wait_tunnels_to(ONLY_VIA_PROXY, server.port, 2) == 2


def test_asyncio_api_through_a_proxy(
    engine: str, proxy: ProxyPeer, serve_registry: Callable[..., ServerThread]
) -> None:
    server = serve_registry()

    async def echo() -> object:
        async with polysocket.connect(
            via_proxy_only(server.uri("echo")),
            engine=engine,
            proxy=proxy.url("socks5-auth", "socks5h"),
        ) as ws:
            await ws.send("through socks")
            return await ws.recv()

    assert run_async(echo()) == "through socks"
    assert proxy.wait_tunnels_to(ONLY_VIA_PROXY, server.port, 1) == 1


# -- the environment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "listener", "scheme"),
    [
        ("http_proxy", "http-auth", "http"),
        ("HTTP_PROXY", "http", "http"),
        ("all_proxy", "socks5-auth", "socks5h"),
    ],
)
def test_proxy_from_the_environment(
    engine: str,
    proxy: ProxyPeer,
    serve_registry: Callable[..., ServerThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    listener: str,
    scheme: str,
) -> None:
    server = serve_registry()
    monkeypatch.setenv(variable, proxy.url(listener, scheme))
    uri = via_proxy_only(server.uri("echo"))
    seed_through(uri, engine, tmp_path, monkeypatch)  # proxy=True: the default
    assert proxy.wait_tunnels_to(ONLY_VIA_PROXY, server.port, 1) == 1, proxy.log()[-2000:]


def test_no_proxy_and_proxy_none_go_direct(
    engine: str,
    proxy: ProxyPeer,
    serve_registry: Callable[..., ServerThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve_registry()
    monkeypatch.setenv("http_proxy", proxy.url("http"))
    seed_through(server.uri("echo"), engine, tmp_path, monkeypatch, proxy=None)
    monkeypatch.setenv("no_proxy", "example.com, 127.0.0.1")
    seed_through(server.uri("echo"), engine, tmp_path, monkeypatch)
    monkeypatch.delenv("no_proxy")
    seed_through(server.uri("echo"), engine, tmp_path, monkeypatch)  # through it again
    assert proxy.wait_tunnels_to("127.0.0.1", server.port, 1) == 1, proxy.log()[-2000:]


# -- failures: a ConnectError that names the proxy ------------------------------------------


def connect_error(uri: str, engine: str, **options: object) -> str:
    recorder = Recorder()
    with pytest.raises(polysocket.ConnectError) as caught:
        polysocket.createWebsocket(uri, recorder, engine, **options)
    assert recorder.names == [], "a callback ran for a connection that never opened"
    assert polysocket.getClients() == []
    return str(caught.value)


@pytest.mark.parametrize(
    ("listener", "credentials", "says"),
    [
        ("http-auth", "", ("HTTP 407", "put them in the proxy URL")),
        ("http-auth", "polysocket:wrong-pw", ("HTTP 407", "check the user name and password")),
        ("socks5-auth", "polysocket:wrong-pw", ("SOCKS5", "check the user name and password")),
    ],
    ids=["http-no-credentials", "http-wrong-password", "socks5-wrong-password"],
)
def test_a_refusing_proxy_is_named(
    engine: str,
    proxy: ProxyPeer,
    serve_registry: Callable[..., ServerThread],
    listener: str,
    credentials: str,
    says: tuple[str, ...],
) -> None:
    server = serve_registry()
    url = proxy.url(listener, credentials=credentials)
    message = connect_error(server.uri("echo"), engine, proxy=url)
    scheme = url.partition("://")[0]
    assert f"{scheme}://127.0.0.1:{proxy.ports[listener]}" in message, message
    assert all(part in message for part in says), message
    assert f":{server.port}" not in message, f"names the server, not the proxy: {message}"
    assert "wrong-pw" not in message and PASSWORD not in message, f"shows credentials: {message}"
    assert proxy.tunnels_to("127.0.0.1", server.port) == 0  # refused before any tunnel


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_a_proxy_that_is_down_is_named(engine: str, proxy: ProxyPeer, scheme: str) -> None:
    down, target = ClosedPort(), Tripwire()
    try:
        url = f"{scheme}://someone:hidden@127.0.0.1:{down.port}"
        message = connect_error(target.uri, engine, proxy=url)
        assert f"cannot reach the proxy {scheme}://127.0.0.1:{down.port}" in message, message
        assert "check that the proxy is running" in message, message
        assert "hidden" not in message and f":{target.port}" not in message, message
        assert target.connections() == 0, "went around the proxy"
    finally:
        down.close()
        target.close()


@pytest.mark.parametrize("listener", ["http", "socks5"])
def test_a_server_down_behind_the_proxy(engine: str, proxy: ProxyPeer, listener: str) -> None:
    """The proxy is up, the server is not: a ConnectError naming both, not an open client.
    (pproxy answers a SOCKS5 CONNECT before it connects, so there the engine sees the tunnel
    close before the server's answer.)"""
    down = ClosedPort()
    try:
        message = connect_error(down.uri, engine, proxy=proxy.url(listener))
        assert f"{listener}://127.0.0.1:{proxy.ports[listener]}" in message, message
        assert f"127.0.0.1:{down.port}" in message, message
        assert proxy.wait_tunnels_to("127.0.0.1", down.port, 1) == 1
    finally:
        down.close()


def test_a_silent_proxy_is_bounded_by_open_timeout(engine: str, proxy: ProxyPeer) -> None:
    """A proxy that accepts TCP and never answers: ConnectError after open_timeout."""
    silent, target = Tripwire(), Tripwire()
    try:
        url = f"http://127.0.0.1:{silent.port}"
        message = connect_error(target.uri, engine, proxy=url, open_timeout=0.5)
        assert f"through the proxy {url}" in message and "open_timeout" in message, message
        assert silent.connections() == 1 and target.connections() == 0
    finally:
        silent.close()
        target.close()


def test_sock_is_not_a_user_option(engine: str, proxy: ProxyPeer) -> None:
    with pytest.raises(polysocket.UnsupportedOptionError, match="proxy="):
        polysocket.createWebsocket("ws://127.0.0.1:9/", Recorder(), engine, sock=object())
    assert polysocket.getClients() == []
