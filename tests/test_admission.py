"""enginekit's admission helpers: the out-of-descriptors log filter and the accept loop that
backs off, with a real EMFILE (a child process with a low descriptor limit)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from polysocket.enginekit import admission
from polysocket.enginekit.admission import (
    ASYNCIO_ACCEPT_MESSAGE,
    AcceptErrorFilter,
    install_accept_error_filter,
)


def accept_failure(sock: socket.socket) -> dict[str, Any]:
    """What asyncio's own accept loop reports when accept() fails with EMFILE."""
    exc = OSError(errno.EMFILE, "Too many open files")
    return {"message": ASYNCIO_ACCEPT_MESSAGE, "exception": exc, "socket": sock}


def test_repeated_accept_failures_log_one_warning_per_episode(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.new_event_loop()
    others: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: others.append(context))
    clock = [1000.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    try:
        installed = install_accept_error_filter(loop)
        assert install_accept_error_filter(loop) is installed  # once per loop
        with socket.socket() as sock, caplog.at_level(logging.DEBUG, "polysocket"):
            for _ in range(1000):  # a flood: one failed accept a millisecond
                loop.call_exception_handler(accept_failure(sock))
                clock[0] += 0.001
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            assert "EMFILE" in warnings[0].getMessage()
            assert "ulimit -n" in warnings[0].getMessage()
            assert installed.failures == 1000 and installed.episodes == 1
            clock[0] += admission.EPISODE_GAP + 1  # quiet for a while: the next is news
            loop.call_exception_handler(accept_failure(sock))
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 2 and installed.episodes == 2
        # anything else still reaches the handler that was there before
        loop.call_exception_handler({"message": "something else", "exception": ValueError()})
        assert [c["message"] for c in others] == ["something else"]
    finally:
        loop.close()


def test_filter_without_a_previous_handler_uses_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(AcceptErrorFilter(None))
        with caplog.at_level(logging.ERROR, "asyncio"):
            loop.call_exception_handler({"message": "unrelated failure"})
        assert "unrelated failure" in caplog.text
    finally:
        loop.close()


CHILD = textwrap.dedent(
    """
    import asyncio, logging, os, resource, socket, sys
    from polysocket.enginekit import accept_connections, bind_sockets
    from polysocket.enginekit import install_accept_error_filter

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

    class Keeper(asyncio.Protocol):
        def connection_made(self, transport):
            take(transport.get_extra_info("socket"), transport)

    async def main():
        global take
        loop = asyncio.get_running_loop()
        errors = install_accept_error_filter(loop)
        [listener] = bind_sockets("127.0.0.1", 0)
        accepted, later = [], []
        starving = True

        def take(conn, closer):
            if starving:
                accepted.append(closer)  # keep it: the descriptors run out
            else:
                later.append(1)
                closer.close()

        if sys.argv[1] == "enginekit":
            stop = accept_connections(listener, lambda conn, _: take(conn, conn))
        else:  # asyncio's own accept loop, as aiohttp, websockets and picows use it
            server = await loop.create_server(Keeper, sock=listener)
            stop = server.close
        print(listener.getsockname()[1], flush=True)
        # the parent connects 30 clients; we allow only 10 more descriptors
        sys.stdin.readline()
        used = len(os.listdir("/proc/self/fd"))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 10, hard))
        await asyncio.sleep(2.5)  # out of descriptors: two or three retries, one warning
        starving = False
        for closer in accepted:
            closer.close()
        for _ in range(100):  # the next retries take the others (a batch each, closed after)
            if len(accepted) + len(later) >= 30:
                break
            await asyncio.sleep(0.05)
        stop()
        print(len(accepted), len(later), errors.failures, errors.episodes, flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("accept_loop", ["enginekit", "asyncio"])
def test_accept_loop_backs_off_on_emfile_and_recovers(accept_loop: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, accept_loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    clients = []
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        child.stdin.write("go\n")
        child.stdin.flush()
        for _ in range(30):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        out, err = child.communicate(timeout=15)
    finally:
        for client in clients:
            client.close()
        if child.poll() is None:
            child.kill()
    starved, later, failures, episodes = map(int, out.split())
    assert starved <= 12, f"accepted {starved} connections with 10 descriptors to spare"
    assert starved + later == 30, (starved, later, err)  # every client got in in the end
    # backed off: a retry a second, not a busy loop (tornado's own retried at once, forever)
    assert 1 <= failures <= 6, f"{failures} failed accepts in about 3 s"
    assert episodes == 1
    assert err.count("WARNING") == 1 and "Traceback" not in err, err
