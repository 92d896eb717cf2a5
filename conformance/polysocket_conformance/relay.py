"""A TCP relay between two peers that can turn into a black hole, and a leak check.

:class:`Relay` forwards every connection made to it to a target port, both ways, on one
thread (real sockets, no mock). ``black_hole()`` makes it swallow everything from then on,
in both directions, and keep every socket open: no FIN, no RST, nothing. That is what a
pulled cable, a dead NAT entry or a suspended peer looks like to both ends, and only a
keepalive notices it.

:class:`LeakCheck` counts threads, file descriptors and the tasks of event loops before a
test and asserts, after a short settle wait, that none are left over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterable

from .support import WAIT

#: Threads a test may leave behind: pools that keep idle workers for a while on purpose
#: (polysocket's handler threads, an event loop's default executor).
POOL_THREADS = ("polysocket-handler-", "asyncio_")


class Relay:
    """Forwards connections on ``127.0.0.1:port`` to ``127.0.0.1:target_port`` (see the
    module). ``close()`` (or the ``with`` block's end) closes every socket and the thread."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        #: Each relayed socket and the one it forwards to.
        self._partner: dict[socket.socket, socket.socket] = {}
        self._holed = threading.Event()
        self._stop = threading.Event()
        #: Bytes swallowed since black_hole(): proof that the peers kept talking into it.
        self.swallowed = 0
        self._thread = threading.Thread(target=self._run, name="keepalive-relay", daemon=True)
        self._thread.start()

    def uri(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def black_hole(self) -> None:
        """Stop forwarding, both ways, for good; the sockets stay open."""
        self._holed.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                    else:
                        self._forward(sock)
        finally:
            for sock in list(self._partner):
                sock.close()
            self._partner.clear()

    def _accept(self) -> None:
        try:
            inbound, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            outbound = socket.create_connection(self._target, timeout=WAIT)
        except OSError:
            inbound.close()
            return
        for sock, partner in ((inbound, outbound), (outbound, inbound)):
            sock.settimeout(WAIT)  # a partner that stops reading stalls the relay that long
            self._partner[sock] = partner
            self._selector.register(sock, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if self._holed.is_set():
            self.swallowed += len(data)
            if not data:  # the end goes nowhere either: the partner's socket stays open
                self._selector.unregister(sock)
            return
        partner = self._partner[sock]
        if data:
            try:
                partner.sendall(data)
                return
            except OSError:
                pass
        # One end is gone: so is the other (a relay passes the end on).
        for end in (sock, partner):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(end)
            self._partner.pop(end, None)
            end.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self._selector.close()
        self._listener.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_fds() -> int:
    """File descriptors open in this process (Linux: /proc; elsewhere: probed one by one)."""
    with contextlib.suppress(FileNotFoundError):
        return len(os.listdir("/proc/self/fd")) - 1  # listdir's own
    count = 0
    for fd in range(4096):
        try:
            os.fstat(fd)
        except OSError:
            continue
        count += 1
    return count


def loop_tasks(loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[object]]:
    """The tasks of ``loop``, which runs on another thread (but the asking one)."""

    async def tasks() -> set[asyncio.Task[object]]:
        return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}

    return asyncio.run_coroutine_threadsafe(tasks(), loop).result(WAIT)


class LeakCheck:
    """What exists now: ``assert_none_left()`` later fails on any thread (but the pools'),
    file descriptor or task of ``loops`` added meanwhile and still there after ``settle``."""

    def __init__(self, loops: Iterable[asyncio.AbstractEventLoop] = ()) -> None:
        self._loops = list(loops)
        self._threads = set(threading.enumerate())
        self._fds = open_fds()
        self._tasks = [loop_tasks(loop) for loop in self._loops]

    def _left(self) -> list[str]:
        left = [
            f"thread {t.name!r}"
            for t in set(threading.enumerate()) - self._threads
            if not t.name.startswith(POOL_THREADS)
        ]
        fds = open_fds()
        if fds > self._fds:
            left.append(f"{fds - self._fds} file descriptor(s)")
        for loop, before in zip(self._loops, self._tasks, strict=True):
            left += [f"task {task!r}" for task in loop_tasks(loop) - before if not task.done()]
        return left

    def assert_none_left(self, settle: float = 3.0) -> None:
        deadline = time.monotonic() + settle
        while (left := self._left()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"left behind: {left}"
