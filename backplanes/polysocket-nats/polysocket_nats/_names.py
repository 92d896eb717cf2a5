"""Backplane URLs and channel names, in NATS's terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from polysocket.errors import BackplaneError

#: The port of a server given without one (NATS's own default).
DEFAULT_PORT = 4222
SCHEMES = frozenset({"nats", "tls"})

#: Characters a channel keeps as they are in its subject (beyond letters, digits and ``_-~``,
#: which ``quote`` always keeps). Everything else is percent-encoded: whitespace, ``.``, ``*``
#: and ``>`` (NATS's token separator and wildcards), ``%`` itself, and any non-ASCII.
_KEPT = ":/@=+,;!&"


@dataclass(frozen=True)
class NatsURL:
    """A parsed ``nats://[user:password@]host[:port][,host2[:port2]...]`` URL (or ``tls://``).

    ``servers`` are the servers' URLs without credentials; the credentials are kept apart, so
    that nothing built from a server URL can show them. A user name without a password is a
    token (``nats://TOKEN@host``), as NATS's own tools read it."""

    scheme: str
    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The URL fit for messages and logs: the servers, never a password or token."""
        hosts = ",".join(server.partition("://")[2] for server in self.servers)
        user = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme}://{user}{hosts}"


def parse_url(url: str) -> NatsURL:
    """Parse a backplane URL; :class:`BackplaneError` (without the credentials) when it is not
    one this backplane takes."""
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    credentials, at, hosts_part = rest.rpartition("@")
    shown = f"{scheme}://{hosts_part}" if at else url
    if not separator or scheme not in SCHEMES:
        raise BackplaneError(
            f"nats backplane: {shown!r} is not a NATS URL; write"
            " nats://[user:password@]host[:port][,host2[:port2]...] (tls:// for TLS)"
        )
    hosts_part, _, tail = hosts_part.partition("/")
    if tail or "?" in hosts_part or "#" in hosts_part:
        raise BackplaneError(
            f"nats backplane: {shown!r}: a NATS URL has no path, query or fragment"
            " (the channel names come from the cluster, not the URL)"
        )
    servers = []
    for host in hosts_part.split(","):
        servers.append(f"{scheme}://{_host_port(host.strip(), shown)}")
    user = password = token = None
    if at:
        name, colon, secret = credentials.partition(":")
        if colon:
            user, password = unquote(name), unquote(secret)
        else:
            token = unquote(name)
    return NatsURL(scheme, tuple(servers), user, password, token)


def _host_port(host: str, shown: str) -> str:
    if not host:
        raise BackplaneError(f"nats backplane: {shown!r} names no server (an empty host)")
    if host.startswith("["):  # an IPv6 literal: [::1]:4222
        address, bracket, port_part = host.partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            raise BackplaneError(f"nats backplane: {shown!r}: {host!r} is not [ipv6]:port")
        address, port = address + "]", port_part[1:]
    else:
        address, _, port = host.partition(":")
    if not port:
        port = str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BackplaneError(
            f"nats backplane: {shown!r}: the port of {host!r} is not a number from 1 to 65535"
        )
    return f"{address}:{int(port)}"


def subject_of(channel: str) -> str:
    """The NATS subject of a channel: one token, reversibly percent-encoded, so that any
    channel name (spaces, ``.``, ``*``, ``>``, any Unicode) is a literal subject that no other
    channel's subject matches. Readable names stay as they are (``chat:all``)."""
    if not channel:
        raise BackplaneError("nats backplane: a channel name cannot be empty")
    return quote(channel, safe=_KEPT).replace(".", "%2E")


def channel_of(subject: str) -> str:
    """The channel a subject made by :func:`subject_of` stands for."""
    return unquote(subject, errors="strict")
