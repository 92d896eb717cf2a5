"""pytest plugin of the backplane suites: their options, and a broker run as a private process.

The link suite (:mod:`polysocket_conformance.backplane_link_suite`) tests one backplane's
links against the contract of :mod:`polysocket.backplane`::

    pytest --pyargs polysocket_conformance.backplane_link_suite \\
        --polysocket-backplane-link='nats://user:pw@127.0.0.1:{port}' \\
        --polysocket-broker-command='nats-server -a 127.0.0.1 -p {port} --user user --pass pw'

``{port}`` in both is a free port picked per broker: the suite starts its own brokers (one
per test module, and one more for each test that kills its broker), never touching a shared
one. Without ``--polysocket-broker-command`` the URL must name a running broker (no
``{port}``) and the tests that need to start, stop or miss a broker skip. Without
``--polysocket-backplane-link`` the suite tests ``memory://``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from typing import IO, Any

import pytest

#: How long a broker may take to listen once started.
BROKER_START_TIMEOUT = 15.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("polysocket-backplane", "polysocket backplane suites")
    _add_option(
        group,
        "--polysocket-backplane-link",
        dest="polysocket_backplane_link",
        default=None,
        metavar="URL_TEMPLATE",
        help="backplane URL the link suite (polysocket_conformance.backplane_link_suite)"
        " connects to; {port} is the port of the broker it starts with"
        " --polysocket-broker-command. Default: memory://",
    )
    _add_option(
        group,
        "--polysocket-broker-command",
        dest="polysocket_broker_command",
        default=None,
        metavar="CMD",
        help="command that runs a broker in the foreground on port {port}"
        " (e.g. 'nats-server -a 127.0.0.1 -p {port}', 'redis-server --port {port}"
        ' --save ""\'): the backplane suites start private brokers with it',
    )


def _add_option(group: Any, name: str, **options: Any) -> None:
    """Add an option unless another polysocket plugin (the cluster suite) already did: both
    suites read the same broker command."""
    try:
        group.addoption(name, **options)
    except ValueError as error:
        if "already added" not in str(error):
            raise


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class BrokerProcess:
    """A broker started from a command template (``{port}`` filled in), in the foreground of
    a process of its own; :meth:`kill` is SIGKILL (a crash), :meth:`stop` a clean stop."""

    def __init__(self, command_template: str, port: int | None = None) -> None:
        self.command_template = command_template
        self.port = port if port is not None else free_port()
        self.command = shlex.split(command_template.format(port=self.port))
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"<broker {' '.join(self.command)!r}>"

    def start(self, timeout: float = BROKER_START_TIMEOUT) -> BrokerProcess:
        """Start it and return once it accepts TCP connections on its port."""
        # Open while the broker runs (its output, for errors); closed by close().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise RuntimeError(
                f"cannot start the broker {self.command[0]!r}: no such program. Install it"
                " (Debian: apt-get install nats-server / redis-server) or pass another"
                " --polysocket-broker-command"
            ) from None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self!r} exited with {self._process.returncode} before listening on"
                    f" port {self.port}: {self.output()[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self!r} is not listening on {self.port} after {timeout} s")
            time.sleep(0.05)

    def output(self) -> str:
        """What the broker wrote so far (stdout and stderr)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone: no goodbye to its clients."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        self._signal(signal.SIGTERM, grace=5.0)

    def _signal(self, sig: signal.Signals, grace: float = 5.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(grace)

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
