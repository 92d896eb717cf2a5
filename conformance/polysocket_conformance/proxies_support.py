"""A real proxy for the proxy tests: ``pproxy`` (PyPI), one subprocess serving HTTP CONNECT
and SOCKS on several ports, with and without credentials.

Two ways a test tells a connection the proxy carried from one that went around it:

- the host name :data:`ONLY_VIA_PROXY` (under ``.invalid``, which never resolves) resolves to
  127.0.0.1 inside the proxy process only: a client that is handed a tunnel but connects by
  itself anyway cannot reach ``ws://proxied.invalid:PORT/`` (HTTP CONNECT and ``socks5h``
  let the proxy resolve the name);
- the verbose log has a line ``<protocol> <client> -> <host>:<port>`` for every tunnel it is
  asked to open, written before it connects: :meth:`ProxyPeer.tunnels_to` counts them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .peer_processes import PeerUnavailable

START_TIMEOUT = 15.0
#: A name only the proxy resolves (to 127.0.0.1).
ONLY_VIA_PROXY = "proxied.invalid"
#: The credentials of the listeners that ask for them.
USER, PASSWORD = "polysocket", "s3cret"
#: Listener name -> pproxy's scheme and whether it asks for credentials.
LISTENERS = {
    "http": ("http", False),
    "http-auth": ("http", True),
    "socks5": ("socks5", False),
    "socks5-auth": ("socks5", True),
    "socks4": ("socks4", False),
}

# pproxy 2.7 calls asyncio.get_event_loop() outside a loop, which fails under uvloop (which it
# installs whenever it can import it) and on Python 3.14: run it on a plain loop set first.
# asyncio resolves with socket.getaddrinfo, looked up at each call: ONLY_VIA_PROXY goes here.
_LAUNCHER = f"""
import asyncio, socket, sys
sys.modules["uvloop"] = None
asyncio.set_event_loop(asyncio.new_event_loop())
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    return _getaddrinfo("127.0.0.1" if host == {ONLY_VIA_PROXY!r} else host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
from pproxy.server import main
sys.argv[0] = "pproxy"
main()
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    try:
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class ProxyPeer:
    """A running pproxy: ``url(name)`` is the proxy URL of one of :data:`LISTENERS`."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path

    def url(self, name: str, scheme: str | None = None, credentials: str | None = None) -> str:
        """``scheme://[credentials@]127.0.0.1:PORT`` of listener ``name``; ``credentials``
        defaults to the right ones on listeners that ask for them (``""``: none)."""
        own, auth = LISTENERS[name]
        if credentials is None:
            credentials = f"{USER}:{PASSWORD}" if auth else ""
        userinfo = f"{credentials}@" if credentials else ""
        return f"{scheme or own}://{userinfo}127.0.0.1:{self.ports[name]}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tunnels_to(self, host: str, port: int) -> int:
        """How many tunnels to ``host:port`` the proxy was asked for so far."""
        return len(re.findall(rf" -> {re.escape(host)}:{port}\b", self.log()))

    def wait_tunnels_to(self, host: str, port: int, count: int, timeout: float = 5.0) -> int:
        """:meth:`tunnels_to`, waiting up to ``timeout`` for it to reach ``count``."""
        deadline = time.monotonic() + timeout
        while (seen := self.tunnels_to(host, port)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return seen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_proxy(log_dir: str | os.PathLike[str] | None = None, attempts: int = 3) -> ProxyPeer:
    """Start pproxy on free ports and wait until every listener is up; a port taken in the
    meantime (the ports are chosen, then bound by pproxy) is retried with others."""
    if importlib.util.find_spec("pproxy") is None:
        raise PeerUnavailable(
            "proxy peer unavailable: the `pproxy` package is not installed; run"
            " `pip install pproxy` (polysocket's dev extra has it)"
        )
    error = ""
    for _ in range(attempts):
        ports = dict(zip(LISTENERS, _free_ports(len(LISTENERS)), strict=True))
        command = [sys.executable, "-u", "-c", _LAUNCHER, "-v", "--auth", "0"]
        for name, (scheme, auth) in LISTENERS.items():
            userinfo = f"#{USER}:{PASSWORD}" if auth else ""
            command += ["-l", f"{scheme}://127.0.0.1:{ports[name]}{userinfo}"]
        log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - pproxy writes it while running
            "wb", prefix="polysocket-proxy-", suffix=".log", dir=log_dir, delete=False
        )
        with log_file:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        peer = ProxyPeer(process, ports, Path(log_file.name))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            text = peer.log()
            if "failed" in text:
                break
            if text.count("Serving on") == len(LISTENERS):
                time.sleep(0.1)  # a failed listener says so right after its "Serving on"
                if "failed" not in peer.log():
                    return peer
                break
            time.sleep(0.05)
        error = peer.log()[-4000:]
        peer.stop()
        with contextlib.suppress(OSError):
            peer.log_path.unlink()
    raise RuntimeError(f"pproxy did not start ({attempts} attempts); its output:\n{error}")
