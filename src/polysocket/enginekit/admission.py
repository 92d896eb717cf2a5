"""Admission on the engine boundary: how long a connection may take to say what it wants,
how large its request head may be, and what accepting does when the process is out of file
descriptors. The same on every engine; each engine uses what its library does not do.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from .sockets import RESOURCE_ERRNOS

__all__ = [
    "ACCEPT_RETRY_DELAY",
    "LIBRARY_MAX_HEADER_LINES",
    "MAX_HEADER_LINES",
    "MAX_HEAD_SIZE",
    "MAX_LINE_SIZE",
    "AcceptErrorFilter",
    "HandshakeDeadline",
    "accept_connections",
    "install_accept_error_filter",
]

log = logging.getLogger("polysocket.enginekit.admission")

#: Header lines a request may have; the core answers more with 431 (every engine).
MAX_HEADER_LINES = 128
#: The count to give a library that refuses too many header lines itself (aiohttp, websockets):
#: above :data:`MAX_HEADER_LINES`, so that the core's 431 answers a request with a few too many;
#: bounded, so that a library's own limit (its refusal) still holds the head's memory:
#: at most this many lines of :data:`MAX_LINE_SIZE`.
LIBRARY_MAX_HEADER_LINES = 2 * MAX_HEADER_LINES
#: Longest request line or header line, in bytes (aiohttp's and websockets' own ~8 KiB).
MAX_LINE_SIZE = 8190
#: Longest request head (request line, header lines, blank line), where the library lets
#: an engine set it.
MAX_HEAD_SIZE = 64 * 1024

#: Seconds an accept loop pauses after running out of descriptors (asyncio's own delay).
ACCEPT_RETRY_DELAY = 1.0
#: An out-of-descriptors episode ends when accepting has not failed for this long.
EPISODE_GAP = 10.0
#: What asyncio's own accept loop reports through the loop's exception handler.
ASYNCIO_ACCEPT_MESSAGE = "socket.accept() out of system resource"


class HandshakeDeadline:
    """Drops (aborts) a connection whose opening handshake, or plain HTTP request, is not done
    ``timeout`` seconds after it was accepted.

    Start it when the connection is accepted; ``restart()`` after each plain HTTP answer on a
    keep-alive connection (the next request, and the idle time before it, get ``timeout``
    again); ``done()`` once the handshake is complete. Idempotent; never raises.
    """

    def __init__(self, transport: asyncio.BaseTransport, timeout: float) -> None:
        self._transport = transport
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self.restart()

    def restart(self) -> None:
        self.done()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._expire)

    def done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def running(self) -> bool:
        return self._timer is not None

    def _expire(self) -> None:
        self._timer = None
        if not self._transport.is_closing():
            peer = self._transport.get_extra_info("peername")
            log.debug(
                "dropping %s: no complete handshake in %s s (open_timeout)", peer, self._timeout
            )
        self._transport.abort()  # type: ignore[attr-defined]  # every asyncio transport has it


class AcceptErrorFilter:
    """A loop exception handler that turns repeated accept failures for lack of descriptors
    (asyncio's "socket.accept() out of system resource", one traceback a second per listening
    socket) into one warning per episode; everything else goes to the handler it replaced.

    An episode ends when no such failure has been reported for :data:`EPISODE_GAP` seconds;
    the next failure starts another (and logs another warning).
    """

    def __init__(
        self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ):
        self.previous = previous
        self.last_failure: float | None = None
        self.failures = 0  # in the current episode
        self.episodes = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not is_accept_resource_error(context):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.report(context.get("exception"))

    def report(self, exc: BaseException | None) -> None:
        """Count one failed accept; log a warning if it starts an episode."""
        now = time.monotonic()
        if self.last_failure is None or now - self.last_failure > EPISODE_GAP:
            if self.failures:
                log.debug("the previous episode had %d failed accepts", self.failures)
            self.failures = 0
            self.episodes += 1
            log.warning(
                "cannot accept connections: %s; new connections wait in the listen backlog and"
                " accepting is retried every %s s (logged once until it has worked for %s s)."
                " Raise the file descriptor limit (ulimit -n) or set max_connections=",
                _describe(exc),
                ACCEPT_RETRY_DELAY,
                EPISODE_GAP,
            )
        self.failures += 1
        self.last_failure = now


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})"
    return repr(exc)


def is_accept_resource_error(context: dict[str, Any]) -> bool:
    """Whether a loop exception context reports an accept that failed for lack of resources."""
    exc = context.get("exception")
    if not isinstance(exc, OSError) or exc.errno not in RESOURCE_ERRNOS:
        return False
    return context.get("message") == ASYNCIO_ACCEPT_MESSAGE or "socket" in context


def install_accept_error_filter(loop: asyncio.AbstractEventLoop) -> AcceptErrorFilter:
    """Install :class:`AcceptErrorFilter` on ``loop`` (once: a second call returns the first)."""
    current = loop.get_exception_handler()
    if isinstance(current, AcceptErrorFilter):
        return current
    installed = AcceptErrorFilter(current)
    loop.set_exception_handler(installed)
    return installed


def accept_connections(
    sock: socket.socket, on_connection: Callable[[socket.socket, Any], None]
) -> Callable[[], None]:
    """Accept connections on the listening ``sock`` from the running loop and hand each to
    ``on_connection(connection, address)``, for engines whose library's accept loop does not
    back off (tornado's retries at once, in a busy loop, when descriptors run out).

    On EMFILE and its kin it stops reading ``sock``, reports the failure as asyncio's own
    accept loop does (through the loop's exception handler, where
    :class:`AcceptErrorFilter` makes it one warning per episode) and tries again after
    :data:`ACCEPT_RETRY_DELAY`. Returns a function that stops accepting (``sock`` stays open).
    """
    loop = asyncio.get_running_loop()
    retry: asyncio.TimerHandle | None = None
    stopped = False

    def ready() -> None:
        nonlocal retry
        for _ in range(128):  # then let the loop run other callbacks
            try:
                connection, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued: take the next one
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRNOS:
                    raise  # the loop's exception handler logs it
                loop.remove_reader(sock.fileno())
                retry = loop.call_later(ACCEPT_RETRY_DELAY, resume)
                loop.call_exception_handler(
                    {"message": ASYNCIO_ACCEPT_MESSAGE, "exception": exc, "socket": sock}
                )
                return
            on_connection(connection, address)

    def resume() -> None:
        nonlocal retry
        retry = None
        if not stopped:
            loop.add_reader(sock.fileno(), ready)

    def stop() -> None:
        nonlocal stopped
        stopped = True
        if retry is not None:
            retry.cancel()
        if sock.fileno() >= 0:
            loop.remove_reader(sock.fileno())

    loop.add_reader(sock.fileno(), ready)
    return stop
