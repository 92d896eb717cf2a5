"""Listening sockets for engines that bind their own."""

from __future__ import annotations

import errno
import os
import socket
import time

from polysocket.transport import DEFAULT_BACKLOG

__all__ = ["ListeningSocket", "bind_sockets"]

#: Errors of accept() that mean "out of descriptors or memory" (a retry at once fails again).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds accept() says "nothing to accept" after such an error; under the accept loops'
#: own retry delay (1 s), so that their retry does try again.
ACCEPT_PAUSE = 0.5


class ListeningSocket(socket.socket):
    """A listening socket whose ``accept()`` rests for :data:`ACCEPT_PAUSE` after failing for
    lack of descriptors, raising ``BlockingIOError`` meanwhile, as if nothing were waiting.

    Why: an accept loop that keeps calling ``accept()`` after EMFILE fails once per queued
    connection, every time. asyncio before the fix of CPython gh-151615 (3.11 here) goes on
    after its first EMFILE for the rest of its batch, scheduling one retry per failure, so the
    retries multiply (thousands a second, each reported). With this socket every accept loop
    (asyncio's, enginekit's) fails once per retry and stops at the ``BlockingIOError``.
    """

    _resting_until = 0.0
    #: What ``bind_sockets`` listened with; see :meth:`listen`.
    backlog = 0

    def accept(self) -> tuple[socket.socket, object]:
        if self._resting_until and time.monotonic() < self._resting_until:
            raise BlockingIOError(errno.EAGAIN, "accepting paused: out of file descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self._resting_until = time.monotonic() + ACCEPT_PAUSE
            raise

    def listen(self, backlog: int = DEFAULT_BACKLOG) -> None:
        """Listen with at least the backlog ``bind_sockets`` was given: asyncio's
        ``create_server(sock=...)`` calls ``listen(100)`` again on the socket it is handed,
        which would undo the server's ``backlog`` option on every engine built on it."""
        self.backlog = max(backlog, self.backlog)
        super().listen(self.backlog)


def bind_sockets(
    host: str | None, port: int, backlog: int = DEFAULT_BACKLOG, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Listening sockets for every address of ``host``, all on the same port, with a listen
    queue of ``backlog`` connections (``ServerOptions.backlog``). With ``reuse_port``
    (``ServerOptions.reuse_port``) each is bound with ``SO_REUSEPORT``: other sockets bound so
    by the same user share the port, and the kernel spreads new connections over them.

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
            sock = ListeningSocket(family, kind, proto)
            try:
                if os.name != "nt":  # as asyncio does: rebind at once after close()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:  # options.server_options refused it where the OS lacks it
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    error = exc  # no IPv6 on this host: serve the other addresses
                    continue
                raise
            sockets.append(sock)
    except BaseException:
        for opened in sockets:
            opened.close()
        raise
    if not sockets:
        raise error or OSError(f"cannot listen on {host}:{port}")
    return sockets
