"""The engine kit: what engines share instead of writing it again."""

from __future__ import annotations

import pytest

from polysocket.enginekit import (
    CloseCode,
    answer_fields,
    answer_headers,
    answer_payload,
    answer_reason,
    header_map,
    http_request,
    request_path,
    valid_close_code,
)
from polysocket.transport import HttpResponse, KeepaliveTimeout


def test_http_answer_fields_and_payload():
    answer = HttpResponse(
        404, b"no such thing\n", headers={"X-Hint": "see /", "content-length": "9"}
    )
    fields = dict(answer_fields(answer))
    assert fields["Content-Length"] == "14"  # the answer's own framing headers are ignored
    assert fields["Content-Type"] == "text/plain; charset=utf-8"
    assert fields["X-Hint"] == "see /"
    assert fields["Connection"] == "close"
    assert "Date" in fields
    assert answer_reason(answer) == "Not Found"
    assert answer_payload(answer, "GET") == b"no such thing\n"
    assert answer_payload(answer, "HEAD") == b""


@pytest.mark.parametrize("status", [101, 204, 304])
def test_statuses_without_a_body(status):
    answer = HttpResponse(status, b"ignored")
    assert "content-length" not in {name.lower() for name, _ in answer_fields(answer)}
    assert answer_payload(answer, "GET") == b""


def test_header_injection_is_refused():
    with pytest.raises(ValueError, match="invalid response header"):
        answer_fields(HttpResponse(200, headers={"X-A": "1\r\nSet-Cookie: evil=1"}))
    with pytest.raises(ValueError, match="invalid response header"):
        answer_fields(HttpResponse(200, headers={"Bad Name": "1"}))


def test_unknown_status_reason():
    assert answer_reason(HttpResponse(499)) == "Unknown"


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        (1000, True),
        (1003, True),
        (1004, False),
        (1005, False),
        (1006, False),
        (1007, True),
        (1014, True),
        (1015, False),
        (2999, False),
        (3000, True),
        (4999, True),
        (5000, False),
        (0, False),
    ],
)
def test_valid_close_codes(code, valid):
    assert valid_close_code(code) is valid


def test_close_codes_are_plain_ints_on_the_wire():
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert not valid_close_code(CloseCode.ABNORMAL)


def test_answer_headers_for_libraries_that_frame_http_themselves():
    answer = HttpResponse(426, headers={"Upgrade": "websocket", "Connection": "keep-alive"})
    assert answer_headers(answer) == {
        "Content-Type": "text/plain; charset=utf-8",
        "Upgrade": "websocket",
    }


def test_repeated_headers_are_joined_the_rfc_9110_way():
    lines = [("X-A", "1"), ("Cookie", "a=1"), ("x-a", "2"), ("COOKIE", "b=2"), ("Host", "h")]
    assert header_map(lines) == {"x-a": "1, 2", "cookie": "a=1; b=2", "host": "h"}


def test_http_request_from_header_lines():
    request = http_request(
        "GET",
        "/ws?a=1",
        [
            ("Upgrade", "WebSocket"),
            ("Sec-WebSocket-Protocol", "chat, superchat"),
            ("Sec-WebSocket-Protocol", "v2"),
        ],
        ("127.0.0.1", 5555, 0, 0),
    )
    assert request.upgrade
    assert request.subprotocols == ("chat", "superchat", "v2")
    assert request.remote_address == ("127.0.0.1", 5555)
    assert (request.path, request.query, request.bad_target) == ("/ws", "a=1", None)
    assert http_request("GET", "/", [], None).remote_address is None


@pytest.mark.parametrize(
    ("target", "path", "query", "problem"),
    [
        ("/ws?a=%zz", "/ws", "a=%zz", None),
        ("/w%73/%C3%A9", "/ws/é", "", None),
        ("http://h:1/ws?q", "/ws", "q", None),
        ("wss://h", "/", "", None),
        ("*", None, "", "must be a path"),
        ("h:80", None, "", "must be a path"),
        ("/a%2Fb", None, "", "encoded slash"),
        ("/a%2fb", None, "", "encoded slash"),
        ("/a%00", None, "", "control character"),
        ("/a%zz", None, "", "does not start a %XX escape"),
        ("/a%4", None, "", "does not start a %XX escape"),
        ("/a%FF", None, "", "not UTF-8"),
        ("/é", None, "", "must be percent-encoded"),
        ("/a\tb", None, "", "must be percent-encoded"),
    ],
)
def test_request_path_is_one_rule(target, path, query, problem):
    got_path, got_query, got_problem = request_path(target)
    if problem is None:
        assert (got_path, got_query, got_problem) == (path, query, None)
    else:
        assert got_problem is not None and problem in got_problem


def test_listening_sockets_keep_their_backlog_when_listened_on_again() -> None:
    from polysocket.enginekit import bind_sockets

    sockets = bind_sockets("127.0.0.1", 0, 500)
    try:
        (sock,) = sockets
        sock.listen(100)  # what asyncio's create_server(sock=...) does
        assert getattr(sock, "backlog", None) == 500
        sock.listen(3000)  # a larger one is taken
        assert getattr(sock, "backlog", None) == 3000
    finally:
        for opened in sockets:
            opened.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2048"])
def test_backlog_option_must_be_a_positive_int(bad: object) -> None:
    from polysocket.options import server_options
    from polysocket.testing import MemoryEngine

    with pytest.raises(TypeError, match="backlog must be a positive int"):
        server_options(MemoryEngine(), {"backlog": bad})
    assert server_options(MemoryEngine(), {"backlog": 4096})[0].backlog == 4096


def _keepalive_run(
    answer: bool, paused: bool = False, seconds: float = 0.5
) -> tuple[int, list[TimeoutError], float | None]:
    """A Keepalive of 50 ms / 50 ms for ``seconds``: (pings, losses, when the loss came)."""
    import asyncio

    from polysocket.enginekit import Keepalive

    async def run() -> tuple[int, list[TimeoutError], float | None]:
        loop = asyncio.get_running_loop()
        pings, lost, start = [0], [], loop.time()
        when: list[float] = []
        keepalive: Keepalive | None = None

        def ping() -> None:
            pings[0] += 1
            if answer:
                loop.call_later(0.005, lambda: keepalive and keepalive.pong())

        def on_lost(error: TimeoutError) -> None:
            lost.append(error)
            when.append(loop.time() - start)

        keepalive = Keepalive(ping, 0.05, 0.05, on_lost, lambda: paused)
        await asyncio.sleep(seconds)
        keepalive.stop()
        stopped_at = pings[0]
        await asyncio.sleep(0.15)
        assert pings[0] == stopped_at, "stop() must end the pings"
        return pings[0], lost, when[0] if when else None

    return asyncio.run(run())


def test_keepalive_pings_every_interval_while_pongs_come() -> None:
    pings, lost, _ = _keepalive_run(answer=True)
    assert not lost
    assert 6 <= pings <= 10, pings  # one every 50 ms over 0.5 s


def test_keepalive_reports_a_missing_pong_after_interval_plus_timeout() -> None:
    pings, lost, when = _keepalive_run(answer=False)
    assert pings == 1 and len(lost) == 1 and isinstance(lost[0], KeepaliveTimeout)
    assert "no pong came within ping_timeout=0.05 s" in str(lost[0]), lost
    assert "unreachable or stopped answering" in str(lost[0]), lost
    assert when is not None and 0.09 <= when < 0.3, when


def test_keepalive_does_not_count_a_pong_unread_while_paused() -> None:
    pings, lost, _ = _keepalive_run(answer=False, paused=True)
    assert not lost and pings >= 4, pings
