"""Who may open a session: allowed origins, authentication, roles, and bearer tokens.

Everything here runs inside ``ServerApp.route``, which is synchronous and must stay quick
(the engine contract): an authenticator is a plain callable that looks at the handshake and
answers at once (verify a token, a signature, a cookie against memory). It must not do
network I/O or wait on locks held elsewhere; while it runs, the server handles nothing else.

- **Origins.** A browser always sends ``Origin``; a page on another site that opens a
  WebSocket to this server (cross-site WebSocket hijacking) is told apart by it. An
  :class:`OriginPolicy` allows a list of exact origins (``scheme://host[:port]``, or ``"*"``),
  the server's own origin (``http://`` or ``https://`` plus the request's ``Host``), and
  requests without ``Origin`` (programs, not browsers).
- **Authentication.** An authenticator gets a :class:`Handshake` and returns a
  :class:`Principal` (accepted), ``None`` (refused with 401), or raises :class:`Refused`
  for an answer of its own (401 or 403 with a text).
- **Roles.** A descriptor's ``roles`` names the roles that may connect; the principal must
  hold one of them.
- **Bearer tokens.** :func:`bearer_tokens` is a ready authenticator: tokens from a file or
  ``$POLYSOCKET_TOKENS``, presented as ``Authorization: Bearer TOKEN`` or (browsers cannot
  set headers on a WebSocket) as the ``access_token`` query parameter.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WebsocketError
from .transport import HttpRequest, HttpResponse

__all__ = [
    "TOKENS_ENV",
    "AccessConfigError",
    "Authenticator",
    "BearerTokens",
    "Handshake",
    "OriginPolicy",
    "Principal",
    "Refused",
    "bearer_tokens",
    "normalize_origin",
    "parse_tokens",
]

log = logging.getLogger("polysocket.auth")

#: The environment variable :func:`bearer_tokens` reads tokens from.
TOKENS_ENV = "POLYSOCKET_TOKENS"
#: The query parameter a browser puts its bearer token in (RFC 6750 2.3).
TOKEN_PARAMETER = "access_token"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class AccessConfigError(WebsocketError, ValueError):
    """An origin list or a token file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Principal:
    """Who opened a session: ``getSession().principal`` in a server callback."""

    name: str
    roles: frozenset[str] = frozenset()


class Refused(Exception):
    """Raised by an authenticator to refuse a handshake with ``status`` (401 or 403) and
    ``text`` as the answer's body; ``headers`` are added to the answer."""

    def __init__(
        self, status: int = 401, text: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        if status not in (401, 403):
            raise ValueError(f"Refused takes status 401 or 403, not {status}")
        super().__init__(status, text)
        self.status = status
        self.text = text or (
            "authentication required" if status == 401 else "not allowed to connect here"
        )
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Handshake:
    """What an authenticator sees of an opening handshake, before the 101."""

    #: The endpoint asked for (its name, as in the descriptor).
    endpoint: str
    path: str
    #: Query parameters, percent-decoded; the first value of a repeated one.
    query: Mapping[str, str]
    #: Lower-case names; repeated headers joined (RFC 9110).
    headers: Mapping[str, str]
    #: Cookies by name (the first of a repeated one), values as sent.
    cookies: Mapping[str, str]
    remote_address: tuple[str, int] | None
    #: The request as the engine handed it to the core.
    request: HttpRequest = field(repr=False)

    @classmethod
    def of(cls, request: HttpRequest, endpoint: str) -> Handshake:
        query: dict[str, str] = {}
        for name, value in urllib.parse.parse_qsl(request.query, keep_blank_values=True):
            query.setdefault(name, value)
        return cls(
            endpoint,
            request.path,
            query,
            request.headers,
            _cookies(request.headers.get("cookie", "")),
            request.remote_address,
            request,
        )


#: ``authenticate=``: a :class:`Handshake` in, a :class:`Principal` or ``None`` out.
Authenticator = Callable[[Handshake], Principal | None]


def _cookies(header: str) -> dict[str, str]:
    # RFC 6265 5.4: "name=value" pairs separated by "; ". Lenient on purpose (SimpleCookie
    # drops every cookie after one it does not like); a pair without "=" is skipped.
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, equals, value = pair.strip().partition("=")
        if equals and name:
            cookies.setdefault(name.strip(), value.strip())
    return cookies


# -- origins --------------------------------------------------------------------------------


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` with the scheme and host in lower case and a default port
    dropped, or ``None`` when ``origin`` is not of that form (``"null"``, a path...)."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if (
        not scheme
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        return None
    shown = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{shown}:{port}"
    return f"{scheme}://{shown}"


def origin_list(entries: Iterable[str], where: str) -> tuple[str, ...]:
    """Checked, normalised origin entries; raise :class:`AccessConfigError` naming ``where``."""
    if isinstance(entries, str):
        raise AccessConfigError(f"{where}: origins must be a list of strings, not one string")
    checked = []
    for entry in entries:
        if not isinstance(entry, str):
            raise AccessConfigError(f"{where}: origin {entry!r} is not a string")
        if entry.strip() == "*":
            checked.append("*")
            continue
        normal = normalize_origin(entry)
        if normal is None:
            raise AccessConfigError(
                f"{where}: {entry!r} is not an origin; write scheme://host[:port], e.g."
                " 'https://app.example.com' or 'http://localhost:3000', or '*' for any"
            )
        checked.append(normal)
    return tuple(checked)


class OriginPolicy:
    """Which ``Origin`` may open a session: ``None`` allows every origin."""

    def __init__(self, allowed: Sequence[str] | None) -> None:
        self.allowed = None if allowed is None else frozenset(allowed)

    def refusal(self, request: HttpRequest) -> HttpResponse | None:
        """A 403 for a handshake whose ``Origin`` is not allowed, else ``None``."""
        origin = request.headers.get("origin")
        if origin is None or self.allowed is None or "*" in self.allowed:
            return None
        normal = normalize_origin(origin)
        if normal is not None and (normal in self.allowed or normal in _own_origins(request)):
            return None
        return _answer(
            403,
            f"origin {origin!r} may not open a WebSocket here. To allow it, add it to the"
            " server's origins (polysocket serve --origin URL, serve(origins=[...])) or to"
            ' the endpoint descriptor\'s "origins" list.\n',
        )


def _own_origins(request: HttpRequest) -> tuple[str | None, ...]:
    # Same origin: the page the server serves at "/" talks to its own endpoints. The Host
    # header says which name the browser used; the scheme may be either (TLS or a proxy).
    host = request.headers.get("host")
    if not host:
        return ()
    return normalize_origin(f"http://{host}"), normalize_origin(f"https://{host}")


def is_loopback(host: str) -> bool:
    """True when a server bound to ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-like names, host names: assume reachable from outside


# -- authentication and roles ---------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    """The handshake may go on to the 101; ``principal`` is who opened it (if anybody)."""

    principal: Principal | None


class Gate:
    """The checks before the 101, in order: origin (403), authentication (401/403, 500 when
    the authenticator fails), the endpoint's roles (403, or 401 when nobody authenticated).

    ``plugins`` asks the pluggy plugins (``polysocket_authenticate``): it returns a principal,
    ``None`` when none answered, and is skipped when ``plugin_names()`` is empty.
    """

    #: At most one traceback of a failing authenticator per this many seconds.
    FAILURE_LOG_INTERVAL = 60.0

    def __init__(
        self,
        origins: Sequence[str] | None,
        authenticate: Authenticator | None,
        plugins: Callable[[Handshake], object],
        plugin_names: Callable[[], list[str]],
    ) -> None:
        self.origins = OriginPolicy(origins)
        self.authenticate = authenticate
        self._plugins = plugins
        self._plugin_names = plugin_names
        self._failures_unlogged = 0
        self._last_failure_logged = -self.FAILURE_LOG_INTERVAL

    def authenticators(self) -> list[str]:
        """What authenticates, for the log: ``authenticate=`` and plugin names."""
        names = [] if self.authenticate is None else [_name_of(self.authenticate)]
        return names + [f"plugin {name!r}" for name in self._plugin_names()]

    def admit(
        self,
        request: HttpRequest,
        endpoint: str,
        origins: Sequence[str] | None,
        roles: frozenset[str],
    ) -> Admitted | HttpResponse:
        policy = self.origins if origins is None else OriginPolicy(origins)
        refused = policy.refusal(request)
        if refused is not None:
            log.debug("refused origin %r on %s", request.headers.get("origin"), request.path)
            return refused
        principal: Principal | None = None
        plugins = self._plugin_names()
        if self.authenticate is not None or plugins:
            handshake = Handshake.of(request, endpoint)
            try:
                principal = self._principal(handshake, bool(plugins))
            except Refused as refusal:
                return _answer(refusal.status, refusal.text.rstrip("\n") + "\n", refusal.headers)
            except Exception:
                self._log_failure(request)
                return _answer(500, "the server could not check who you are; its log says why\n")
            if principal is None:
                log.debug("refused unauthenticated handshake on %s", request.path)
                return _answer(
                    401,
                    f"authentication required for {endpoint!r}: the server accepted no"
                    " credentials in this handshake (bearer tokens go in Authorization:"
                    " Bearer TOKEN, or ?access_token=TOKEN from a browser)\n",
                    {"WWW-Authenticate": 'Bearer realm="polysocket"'},
                )
        if roles and (principal is None or not roles & principal.roles):
            wanted = ", ".join(sorted(roles))
            if principal is None:
                return _answer(
                    401,
                    f"endpoint {endpoint!r} needs one of the roles {wanted}, and this server"
                    " authenticates nobody: start it with --tokens FILE or authenticate=\n",
                    {"WWW-Authenticate": 'Bearer realm="polysocket"'},
                )
            return _answer(
                403, f"{principal.name!r} lacks the role this endpoint needs (one of {wanted})\n"
            )
        return Admitted(principal)

    def _principal(self, handshake: Handshake, ask_plugins: bool) -> Principal | None:
        found: object = None
        if self.authenticate is not None:
            found = self.authenticate(handshake)
        if found is None and ask_plugins:  # the callable first, then the plugins
            found = self._plugins(handshake)
        if found is not None and not isinstance(found, Principal):
            raise TypeError(
                f"an authenticator returned {found!r}: return a polysocket.auth.Principal to"
                " accept, None to refuse with 401, or raise polysocket.auth.Refused"
            )
        return found

    def _log_failure(self, request: HttpRequest) -> None:
        # An attacker can make a buggy authenticator fail on every handshake: the log gets
        # one traceback per interval and a count of the ones left out, not one per attempt.
        now = time.monotonic()
        if now - self._last_failure_logged < self.FAILURE_LOG_INTERVAL:
            self._failures_unlogged += 1
            return
        skipped, self._failures_unlogged = self._failures_unlogged, 0
        self._last_failure_logged = now
        log.error(
            "the authenticator failed on a handshake for %s; answered 500%s:\n%s",
            request.path,
            f" ({skipped} more such failure(s) since the last report)" if skipped else "",
            traceback.format_exc().rstrip(),
        )


def _name_of(authenticate: object) -> str:
    return getattr(authenticate, "__qualname__", None) or type(authenticate).__name__


def _answer(status: int, text: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, text.encode(), "text/plain; charset=utf-8", dict(headers or {}))


# -- bearer tokens --------------------------------------------------------------------------


def parse_tokens(text: str, source: str) -> dict[str, Principal]:
    """Token lines ``TOKEN NAME [ROLE,ROLE...]`` -> principals by token. Blank lines and
    lines starting with ``#`` are skipped; in ``$POLYSOCKET_TOKENS`` entries may also be
    separated by ``;``. Raise :class:`AccessConfigError` naming ``source`` and the line
    (never the token)."""
    tokens: dict[str, Principal] = {}
    lines = text.replace(";", "\n").splitlines() if source.startswith("$") else text.splitlines()
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source}, entry {number}" if source.startswith("$") else f"{source}:{number}"
        if len(fields) not in (2, 3):
            raise AccessConfigError(
                f"{where}: expected 'TOKEN NAME [ROLE,ROLE]', got {len(fields)} field(s)"
            )
        token, name = fields[0], fields[1]
        roles = frozenset(r for r in fields[2].split(",") if r) if len(fields) == 3 else frozenset()
        if token in tokens:
            raise AccessConfigError(f"{where}: this token is already given to another entry")
        tokens[token] = Principal(name, roles)
    return tokens


class BearerTokens:
    """An authenticator: the token of ``Authorization: Bearer TOKEN``, else of the
    ``access_token`` query parameter, looked up in ``tokens`` in constant time per entry."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        if not tokens:
            raise AccessConfigError("no bearer tokens given: add lines 'TOKEN NAME [ROLES]'")
        self._tokens = [(token.encode(), principal) for token, principal in tokens.items()]

    def __len__(self) -> int:
        return len(self._tokens)

    def __call__(self, handshake: Handshake) -> Principal | None:
        presented = _presented_token(handshake)
        if presented is None:
            return None
        given = presented.encode()
        found = None
        for token, principal in self._tokens:  # every entry, so timing tells nothing
            if hmac.compare_digest(token, given):
                found = principal
        return found


def _presented_token(handshake: Handshake) -> str | None:
    scheme, _, credentials = handshake.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return handshake.query.get(TOKEN_PARAMETER) or None


def bearer_tokens(
    path: str | os.PathLike[str] | None = None,
    *,
    env: str | None = TOKENS_ENV,
    environ: Mapping[str, str] | None = None,
) -> BearerTokens:
    """The built-in authenticator: tokens from the file ``path`` and/or the environment
    variable ``env`` (both when both are given), read once, now. Raise
    :class:`AccessConfigError` when neither has a token or a line is malformed."""
    environ = os.environ if environ is None else environ
    tokens: dict[str, Principal] = {}
    sources = []
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessConfigError(f"cannot read the token file {path}: {exc}") from None
        tokens.update(parse_tokens(text, str(path)))
        sources.append(str(path))
    if env is not None and environ.get(env, "").strip():
        from_env = parse_tokens(environ[env], f"${env}")
        if set(from_env) & set(tokens):
            raise AccessConfigError(f"${env} repeats a token of {path}; give each token once")
        tokens.update(from_env)
        sources.append(f"${env}")
    if not tokens:
        where = " or ".join(sources) or (f"${env}" if env else "nowhere")
        raise AccessConfigError(
            f"no bearer tokens found in {where}: write lines 'TOKEN NAME [ROLE,ROLE]'"
        )
    return BearerTokens(tokens)
