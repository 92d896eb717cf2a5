"""Listening sockets for engines that bind their own."""

from __future__ import annotations

import errno
import os
import socket

__all__ = ["bind_sockets"]


def bind_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host``, all on the same port.

    ``loop.create_server(host, 0)`` would give each address (127.0.0.1 and ::1 for
    "localhost") its own ephemeral port; ``Server.port`` must be the one port of them all.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    error: OSError | None = None
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            if sockets and port == 0:  # the other addresses on the port the first one got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            try:
                if os.name != "nt":  # as asyncio does: rebind at once after close()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(128)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    error = exc  # no IPv6 on this host: serve the other addresses
                    continue
                raise
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise error or OSError(f"cannot listen on {host}:{port}")
    return sockets
