"""What engines share, so that no engine writes it again: HTTP requests and answers,
close codes, listening sockets, session tracking, keepalive pings, the fragment limit,
encoded frames for broadcast, and
admission (handshake deadlines, header limits, an accept loop that backs off when descriptors
run out).

Nothing here is required by the contract (:mod:`polysocket.transport`); an engine uses
whatever its library does not already do.
"""

from __future__ import annotations

from .admission import (
    LIBRARY_MAX_HEADER_LINES,
    MAX_HEAD_SIZE,
    MAX_HEADER_LINES,
    MAX_LINE_SIZE,
    AcceptErrorFilter,
    HandshakeDeadline,
    accept_connections,
    install_accept_error_filter,
)
from .closecodes import CloseCode, valid_close_code
from .fragments import FRAGMENTS_REASON, MAX_FRAGMENTS, FrameCounter, too_many_fragments
from .frames import server_frame, write_frame
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
    "FRAGMENTS_REASON",
    "FRAMING_HEADERS",
    "LIBRARY_MAX_HEADER_LINES",
    "MAX_FRAGMENTS",
    "MAX_HEADER_LINES",
    "MAX_HEAD_SIZE",
    "MAX_LINE_SIZE",
    "TOKEN_CHARS",
    "AcceptErrorFilter",
    "CloseCode",
    "FrameCounter",
    "HandshakeDeadline",
    "Keepalive",
    "SessionTracker",
    "accept_connections",
    "answer_fields",
    "answer_headers",
    "answer_payload",
    "answer_reason",
    "bind_sockets",
    "header_map",
    "http_request",
    "install_accept_error_filter",
    "request_path",
    "server_frame",
    "too_many_fragments",
    "valid_close_code",
    "write_frame",
]
