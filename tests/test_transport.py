"""Helpers of the engine contract that engines share."""

from __future__ import annotations

import pytest

from polysocket.transport import HttpResponse, valid_close_code


def test_http_answer_fields_and_payload():
    answer = HttpResponse(
        404, b"no such thing\n", headers={"X-Hint": "see /", "content-length": "9"}
    )
    fields = dict(answer.fields())
    assert fields["Content-Length"] == "14"  # the answer's own framing headers are ignored
    assert fields["Content-Type"] == "text/plain; charset=utf-8"
    assert fields["X-Hint"] == "see /"
    assert fields["Connection"] == "close"
    assert "Date" in fields
    assert answer.reason == "Not Found"
    assert answer.payload("GET") == b"no such thing\n"
    assert answer.payload("HEAD") == b""


@pytest.mark.parametrize("status", [101, 204, 304])
def test_statuses_without_a_body(status):
    answer = HttpResponse(status, b"ignored")
    assert "content-length" not in {name.lower() for name, _ in answer.fields()}
    assert answer.payload("GET") == b""


def test_header_injection_is_refused():
    with pytest.raises(ValueError, match="invalid response header"):
        HttpResponse(200, headers={"X-A": "1\r\nSet-Cookie: evil=1"}).fields()
    with pytest.raises(ValueError, match="invalid response header"):
        HttpResponse(200, headers={"Bad Name": "1"}).fields()


def test_unknown_status_reason():
    assert HttpResponse(499).reason == "Unknown"


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
