"""HTTP/1.1 on the engine boundary: requests in, answers out, the same on every engine."""

from __future__ import annotations

import email.utils
import http
import re
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from ..transport import HttpRequest, HttpResponse

__all__ = [
    "FRAMING_HEADERS",
    "TOKEN_CHARS",
    "answer_fields",
    "answer_headers",
    "answer_payload",
    "answer_reason",
    "header_map",
    "http_request",
    "request_path",
]

#: Header names that belong to the engine's HTTP framing: an answer's own values are ignored.
FRAMING_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "date"})
#: The characters of an HTTP token (RFC 9110 5.6.2): methods and header names.
TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def header_map(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header lines as one map: lower-case names, a repeated header's values joined with
    ``", "`` (RFC 9110 5.3), and repeated ``Cookie`` lines with ``"; "`` (RFC 6265 5.4)."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in headers:
            value = headers[key] + ("; " if key == "cookie" else ", ") + value
        headers[key] = value
    return headers


#: The start of an absolute-form request target (RFC 3986 3.1 scheme, then an authority).
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def request_path(target: str) -> tuple[str, str, str | None]:
    """The core's one rule for a request target: ``(path, query, problem)``.

    ``target`` is exactly what the request line carried. The origin form ``/path?query`` and
    the absolute form ``http://host/path?query`` (RFC 9112 3.2.2: its path is taken, the host
    ignored) are routable; the path is percent-decoded once, as UTF-8 (RFC 3986 2.1), and
    the query is left as sent. ``problem`` says why the target cannot be routed (the core
    answers 400): another form (``*``, ``host:port``), a character that must be
    percent-encoded, a broken escape (``%zz``), an escape that is not UTF-8, a control
    character once decoded (``%00``), or an encoded slash (``%2F``, which would let a name
    hold a ``/``). Dot segments are not resolved: ``/a/../b`` is no path of the server."""
    if target.startswith("/"):
        raw, _, query = target.partition("?")
    elif absolute := _ABSOLUTE_FORM.match(target):
        raw, _, query = target[absolute.end() :].partition("?")
        raw = raw or "/"
    else:
        return target, "", "the request target must be a path (/...) or an absolute URL"
    if not raw.isascii() or not raw.isprintable() or " " in raw:
        return raw, query, "the path has characters that must be percent-encoded"
    if "%" not in raw:
        return raw, query, None
    if _PERCENT.search(raw):
        return raw, query, "the path has a % that does not start a %XX escape"
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return raw, query, "the path's %XX escapes are not UTF-8"
    if not path.isprintable():
        return raw, query, "the path has a control character once decoded"
    if path.count("/") != raw.count("/"):
        return raw, query, "the path has an encoded slash (%2F)"
    return path, query, None


def http_request(
    method: str, target: str, headers: Iterable[tuple[str, str]], peer: object
) -> HttpRequest:
    """The :class:`HttpRequest` for a parsed request. ``target`` is the request target as
    on the request line, not decoded (:func:`request_path` applies the one rule every engine
    shares); ``headers`` are the header lines as received (repeats included); ``peer`` is the
    socket's peer name (``None`` if unknown)."""
    lines = list(headers)
    fields = header_map(lines)
    upgrade = fields.get("upgrade", "").split(",")
    offered = fields.get("sec-websocket-protocol", "").split(",")
    path, query, problem = request_path(target)
    return HttpRequest(
        method=method,
        path=path,
        query=query,
        headers=fields,
        remote_address=(
            (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
        ),
        upgrade=any(token.strip().lower() == "websocket" for token in upgrade),
        subprotocols=tuple(p.strip() for p in offered if p.strip()),
        bad_target=problem,
        header_lines=len(lines),
    )


def answer_reason(answer: HttpResponse) -> str:
    """The status line's reason phrase (``"Unknown"`` for a status HTTP does not name)."""
    try:
        return http.HTTPStatus(answer.status).phrase
    except ValueError:
        return "Unknown"


def answer_headers(answer: HttpResponse) -> dict[str, str]:
    """The headers to hand a library that frames HTTP itself: ``Content-Type`` and the
    answer's own, without :data:`FRAMING_HEADERS`."""
    headers = {"Content-Type": answer.content_type}
    headers.update(
        (name, value)
        for name, value in answer.headers.items()
        if name.lower() not in FRAMING_HEADERS
    )
    return headers


def answer_fields(answer: HttpResponse) -> list[tuple[str, str]]:
    """Every header field to write, framing included: ``Date``, ``Content-Type``, the
    answer's own headers, ``Content-Length`` (not for 1xx, 204, 304) and ``Connection:
    close``. Raises ``ValueError`` for a name that is not an HTTP token or a value with a
    line break (a header injection)."""
    chosen: dict[str, tuple[str, str]] = {}

    def put(name: str, value: str) -> None:
        if not name or not set(name) <= TOKEN_CHARS or "\r" in value or "\n" in value:
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        chosen[name.lower()] = (name, value)

    put("Date", email.utils.formatdate(usegmt=True))
    for name, value in answer_headers(answer).items():
        put(name, value)
    if _may_have_body(answer):
        put("Content-Length", str(len(answer.body)))
    put("Connection", "close")
    return list(chosen.values())


def answer_payload(answer: HttpResponse, method: str) -> bytes:
    """The body to write: none in answer to HEAD, nor for 1xx, 204 and 304."""
    return bytes(answer.body) if _may_have_body(answer) and method != "HEAD" else b""


def _may_have_body(answer: HttpResponse) -> bool:
    return answer.status >= 200 and answer.status not in (204, 304)
