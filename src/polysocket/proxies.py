"""Client connections through HTTP and SOCKS proxies, the same on every engine.

Which proxy (:func:`select_proxy`), from the ``proxy`` client option:

- ``True`` (the default): from the environment, the way websockets, curl and aiohttp's
  ``trust_env`` read it (``urllib.request.getproxies``): for ``wss://`` the ``wss_proxy`` then
  ``https_proxy`` variable, for ``ws://`` ``ws_proxy`` then ``http_proxy``; after them
  ``socks_proxy`` and ``all_proxy``. A host that ``no_proxy`` lists is reached directly
  (``urllib.request.proxy_bypass``). A variable without a scheme is an ``http://`` proxy
  (``socks_proxy``: SOCKS5); ``socks://`` and ``socks_proxy=http://host:port`` (how some
  desktops write it) are SOCKS5 with DNS at the proxy (``socks5h``), as websockets reads them.
- ``None`` or ``False``: direct.
- a URL: that proxy, whatever the environment says.

Schemes: ``http://`` (HTTP CONNECT; the proxy resolves the name), ``socks5://`` (the name is
resolved here), ``socks5h://`` (resolved by the proxy), ``socks4://`` (resolved here, IPv4
only) and ``socks4a://`` (resolved by the proxy); credentials as ``user:password@`` in the URL
(percent-encoded where needed). Without a port, ``http://`` means 80 and SOCKS 1080.

``https://`` proxies (TLS to the proxy itself) are refused with ``UnsupportedOptionError``:
the core hands engines one plain connected socket, and a TLS session to the proxy cannot be
handed over as a socket (``wss://`` through it would be TLS inside TLS, which asyncio's
transports cannot layer on a socket). Use the proxy's ``http://`` port instead: a ``wss://``
connection through ``http://`` CONNECT is still encrypted end to end, the proxy only sees
the host name and port. An ``https://`` proxy from the environment is refused the same way,
naming the variable (``proxy=None`` or ``proxy="http://..."`` overrides it).

How: the core opens the tunnel here with python-socks (imported only when a proxy is used)
and calls ``engine.connect`` with ``ClientOptions.sock`` set to the connected socket; the
engine (capability ``"proxy"``) runs the WebSocket handshake over it, after TLS for
``wss://`` with the URI's host as ``server_hostname``. The whole of it, tunnel included, is
bounded by ``open_timeout``. An explicit proxy URL on an engine without ``"proxy"`` is refused
when the options are checked; a proxy from the environment on such an engine is logged once
(a warning) and the engine connects directly, so that an engine without sockets (the
in-memory one) keeps working where a proxy is configured for everything else.

Errors are :class:`ConnectError` naming the proxy (``scheme://host:port``, never the
credentials) and where it came from, and saying what to check: a proxy that is down, one that
refuses the credentials (HTTP 407, SOCKS authentication), one that cannot reach the server.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .errors import ConnectError, UnsupportedOptionError

if TYPE_CHECKING:
    from .transport import ClientOptions, Engine, Transport

__all__ = ["SCHEMES", "ProxyURL", "check_option", "connect", "parse_proxy", "select_proxy"]

log = logging.getLogger("polysocket.proxies")

#: Supported proxy schemes and their default ports.
SCHEMES: Mapping[str, int] = {
    "http": 80,
    "socks5": 1080,
    "socks5h": 1080,
    "socks4": 1080,
    "socks4a": 1080,
}
_SUPPORTED = "http://, socks5://, socks5h://, socks4:// or socks4a://"
#: The environment variables (getproxies' keys) asked, in order, per WebSocket scheme.
_ENVIRONMENT = {"ws": ("ws", "http", "socks", "all"), "wss": ("wss", "https", "socks", "all")}
#: Where urllib reads proxies from the environment only (not macOS' or Windows' settings).
_ENVIRONMENT_ONLY = urllib.request.getproxies is urllib.request.getproxies_environment
#: Engines already warned that they connect directly despite a proxy in the environment.
_warned: set[str] = set()


@functools.cache
def _variables(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The variables urllib reads for ``keys`` (``http`` -> ``http_proxy``, ``HTTP_PROXY``)."""
    return tuple(name for key in keys for name in (f"{key}_proxy", f"{key.upper()}_PROXY"))


def _any_set(names: tuple[str, ...]) -> bool:
    """Whether any of ``names`` is in the environment. ``name in os.environ`` costs 1.5 us
    (an encode and a KeyError each time): ask ``os._Environ``'s own dict where it has one."""
    environ = os.environ
    data, encode = getattr(environ, "_data", None), getattr(environ, "encodekey", None)
    if not isinstance(data, dict) or encode is None:
        return any(name in environ for name in names)
    return any(key in data for key in _encoded(names, encode))


@functools.cache
def _encoded(names: tuple[str, ...], encode: Any) -> tuple[Any, ...]:
    return tuple(encode(name) for name in names)


@dataclass(frozen=True)
class ProxyURL:
    """A parsed proxy URL; ``str()`` is ``scheme://host:port``, without the credentials."""

    scheme: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    #: Where it came from, for error messages: ``"proxy="`` or ``"$https_proxy"``.
    source: str = "proxy="

    @property
    def remote_dns(self) -> bool:
        """Whether the proxy resolves the server's name (``socks5h``, ``socks4a``, HTTP)."""
        return self.scheme in ("socks5h", "socks4a", "http")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def without_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part, fit for messages and logs."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def parse_proxy(url: str, source: str = "proxy=") -> ProxyURL:
    """Parse a proxy URL; ``UnsupportedOptionError`` for a scheme it cannot take (``https``
    included), ``ValueError`` for a malformed one. Messages never show the credentials."""
    shown = without_credentials(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise UnsupportedOptionError(
            f"{source} {shown!r}: https:// proxies (TLS to the proxy) are not supported;"
            " use the proxy's http:// port (a wss:// connection through HTTP CONNECT stays"
            " encrypted end to end) or a SOCKS proxy (socks5h://)"
        )
    if scheme not in SCHEMES:
        raise UnsupportedOptionError(
            f"{source} {shown!r}: unsupported proxy scheme {scheme or 'none'!r}; use {_SUPPORTED}"
        )
    try:
        port = parts.port or SCHEMES[scheme]
    except ValueError:
        raise ValueError(f"{source} {shown!r}: the port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{source} {shown!r}: the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{source} {shown!r}: a proxy URL has no path, query or fragment")
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if username is not None and password is None:
        raise ValueError(
            f"{source} {shown!r}: a user name without a password; write user:password@host"
        )
    return ProxyURL(scheme, parts.hostname, port, username, password, source)


def check_option(value: Any) -> str | bool | None:
    """The ``proxy`` option, checked: a URL string, ``True``, or ``None`` (``False`` too)."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    if not isinstance(value, str):
        raise TypeError(
            "proxy must be a proxy URL (http://, socks5://, socks5h://...), True (from the"
            f" environment: https_proxy, http_proxy, all_proxy, no_proxy) or None (direct),"
            f" not {type(value).__name__}"
        )
    parse_proxy(value)
    return value


def select_proxy(uri: str, option: str | bool | None, engine: Engine) -> ProxyURL | None:
    """The proxy for ``uri`` (``ws://``/``wss://``) under the ``proxy`` option, or ``None``:
    direct. Reads the environment on every call (it is cheap, and it may change)."""
    if option is None or option is False:
        return None
    if isinstance(option, str):
        return parse_proxy(option)
    keys = _ENVIRONMENT.get(uri.partition(":")[0].lower(), ())
    if _ENVIRONMENT_ONLY and not _any_set(_variables(keys)):
        return None  # the usual case; getproxies() takes some 90 us, scanning os.environ twice
    parts = urlsplit(uri)
    proxies = urllib.request.getproxies()
    for key in keys:
        value = proxies.get(key)
        if value:
            break
    else:
        return None
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    if urllib.request.proxy_bypass(f"{host}:{parts.port or (443 if secure else 80)}"):
        return None
    if "://" not in value:
        value = ("socks5h://" if key == "socks" else "http://") + value
    elif value.startswith("socks://") or (key == "socks" and value.startswith("http://")):
        value = "socks5h://" + value.partition("://")[2]
    try:
        proxy = parse_proxy(value, f"${key}_proxy")
    except ValueError as exc:
        raise ConnectError(f"{exc}; fix the variable, or pass proxy=None or a proxy URL") from None
    if "proxy" not in engine.capabilities:
        if engine.name not in _warned:
            _warned.add(engine.name)
            log.warning(
                "engine %r cannot connect through proxies (it lacks the 'proxy' capability):"
                " it connects directly, not through %s from %s; pass proxy=None to say so,"
                " or pick an engine with 'proxy' (see `polysocket engines`)",
                engine.name,
                proxy,
                proxy.source,
            )
        return None
    return proxy


async def connect(proxy: ProxyURL, engine: Engine, uri: str, options: ClientOptions) -> Transport:
    """Open the tunnel to ``uri``'s host and port through ``proxy``, then let ``engine``
    connect over it; the socket is closed if the engine fails."""
    sock = await _tunnel(proxy, uri, options.open_timeout)
    try:
        return await engine.connect(uri, dataclasses.replace(options, sock=sock))
    except BaseException:
        sock.close()  # the engine's transport may own it already: closing twice is harmless
        raise


async def _tunnel(proxy: ProxyURL, uri: str, timeout: float) -> socket.socket:
    try:
        from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
        from python_socks.async_.asyncio import Proxy
    except ImportError as exc:
        raise ConnectError(
            f"connecting through the proxy {proxy} ({proxy.source}) needs python-socks"
            f" ({exc}): pip install 'python-socks[asyncio]'"
        ) from None

    parts = urlsplit(uri)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    kind = {"http": ProxyType.HTTP, "socks4": ProxyType.SOCKS4, "socks4a": ProxyType.SOCKS4}
    tunnel = Proxy(
        kind.get(proxy.scheme, ProxyType.SOCKS5),
        proxy.host,
        proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=proxy.remote_dns,  # python-socks' own default for SOCKS5 is True: always say
    )
    named = f"the proxy {proxy} ({proxy.source})"
    # CONNECT's authority takes an IPv6 address in brackets; SOCKS takes the bare address
    dest = f"[{host}]" if proxy.scheme == "http" and ":" in host else host
    try:
        return await tunnel.connect(dest, port, timeout=timeout)
    except ProxyConnectionError as exc:
        # python-socks' text repeats the address; the errno's own words do not
        errno = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
        reason = os.strerror(errno) if errno is not None else f"{exc.strerror or exc}"
        raise ConnectError(
            f"cannot reach {named}: {reason}; check that the proxy is running and that its"
            " host and port are right"
        ) from exc
    except ProxyTimeoutError as exc:
        raise ConnectError(
            f"{named} did not open a tunnel to {host}:{port} within {timeout} s (open_timeout);"
            " check that it is a working proxy of that scheme, or raise open_timeout="
        ) from exc
    except ProxyError as exc:
        raise _refusal(proxy, named, host, port, exc) from exc
    except (EOFError, OSError, ValueError) as exc:  # python-socks < 2.5: its read errors bare
        raise _refusal(proxy, named, host, port, exc) from exc


def _refusal(proxy: ProxyURL, named: str, host: str, port: int, exc: Exception) -> ConnectError:
    """The ``ConnectError`` for a proxy that answered, but not with a tunnel."""
    detail = str(exc) or type(exc).__name__
    code = getattr(exc, "error_code", None)
    if proxy.scheme == "http" and code == 407:
        fix = (
            "check the user name and password in the proxy URL"
            if proxy.username is not None
            else "it asks for credentials: put them in the proxy URL (http://USER:PASSWORD@host:port)"
        )
        return ConnectError(f"{named} refused the connection with HTTP {detail}; {fix}")
    if proxy.scheme == "http" and code is not None:
        return ConnectError(
            f"{named} answered the CONNECT to {host}:{port} with HTTP {detail}; check that"
            " the server is up and that the proxy may connect to it (the proxy's logs say why)"
        )
    if code is not None:  # a SOCKS reply code: the proxy could not reach the server
        return ConnectError(
            f"{named} could not open a connection to {host}:{port}: {detail}; check that the"
            " server is up and that the proxy may reach it"
        )
    if proxy.scheme != "http" and ("auth" in detail.lower() or proxy.username is not None):
        # (an HTTP proxy says 407; a SOCKS one that ends its handshake at once on credentials
        # we sent is refusing them, as pproxy does)
        return ConnectError(
            f"{named} refused the {proxy.scheme.upper()} handshake ({detail}); check the user"
            " name and password in the proxy URL, and that it is a proxy of that scheme"
        )
    return ConnectError(
        f"{named} closed the connection without opening the tunnel to {host}:{port}"
        f" ({detail}); check that the server is up and that the proxy may reach it, that it"
        f" is a {proxy.scheme.upper()} proxy, and whether it wants credentials"
        " (user:password@ in the URL)"
    )
