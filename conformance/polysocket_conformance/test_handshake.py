"""SPEC 4 and 5: what the opening handshake carries, on both sides, the same on every engine.

The server side is driven by a hand-written client (``RawClient``): it sends what libraries
never send (a header on two lines), and shows the answer exactly as the engine wrote it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import pytest

import polysocket
from polysocket_conformance.peer_processes import Peer
from polysocket_conformance.rawframes import TEXT, RawClient, close_frame, frame
from polysocket_conformance.server_support import ServerThread, events
from polysocket_conformance.support import WAIT, Recorder, require_capability

ECHO = "/websockets/v4/service/echo"


def close_cleanly(client: RawClient) -> None:
    """The closing handshake from the client's side, then the TCP close (an engine may wait
    for it before the session ends)."""
    client.send(close_frame(1000))
    assert client.reader.until_close()[0] == 1000
    client.close()
    assert events.wait("onclose", "echo").close_code == 1000


def test_repeated_request_headers_are_joined(serve_registry: Callable[..., ServerThread]) -> None:
    """RFC 9110 5.3: header lines of one name are one list, joined with ", " in order;
    cookies (RFC 6265 5.4) with "; "."""
    server = serve_registry()
    repeated = [("X-A", "1"), ("X-A", "2"), ("Cookie", "a=1"), ("Cookie", "b=2")]
    with RawClient(server.port, ECHO, headers=repeated) as client:
        assert client.status_line.startswith("HTTP/1.1 101"), client.status_line
        opened = events.wait("onopen", "echo")
        close_cleanly(client)
    assert opened.request_headers.get("x-a") == "1, 2", opened.request_headers
    assert opened.request_headers.get("cookie") == "a=1; b=2", opened.request_headers


@pytest.mark.parametrize(
    "lines",
    [("other", "chat"), ("chat", "other")],
    ids=["supported-on-the-second-line", "supported-on-the-first-line"],
)
def test_subprotocols_offered_on_two_header_lines(
    engine: str, serve_registry: Callable[..., ServerThread], lines: tuple[str, str]
) -> None:
    """RFC 6455 11.3.4: Sec-WebSocket-Protocol may come on several lines; together they are
    the offer, and the server selects from all of them, whichever line its choice is on."""
    require_capability(engine, "subprotocols")
    server = serve_registry(subprotocols=["chat"])
    offer = [("Sec-WebSocket-Protocol", line) for line in lines]
    with RawClient(server.port, ECHO, headers=offer) as client:
        assert client.status_line.startswith("HTTP/1.1 101"), client.status_line
        assert client.response_header("Sec-WebSocket-Protocol") == ["chat"]
        client.send(frame(TEXT, b"still talking"))
        assert client.recv_frame() == (TEXT, True, b"still talking")
        close_cleanly(client)


def test_server_session_remote_address_is_the_client_socket(
    serve_registry: Callable[..., ServerThread],
) -> None:
    """getSession().remote_address is the client's own (ip, port): the port too."""
    server = serve_registry()
    with RawClient(server.port, ECHO) as client:
        own = client.sock.getsockname()[:2]
        opened = events.wait("onopen", "echo")
        [session] = polysocket.getSessions("echo")
        assert isinstance(session, polysocket.ServerSession)  # one process: local
        close_cleanly(client)
    assert tuple(opened.remote_address) == own, (opened.remote_address, own)
    assert session.remote_address is not None
    assert tuple(session.remote_address) == own


def test_server_selects_by_the_clients_order_of_preference(
    engine: str, serve_registry: Callable[..., ServerThread]
) -> None:
    """The client offers "b" before "a"; the server, configured with "a" before "b",
    selects "b": the first offered that it supports."""
    require_capability(engine, "subprotocols")
    server = serve_registry(subprotocols=["a", "b"])
    offer = [("Sec-WebSocket-Protocol", "b, a")]
    with RawClient(server.port, ECHO, headers=offer) as client:
        assert client.status_line.startswith("HTTP/1.1 101"), client.status_line
        assert client.response_header("Sec-WebSocket-Protocol") == ["b"]
        close_cleanly(client)


def test_client_offers_subprotocols_in_its_order(engine: str, peer: Peer) -> None:
    """subprotocols=["b", "a"] goes on the wire in that order (the peer selects the first
    offered), and the client reports the server's choice."""
    require_capability(engine, "subprotocols")
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine, subprotocols=["b", "a"])
    client.send("cmd:subprotocol")
    client.send("cmd:headers")
    got = recorder.wait_messages(2)
    client.close()
    assert recorder.wait_closed(WAIT)
    assert got[0] == "b"
    offered = json.loads(got[1]).get("sec-websocket-protocol", "")
    assert [p.strip() for p in offered.split(",")] == ["b", "a"], offered

    async def selected() -> str | None:
        async with polysocket.connect(peer.uri, engine=engine, subprotocols=["b", "a"]) as ws:
            return ws.subprotocol

    assert asyncio.run(selected()) == "b"


#: Request targets and the status each gets, upgrade asked / plain GET, on every engine:
#: the core percent-decodes the path once (UTF-8), takes the path of an absolute-form
#: target, and answers 400 for what no path of it can be.
REQUEST_TARGETS = [
    (ECHO, 101, 426),
    (ECHO + "?a=1&b=%zz", 101, 426),  # the query is not the core's to decode
    ("/websockets/v4/service/%65cho", 101, 426),
    ("/websockets/v4/%73ervice/ech%6F", 101, 426),
    ("http://HOST" + ECHO, 101, 426),
    ("HTTP://HOST/websockets/v4/service/%65cho", 101, 426),
    ("http://HOST", 200, 200),  # the path of "http://host" is "/"
    ("/websockets/v4/%65ndpoints", 200, 200),
    ("/websockets/v4/service/echo%00", 400, 400),  # a control character
    ("/websockets/v4/service/ec%0Aho", 400, 400),
    ("/websockets/v4/service/my%2Fecho", 400, 400),  # an encoded slash
    ("/websockets/v4%2Fservice/echo", 400, 400),
    ("/websockets/v4/service/%zz", 400, 400),  # a broken escape
    ("/websockets/v4/service/%FF", 400, 400),  # not UTF-8
    ("*", 400, 400),  # asterisk-form: no path
    ("/websockets/v4/service/%C3%A9", 404, 404),  # a name no endpoint has
    ("/websockets/v4/service/../service/echo", 404, 404),  # no dot segments resolved
    ("//websockets/v4/service/echo", 404, 404),
]


def _status(port: int, target: str, upgrade: bool) -> int:
    """The status a raw request for ``target`` gets (a 101 is then closed cleanly)."""
    target = target.replace("HOST", f"127.0.0.1:{port}")
    if upgrade:
        client = RawClient(port, target)
        status = int(client.status_line.split(" ")[1])
        if status == 101:
            client.send(close_frame(1000))
            assert client.reader.until_close()[0] == 1000
        client.close()
        return status
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, f"no answer to GET {target}: {answer!r}"
            answer += chunk
        return int(answer.split(b" ")[1])


def test_one_rule_for_the_request_path(serve_registry: Callable[..., ServerThread]) -> None:
    """Percent-decoding and absolute-form targets: the same status on every engine."""
    server = serve_registry()
    got = [
        (target, _status(server.port, target, True), _status(server.port, target, False))
        for target, _, _ in REQUEST_TARGETS
    ]
    assert got == REQUEST_TARGETS
