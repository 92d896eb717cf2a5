"""Redirects on connect: one rule, followed by the core for every engine.

Engines never follow a redirect: they report every answer other than 101 as
:meth:`ConnectError.rejected`, with the answer's ``Location`` (the contract,
``Engine.connect``). ``client.open_transport`` connects again through :class:`Redirects`:

- 301, 302, 303, 307 and 308 with a ``Location`` are followed; any other answer stays the
  engine's ``ConnectError``;
- the ``Location`` is resolved against the URI that answered it (a relative one too), and
  ``http://`` becomes ``ws://``, ``https://`` ``wss://``; any other scheme is refused;
- ``wss://`` to ``ws://`` is refused: the connection would go on unencrypted;
- at most :data:`MAX_REDIRECTS` redirects (so ``MAX_REDIRECTS + 1`` requests), then a
  ``ConnectError`` that lists the chain;
- on a hop to another origin (scheme, host or port), the ``Authorization``, ``Cookie`` and
  ``Proxy-Authorization`` headers are dropped: they were meant for the first server
  (what websockets, aiohttp and tornado do too).

The caller bounds all the hops together by one ``open_timeout``.
"""

from __future__ import annotations

import dataclasses
import logging
from urllib.parse import urldefrag, urljoin, urlsplit

from .errors import ConnectError
from .transport import ClientOptions, Engine

__all__ = ["FOLLOWED", "MAX_REDIRECTS", "Redirects"]

log = logging.getLogger("polysocket.client")

#: The statuses that are followed.
FOLLOWED = frozenset({301, 302, 303, 307, 308})
#: Redirects followed on one connect (websockets', aiohttp's and requests' limit, about).
MAX_REDIRECTS = 10

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


def _origin(uri: str) -> tuple[str, str, int | None]:
    parts = urlsplit(uri)
    return parts.scheme, (parts.hostname or ""), parts.port or _DEFAULT_PORTS.get(parts.scheme)


class Redirects:
    """The redirects of one connect: the URI to connect to now, and the way there."""

    def __init__(self, uri: str, engine: Engine, options: ClientOptions) -> None:
        self.engine = engine
        #: Every URI connected to, the one the user gave first; the last is the current one.
        self.chain = [uri]
        #: The options of the current hop (credentials dropped once the origin changed).
        self.options = options

    @property
    def current(self) -> str:
        return self.chain[-1]

    def follow(self, refused: ConnectError) -> bool:
        """Whether ``refused`` (the current hop's) is a redirect to follow; if it is, its
        target becomes :attr:`current`. Raises :class:`ConnectError` for a redirect that
        must not be followed."""
        status, location = refused.status, refused.location
        if status not in FOLLOWED or location is None:
            return False
        here = self.current
        said = f"{here} redirected (HTTP {status}) to {location}"
        target, _ = urldefrag(urljoin(here, location.strip()))
        parts = urlsplit(target)
        scheme = _SCHEMES.get(parts.scheme)
        if scheme is None or not parts.hostname:
            raise ConnectError(
                f"{said}, which is not a WebSocket URI: polysocket follows redirects to"
                " ws://, wss://, http:// and https:// only; check the server's configuration",
                status=status,
                location=location,
            ) from refused
        target = parts._replace(scheme=scheme).geturl()
        if urlsplit(here).scheme == "wss" and scheme == "ws":
            raise ConnectError(
                f"{said}: refused to follow a downgrade from {here} to {target} (wss:// to"
                " ws://), which would go on unencrypted; connect to the ws:// URI yourself if"
                " that is really meant",
                status=status,
                location=location,
            ) from refused
        if len(self.chain) > MAX_REDIRECTS:
            way = " -> ".join([*self.chain, target])
            raise ConnectError(
                f"too many redirects ({MAX_REDIRECTS}) connecting to {self.chain[0]}: {way};"
                " the server redirects in a loop, or further than polysocket follows",
                status=status,
                location=location,
            ) from refused
        if scheme == "wss" and "tls" not in self.engine.capabilities:
            raise ConnectError(
                f"{said}, but engine {self.engine.name!r} cannot connect to wss:// URIs (it"
                " lacks the 'tls' capability); choose an engine that has it",
                status=status,
                location=location,
            ) from refused
        if _origin(target) != _origin(here):
            headers = {
                k: v for k, v in self.options.headers.items() if k.lower() not in _CREDENTIALS
            }
            if len(headers) != len(self.options.headers):
                self.options = dataclasses.replace(self.options, headers=headers)
        self.chain.append(target)
        log.debug("redirect %d of at most %d: %s", len(self.chain) - 1, MAX_REDIRECTS, said)
        return True
