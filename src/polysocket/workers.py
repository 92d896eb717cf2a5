"""``polysocket serve --workers N``: N worker processes serving one port, and their supervisor.

Each worker is a ``polysocket serve`` of its own: a fresh interpreter started with
:mod:`subprocess` and the supervisor's own command line, plus ``--workers 1 --port PORT
--reuse-port`` (argparse keeps the last value of an option, so these win). Nothing is
inherited but the environment and the working directory: no event loop, no thread, no
handler module imported by the supervisor (it imports none), no socket. The workers bind
their listening sockets with ``SO_REUSEPORT`` (``ServerOptions.reuse_port``), so that the
kernel spreads new connections over them (Linux balances them by a hash of the client's
address and port). Where the operating system has no ``SO_REUSEPORT`` the supervisor refuses
more than one worker rather than handing one socket down to every worker: that would need
descriptor passing of its own on each system, and a load balancer in front of one process per
port does the same job (docs/scaling.md).

The supervisor itself holds the port with a socket bound with ``SO_REUSEPORT`` that never
listens (so it receives no connection): a port in use by another program is refused before
any worker starts, ``--port 0`` becomes one port for every worker, and nobody else takes the
port while a worker restarts.

It logs each worker's start and exit, and restarts a worker that exits on its own after
:data:`RESTART_DELAY` seconds, doubled for each exit within :data:`QUICK_EXIT` seconds of its
start (at most :data:`MAX_RESTART_DELAY`). A worker that exits that quickly
:data:`QUICK_EXIT_LIMIT` times in a row is broken (a bad option, a handler crashing the
interpreter), not unlucky: the supervisor stops every worker and returns 1 instead of
restarting it forever. On SIGTERM or SIGINT it sends SIGTERM to every worker (each closes
its sessions with 1001, as ``polysocket serve`` does) and waits for them
``close_timeout`` plus :data:`STOP_GRACE` seconds, then kills those left with SIGKILL; a
second signal kills them at once.

A worker watches its standard input, a pipe from the supervisor: when it ends (the supervisor
died, even by SIGKILL) the worker shuts down as on SIGTERM, instead of serving on unsupervised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from .backplane import backplane_url, is_single_process
from .cluster import cluster_name
from .errors import WebsocketError
from .plugins import registry as engines

__all__ = [
    "MAX_RESTART_DELAY",
    "QUICK_EXIT",
    "QUICK_EXIT_LIMIT",
    "RESTART_DELAY",
    "STOP_GRACE",
    "WORKER_VARIABLE",
    "Supervisor",
    "WorkersRefused",
    "check_workers",
    "run_workers",
    "watch_supervisor",
    "worker_number",
]

log = logging.getLogger("polysocket.workers")

#: Set in each worker's environment to its number, 1 to N.
WORKER_VARIABLE = "POLYSOCKET_WORKER"
#: Seconds before a worker that exited is started again (the first time).
RESTART_DELAY = 0.5
#: The longest wait before a restart.
MAX_RESTART_DELAY = 30.0
#: A worker that exits within this many seconds of its start "exited at once".
QUICK_EXIT = 5.0
#: That many exits at once in a row, and the supervisor gives up.
QUICK_EXIT_LIMIT = 5
#: Seconds the workers get beyond ``close_timeout`` to exit after SIGTERM, before SIGKILL.
STOP_GRACE = 5.0
#: How often the supervisor looks at its workers.
POLL_INTERVAL = 0.05


class WorkersRefused(WebsocketError):
    """``--workers N`` cannot run here as asked; the message says what to do instead."""


def worker_number() -> int | None:
    """This process's worker number when a supervisor started it, else ``None``."""
    value = os.environ.get(WORKER_VARIABLE, "")
    return int(value) if value.isdigit() else None


def check_workers(
    count: int, backplane: str | None, engine: str | None, cluster: str | None = None
) -> None:
    """Raise :class:`WorkersRefused` when ``count`` workers cannot share a port here with
    the backplane ``backplane`` (the ``--backplane`` value, or ``None``), the cluster name
    ``cluster`` and ``engine``, and :class:`~polysocket.errors.BackplaneError` when no
    installed backplane serves its URL."""
    if count <= 1:
        return
    url = backplane_url(backplane)
    if is_single_process(url):
        raise WorkersRefused(
            f"--workers {count} needs a backplane that links processes, and this server's is"
            f" {url} (one process): each worker would see only its own sessions, so broadcast"
            " and getSessions would miss the others'. Add --backplane redis://HOST:6379/0 (or"
            " set POLYSOCKET_BACKPLANE), or serve with --workers 1."
        )
    # What every worker would fail on at once is refused here, once: an unknown scheme, a
    # missing library, a cluster name the channels cannot carry.
    engines.backplane(url)
    try:
        cluster_name(cluster)
    except ValueError as exc:
        raise WorkersRefused(str(exc)) from None
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersRefused(
            f"--workers {count}: this operating system has no SO_REUSEPORT, so worker processes"
            " cannot share a port. Run one `polysocket serve` per port behind a load balancer"
            " (docs/scaling.md), or serve with --workers 1."
        )
    chosen = engines.get(engine)
    if "reuse_port" not in chosen.capabilities:
        able = [row.name for row in engines.statuses() if "reuse_port" in row.capabilities]
        raise WorkersRefused(
            f"--workers {count}: engine {chosen.name!r} cannot share a listening port (it lacks"
            f" the 'reuse_port' capability); engines that can: {', '.join(able) or 'none'}"
        )


def watch_supervisor() -> bool:
    """In a worker: shut down as on SIGTERM when the supervisor's pipe on standard input ends
    (the supervisor is gone). Returns whether it watches (stdin must be a pipe)."""
    try:
        is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        is_pipe = False
    if not is_pipe:
        return False

    def wait_for_the_end() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        log.warning("the supervisor is gone (its pipe closed): shutting down")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_the_end, name="polysocket-supervisor", daemon=True).start()
    return True


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    #: Exits within QUICK_EXIT of the start, in a row.
    quick_exits: int = 0
    #: When to start it again (monotonic), or None.
    restart_at: float | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Supervisor:
    """Runs ``count`` workers, each ``command + ["--port", PORT]`` with
    :data:`WORKER_VARIABLE` set, until SIGTERM/SIGINT (:meth:`run` returns 0) or until a
    worker keeps exiting at once (returns 1). ``host``/``port`` are the address the workers
    share (``port=0``: one free port for all, chosen here)."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        host: str,
        port: int,
        *,
        close_timeout: float = 10.0,
        restart_delay: float = RESTART_DELAY,
        max_restart_delay: float = MAX_RESTART_DELAY,
        quick_exit: float = QUICK_EXIT,
        quick_exit_limit: int = QUICK_EXIT_LIMIT,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        self.command = list(command)
        self.host = host
        self.port = port
        self.close_timeout = close_timeout
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.quick_exit = quick_exit
        self.quick_exit_limit = quick_exit_limit
        self.stop_grace = stop_grace
        self._workers = [_Worker(number) for number in range(1, count + 1)]
        self._signals: list[int] = []
        self._holder: socket.socket | None = None

    # -- the port ------------------------------------------------------------------------

    def hold_port(self) -> int:
        """Bind (never listen) a socket with ``SO_REUSEPORT`` on the address; return the
        port. Raises :class:`WorkersRefused` when the port is taken by a socket that does not
        share it."""
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            holder = socket.socket(family, kind, proto)
        except OSError as exc:
            raise WorkersRefused(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        try:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            holder.bind(address)
        except OSError as exc:
            holder.close()
            why = (
                "another program listens there without SO_REUSEPORT; stop it or pick another --port"
                if exc.errno == errno.EADDRINUSE
                else str(exc)
            )
            raise WorkersRefused(f"cannot listen on {self.host}:{self.port}: {why}") from exc
        self._holder = holder
        self.port = holder.getsockname()[1]
        return self.port

    # -- running -------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them (from the main thread: it handles SIGTERM
        and SIGINT meanwhile). Returns the exit status."""
        if self._holder is None:
            self.hold_port()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            log.info(
                "starting %d workers on %s:%d (pid %d supervises them)",
                len(self._workers),
                self.host,
                self.port,
                os.getpid(),
            )
            status = 1  # unless _supervise returns: a worker that cannot even be started
            try:
                for worker in self._workers:
                    self._start(worker)
                status = self._supervise()
            finally:
                self._stop()
            return status
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._holder is not None:
                self._holder.close()
                self._holder = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only noted here (logging from a signal handler can deadlock on the handler's lock):
        # the first ends _supervise, another one makes _stop kill the workers at once.
        self._signals.append(signum)

    def _start(self, worker: _Worker) -> None:
        env = dict(os.environ)
        env[WORKER_VARIABLE] = str(worker.number)
        worker.process = subprocess.Popen(
            [*self.command, "--port", str(self.port)],
            stdin=subprocess.PIPE,  # ends when this process does: the worker then stops
            env=env,
            # Ctrl-C in a terminal reaches the supervisor only, which passes it on once.
            start_new_session=True,
        )
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.number, worker.pid)

    def _supervise(self) -> int:
        """Until a signal (0) or giving up on a worker (1)."""
        while not self._signals:
            now = time.monotonic()
            for worker in self._workers:
                process = worker.process
                if process is not None and process.poll() is not None:
                    assert process.returncode is not None
                    if not self._exited(worker, process.returncode, now):
                        return 1
                elif worker.restart_at is not None and now >= worker.restart_at:
                    self._start(worker)
            time.sleep(POLL_INTERVAL)
        log.info(
            "%s: stopping every worker (SIGTERM to each)", signal.Signals(self._signals[0]).name
        )
        return 0

    def _exited(self, worker: _Worker, returncode: int, now: float) -> bool:
        """Log a worker's exit and plan its restart; False: it keeps exiting, give up."""
        lived = now - worker.started
        self._reap(worker)
        if lived < self.quick_exit:
            worker.quick_exits += 1
        else:
            worker.quick_exits = 0
        ended = _how_it_ended(returncode)
        if worker.quick_exits >= self.quick_exit_limit:
            log.error(
                "worker %d %s %.1f s after its start, the %d%s time in a row within %g s:"
                " giving up (the worker's own log lines above say why) and stopping every"
                " worker",
                worker.number,
                ended,
                lived,
                worker.quick_exits,
                _ordinal(worker.quick_exits),
                self.quick_exit,
            )
            return False
        doubled = self.restart_delay * 2 ** max(0, worker.quick_exits - 1)
        delay = min(self.max_restart_delay, doubled)
        log.warning(
            "worker %d %s after %.1f s; restarting it in %g s", worker.number, ended, lived, delay
        )
        worker.restart_at = now + delay
        return True

    def _reap(self, worker: _Worker) -> None:
        process = worker.process
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        worker.process = None

    def _stop(self) -> None:
        """SIGTERM to every live worker (for SIGINT too: a worker still importing would die
        of KeyboardInterrupt with a traceback, where SIGTERM ends it quietly); SIGKILL those
        left at the deadline."""
        live = [w for w in self._workers if w.process is not None]
        for worker in self._workers:
            worker.restart_at = None
        for worker in live:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        bound = self.close_timeout + self.stop_grace
        deadline = time.monotonic() + bound
        signals_seen = len(self._signals)
        while live:
            still = []
            for worker in live:
                assert worker.process is not None
                if worker.process.poll() is None:
                    still.append(worker)
                else:
                    log.info(
                        "worker %d (pid %d) %s",
                        worker.number,
                        worker.pid,
                        _how_it_ended(worker.process.returncode),
                    )
                    self._reap(worker)
            live = still
            if not live:
                break
            hurried = len(self._signals) > signals_seen
            if hurried or time.monotonic() >= deadline:
                why = "a second signal" if hurried else f"not exited within {bound:g} s"
                for worker in live:
                    assert worker.process is not None
                    log.warning(
                        "worker %d (pid %d) %s: killing it (SIGKILL)",
                        worker.number,
                        worker.pid,
                        why,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                    worker.process.wait()
                    self._reap(worker)
                break
            time.sleep(POLL_INTERVAL)


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def run_workers(
    argv: Sequence[str],
    count: int,
    host: str,
    port: int,
    *,
    close_timeout: float = 10.0,
) -> int:
    """Supervise ``count`` workers, each ``polysocket`` with ``argv`` (the supervisor's own
    ``serve`` command line) and ``--workers 1 --reuse-port`` added; see the module."""
    command = [sys.executable, "-m", "polysocket", *argv, "--workers", "1", "--reuse-port"]
    supervisor = Supervisor(command, count, host, port, close_timeout=close_timeout)
    supervisor.hold_port()
    return supervisor.run()
