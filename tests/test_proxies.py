"""Which proxy a client uses (polysocket.proxies): the option, the environment, no_proxy,
the schemes, and the errors of a tunnel that fails, against small real servers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import pytest

from polysocket import ConnectError, UnsupportedOptionError, proxies
from polysocket.options import client_options
from polysocket.proxies import parse_proxy, select_proxy
from polysocket.testing import MemoryEngine
from polysocket.transport import CAPABILITIES

WITH_PROXY = MemoryEngine(capabilities=CAPABILITIES)  # declares "proxy"; never connects here
WITHOUT_PROXY = MemoryEngine()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    proxies._warned.clear()


# -- parsing --------------------------------------------------------------------------------


def test_schemes_ports_and_credentials() -> None:
    proxy = parse_proxy("http://alice:p%40ss%3Aword@proxy.example:3128")
    assert (proxy.scheme, proxy.host, proxy.port) == ("http", "proxy.example", 3128)
    assert (proxy.username, proxy.password) == ("alice", "p@ss:word")
    assert str(proxy) == "http://proxy.example:3128"
    assert "p@ss" not in repr(proxy) and "alice" not in repr(proxy)
    assert parse_proxy("http://proxy.example").port == 80
    assert parse_proxy("socks5://[::1]").port == 1080
    assert str(parse_proxy("socks5h://[::1]:9050")) == "socks5h://[::1]:9050"
    # who resolves the server's name: the proxy, except for socks5:// and socks4://
    remote = {s: parse_proxy(f"{s}://h:1").remote_dns for s in proxies.SCHEMES}
    assert remote == {
        "http": True,
        "socks5": False,
        "socks5h": True,
        "socks4": False,
        "socks4a": True,
    }


def test_https_proxies_are_refused_with_what_to_use_instead() -> None:
    with pytest.raises(UnsupportedOptionError, match="https:// proxies") as caught:
        parse_proxy("https://bob:secret@proxy.example:443")
    assert "http://" in str(caught.value) and "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        ("ftp://proxy:21", UnsupportedOptionError, "unsupported proxy scheme 'ftp'"),
        ("proxy.example:3128", UnsupportedOptionError, "unsupported proxy scheme"),
        ("http://", ValueError, "no host"),
        ("http://proxy:99999", ValueError, "port"),
        ("http://bob@proxy:3128", ValueError, "without a password"),
        ("http://proxy:3128/path", ValueError, "no path"),
    ],
)
def test_malformed_urls(url: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        parse_proxy(url)


def test_the_option_is_checked_with_the_other_options() -> None:
    assert client_options(WITH_PROXY, {}).proxy is True
    assert client_options(WITH_PROXY, {"proxy": False}).proxy is None
    assert client_options(WITH_PROXY, {"proxy": "socks5://h:1"}).proxy == "socks5://h:1"
    with pytest.raises(TypeError, match="proxy must be a proxy URL"):
        client_options(WITH_PROXY, {"proxy": 3128})
    with pytest.raises(UnsupportedOptionError, match="https:// proxies"):
        client_options(WITH_PROXY, {"proxy": "https://h:1"})
    with (
        socket.socket() as sock,
        pytest.raises(UnsupportedOptionError, match="sock= is not an option"),
    ):
        client_options(WITH_PROXY, {"sock": sock})
    # an engine without the capability: an explicit proxy is refused, the others accepted
    with pytest.raises(UnsupportedOptionError, match=r"proxy=.*'proxy' capability"):
        client_options(WITHOUT_PROXY, {"proxy": "http://h:1"})
    for value in (True, None, False):
        client_options(WITHOUT_PROXY, {"proxy": value})


# -- choosing -------------------------------------------------------------------------------


def chosen(uri: str, option: str | bool | None = True) -> str | None:
    proxy = select_proxy(uri, option, WITH_PROXY)
    return None if proxy is None else f"{proxy} {proxy.source}"


def test_the_option_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://env:1")
    assert chosen("ws://server/", None) is None
    assert chosen("ws://server/", False) is None
    assert chosen("ws://server/", "socks5://mine:2") == "socks5://mine:2 proxy="
    assert chosen("ws://server/") == "http://env:1 $http_proxy"


def test_nothing_in_the_environment_is_direct() -> None:
    assert chosen("ws://server/") is None
    assert chosen("wss://server/") is None


def test_each_scheme_reads_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://plain:1")
    monkeypatch.setenv("https_proxy", "http://secure:2")
    assert chosen("ws://server/") == "http://plain:1 $http_proxy"
    assert chosen("wss://server/") == "http://secure:2 $https_proxy"
    monkeypatch.setenv("wss_proxy", "socks5h://websocket:3")
    assert chosen("wss://server/") == "socks5h://websocket:3 $wss_proxy"
    monkeypatch.delenv("http_proxy")
    assert chosen("ws://server/") is None  # https_proxy is for wss:// only
    monkeypatch.setenv("ALL_PROXY", "socks5://everything:4")
    assert chosen("ws://server/") == "socks5://everything:4 $all_proxy"


def test_socks_variables_and_missing_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("socks_proxy", "http://desktop:1080")  # how some desktops write it
    assert chosen("ws://server/") == "socks5h://desktop:1080 $socks_proxy"
    monkeypatch.setenv("socks_proxy", "socks://desktop:1080")
    assert chosen("ws://server/") == "socks5h://desktop:1080 $socks_proxy"
    monkeypatch.setenv("http_proxy", "corporate:3128")  # no scheme: HTTP
    assert chosen("ws://server/") == "http://corporate:3128 $http_proxy"
    monkeypatch.delenv("http_proxy")
    monkeypatch.delenv("socks_proxy")
    monkeypatch.setenv("all_proxy", "socks://gateway:1080")
    assert chosen("ws://server/") == "socks5h://gateway:1080 $all_proxy"


def test_no_proxy_bypasses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://env:1")
    monkeypatch.setenv("no_proxy", "localhost, .internal.example, 10.0.0.1")
    assert chosen("ws://localhost:8080/") is None
    assert chosen("ws://api.internal.example/") is None
    assert chosen("ws://10.0.0.1:9000/") is None
    assert chosen("ws://public.example/") == "http://env:1 $http_proxy"
    monkeypatch.setenv("no_proxy", "*")
    assert chosen("ws://public.example/") is None


def test_a_bad_variable_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "https://tls-proxy:443")
    with pytest.raises(UnsupportedOptionError, match=r"\$https_proxy.*https:// proxies"):
        chosen("wss://server/")
    monkeypatch.setenv("https_proxy", "http://bob@proxy:1")
    with pytest.raises(ConnectError, match=r"\$https_proxy.*without a password.*proxy=None"):
        chosen("wss://server/")


def test_an_engine_without_proxies_goes_direct_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("http_proxy", "http://user:secret@env:1")
    with caplog.at_level(logging.WARNING, logger="polysocket.proxies"):
        assert select_proxy("ws://server/", True, WITHOUT_PROXY) is None
        assert select_proxy("ws://server/", True, WITHOUT_PROXY) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "'memory'" in warnings[0] and "http://env:1" in warnings[0]
    assert "secret" not in warnings[0]


# -- a tunnel that fails, against real sockets ----------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def tunnel_error(handler: Handler | None, scheme: str, credentials: str = "") -> str:
    """The ConnectError of a tunnel through a server that runs ``handler`` (None: a port
    where nobody listens) to ws://target.example:8080/."""
    if handler is None:
        probe = socket.create_server(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        server = None
    else:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    try:
        proxy = parse_proxy(f"{scheme}://{credentials}127.0.0.1:{port}")
        with pytest.raises(ConnectError) as caught:
            await proxies._tunnel(proxy, "ws://target.example:8080/", 5.0)
        message = str(caught.value)
        assert f"{scheme}://127.0.0.1:{port} (proxy=)" in message, message
        assert "secret" not in message, message
        return message
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


def answer(reply: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        if reply.startswith(b"\x05"):  # SOCKS5: no authentication, then the reply
            writer.write(reply[:2])
            await reader.read(1024)
            writer.write(reply[2:])
        else:
            writer.write(reply)
        await writer.drain()
        writer.close()

    return handler


def test_a_proxy_that_is_down() -> None:
    message = asyncio.run(tunnel_error(None, "socks5"))
    assert message.startswith("cannot reach the proxy") and "is running" in message


def test_407_without_and_with_credentials() -> None:
    reply = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
    message = asyncio.run(tunnel_error(answer(reply), "http"))
    assert "HTTP 407" in message and "put them in the proxy URL" in message
    message = asyncio.run(tunnel_error(answer(reply), "http", "user:secret@"))
    assert "HTTP 407" in message and "check the user name and password" in message


def test_a_proxy_that_cannot_reach_the_server() -> None:
    reply = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
    message = asyncio.run(tunnel_error(answer(reply), "http"))
    assert "CONNECT to target.example:8080 with HTTP 502" in message
    refused = b"\x05\x00" + b"\x05\x05\x00\x01" + bytes(6)  # SOCKS5 reply 5: refused
    message = asyncio.run(tunnel_error(answer(refused), "socks5h"))
    assert "could not open a connection to target.example:8080" in message


def test_a_proxy_that_hangs_up() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    message = asyncio.run(tunnel_error(hang_up, "socks5", "user:secret@"))
    assert "check the user name and password" in message
    message = asyncio.run(tunnel_error(hang_up, "socks5"))
    assert "without opening the tunnel to target.example:8080" in message
    message = asyncio.run(tunnel_error(hang_up, "http", "user:secret@"))  # HTTP would say 407
    assert "without opening the tunnel" in message and "server is up" in message


def test_connect_names_an_ipv6_server_in_brackets() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        await writer.drain()
        writer.close()

    async def run() -> str:
        server = await asyncio.start_server(record, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ConnectError) as caught:
                await proxies._tunnel(parse_proxy(f"http://127.0.0.1:{port}"), "ws://[::1]:81/", 5)
            return str(caught.value)
        finally:
            server.close()
            await server.wait_closed()

    message = asyncio.run(run())
    assert seen and seen[0].startswith(b"CONNECT [::1]:81 HTTP/1.1\r\n"), seen
    assert "HTTP 403" in message
