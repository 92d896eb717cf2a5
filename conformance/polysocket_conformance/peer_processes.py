"""The echo peers the suite talks to: subprocesses that are not polysocket.

Two kinds: ``"websockets"`` (the raw ``websockets`` library, asyncio server, run with the
current Python) and ``"node-ws"`` (Node.js with the ``ws`` npm package). Both implement the
command protocol described in ``peers/websockets_peer.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent / "peers"
KINDS = ("websockets", "node-ws")
START_TIMEOUT = 15.0


class PeerUnavailable(Exception):
    """The peer cannot be started on this machine (Node.js or ``ws`` missing)."""


def require_peers() -> bool:
    return os.environ.get("POLYSOCKET_REQUIRE_PEERS", "").strip() not in ("", "0", "false", "no")


def node_ws_location() -> tuple[str, Path]:
    """(node executable, ws package dir), or raise PeerUnavailable saying what is missing."""
    install = f"run `npm install --prefix {PEERS_DIR}`"
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailable(
            f"Node.js peer unavailable: `node` is not on PATH; install Node.js 18+, then {install}"
        )
    candidates = []
    custom = os.environ.get("POLYSOCKET_NODE_MODULES")
    if custom:
        candidates.append(Path(custom) / "ws")
    candidates.append(PEERS_DIR / "node_modules" / "ws")
    for candidate in candidates:
        if (candidate / "package.json").is_file():
            return node, candidate
    looked = " or ".join(str(c) for c in candidates)
    raise PeerUnavailable(
        f"Node.js peer unavailable: the `ws` package is not in {looked}; {install}"
        " (or point POLYSOCKET_NODE_MODULES at a node_modules folder that has ws)"
    )


def peer_command(kind: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if kind == "websockets":
        try:
            import websockets  # noqa: F401
        except ImportError:
            raise PeerUnavailable(
                "websockets peer unavailable: the `websockets` library is not installed;"
                " run `pip install websockets`"
            ) from None
        return [sys.executable, str(PEERS_DIR / "websockets_peer.py")], env
    if kind == "node-ws":
        node, ws_dir = node_ws_location()
        env["POLYSOCKET_WS_PATH"] = str(ws_dir)
        return [node, str(PEERS_DIR / "ws_peer.js")], env
    raise ValueError(f"unknown peer kind {kind!r}; known: {', '.join(KINDS)}")


@dataclass
class Peer:
    """A running echo peer process."""

    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str = "127.0.0.1"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def uri(self) -> str:
        return self.url("/echo")

    def url(self, path: str = "/echo") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(
                f"the {self.kind} peer (pid {self.process.pid}) exited with"
                f" {self.process.returncode}; its stderr:\n{self.log()}"
            )

    def query(self, command: str, timeout: float = 10.0) -> str:
        """Send one command on a fresh connection (raw websockets client) and return the reply.

        The side channel never goes through polysocket, so it tells what the peer really saw.
        """
        from websockets.sync.client import connect

        with connect(self.uri, open_timeout=timeout, max_size=None, close_timeout=timeout) as ws:
            ws.send(command)
            reply = ws.recv(timeout=timeout)
        return reply if isinstance(reply, str) else reply.decode()

    def last_close(self) -> dict[str, Any]:
        """``{"code", "reason", "messages"}`` of the last connection that ended on this peer."""
        # The peer answers this command with a JSON object (see last_close in the peers).
        reply: dict[str, Any] = json.loads(self.query("cmd:last-close"))
        return reply

    def kill(self) -> None:
        """SIGKILL the peer process (its connections drop without close frames)."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_peer(
    kind: str, log_dir: str | os.PathLike[str] | None = None, port: int | None = None
) -> Peer:
    """Start a peer process and wait for its ``PORT <n>`` line; on ``port`` if given (a
    peer restarted where a killed one listened), else on a free one."""
    command, env = peer_command(kind)
    if port is not None:
        command = [*command, "--port", str(port)]
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.gettempdir())
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the peer writes it while running
        "wb", prefix=f"polysocket-peer-{kind}-", suffix=".log", dir=log_dir, delete=False
    )
    with log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
            cwd=PEERS_DIR,
        )
    lines: queue.Queue[bytes] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(
        target=lambda: lines.put(stdout.readline()),
        daemon=True,
    )
    reader.start()
    log_path = Path(log_file.name)
    try:
        first = lines.get(timeout=START_TIMEOUT)
    except queue.Empty:
        first = b""
    text = first.decode(errors="replace").strip()
    if not text.startswith("PORT "):
        process.kill()
        process.wait(5)
        raise RuntimeError(
            f"the {kind} peer did not start ({' '.join(command)}): first stdout line"
            f" {text!r}, exit code {process.returncode}; stderr:\n"
            f"{log_path.read_text(errors='replace')[-4000:]}"
        )
    return Peer(kind, int(text.split()[1]), process, log_path)


def port_outside_the_ephemeral_range() -> int:
    """A free port the kernel never picks as a client's source port: a client retrying a
    port in that range while nothing listens may get it as its own source port (a TCP
    connection to itself, which then holds the port the server wants back)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(50):
        port = random.randrange(10000, max(10001, low))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between 10000 and {low}")
