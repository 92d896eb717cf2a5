"""What engines share, so that no engine writes it again: HTTP requests and answers,
close codes, listening sockets, session tracking and keepalive pings.

Nothing here is required by the contract (:mod:`polysocket.transport`); an engine uses
whatever its library does not already do.
"""

from __future__ import annotations

from .closecodes import CloseCode, valid_close_code
from .http import (
    FRAMING_HEADERS,
    TOKEN_CHARS,
    answer_fields,
    answer_headers,
    answer_payload,
    answer_reason,
    header_map,
    http_request,
    request_path,
)
from .keepalive import Keepalive
from .sessions import SessionTracker
from .sockets import bind_sockets

__all__ = [
    "FRAMING_HEADERS",
    "TOKEN_CHARS",
    "CloseCode",
    "Keepalive",
    "SessionTracker",
    "answer_fields",
    "answer_headers",
    "answer_payload",
    "answer_reason",
    "bind_sockets",
    "header_map",
    "http_request",
    "request_path",
    "valid_close_code",
]
