"""What engines share, so that no engine writes it again: HTTP requests and answers,
close codes, listening sockets, session tracking, keepalive pings and the fragment limit.

Nothing here is required by the contract (:mod:`polysocket.transport`); an engine uses
whatever its library does not already do.
"""

from __future__ import annotations

from .closecodes import CloseCode, valid_close_code
from .fragments import FRAGMENTS_REASON, MAX_FRAGMENTS, FrameCounter, too_many_fragments
from .http import (
    FRAMING_HEADERS,
    TOKEN_CHARS,
    answer_fields,
    answer_headers,
    answer_payload,
    answer_reason,
    header_map,
    http_request,
)
from .keepalive import Keepalive
from .sessions import SessionTracker
from .sockets import bind_sockets

__all__ = [
    "FRAGMENTS_REASON",
    "FRAMING_HEADERS",
    "MAX_FRAGMENTS",
    "TOKEN_CHARS",
    "CloseCode",
    "FrameCounter",
    "Keepalive",
    "SessionTracker",
    "answer_fields",
    "answer_headers",
    "answer_payload",
    "answer_reason",
    "bind_sockets",
    "header_map",
    "http_request",
    "too_many_fragments",
    "valid_close_code",
]
