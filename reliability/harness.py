"""What attacks.py and soak.py share: a ``polysocket serve`` subprocess, its RSS, raw frames.

Everything here works against any checkout of polysocket: the server is started through its
command line (``python -m polysocket serve``), options that only newer checkouts have are
passed only when ``serve --help`` lists them, and the peers write WebSocket frames by hand.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The suite's raw frames (installed with polysocket's dev extras), re-exported for the
# attacks: the peers here write frames by hand, as the suite's do.
from polysocket_conformance.rawframes import (
    BINARY as BINARY,
)
from polysocket_conformance.rawframes import (
    CLOSE as CLOSE,
)
from polysocket_conformance.rawframes import (
    CONTINUATION as CONTINUATION,
)
from polysocket_conformance.rawframes import (
    PING as PING,
)
from polysocket_conformance.rawframes import (
    PONG as PONG,
)
from polysocket_conformance.rawframes import (
    TEXT as TEXT,
)
from polysocket_conformance.rawframes import (
    close_frame as close_frame,
)
from polysocket_conformance.rawframes import (
    frame as frame,
)
from polysocket_conformance.rawframes import (
    mask_payload as mask_payload,
)

MIB = 1 << 20
GIB = 1 << 30
#: A server (or client) whose RSS passes this is killed: the machine is shared.
RSS_CAP = 2 * GIB
#: How often the RSS is read from /proc/PID/status.
RSS_PERIOD = 0.2
#: The engines a bare ``--engine all`` runs.
ENGINES = ["aiohttp", "websockets", "tornado", "picows"]
HERE = Path(__file__).resolve().parent
#: The attacks' own registry: a slow handler and a stuck one (the sample has neither).
REGISTRY = HERE / "registry"
SERVICE = "/websockets/v4/service/"
#: How long a server gets to start listening, and to exit after SIGTERM in a normal stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class HarnessError(Exception):
    """The measurement itself failed (the server never started, a peer could not connect)."""


# -- frames ------------------------------------------------------------------------------


class FrameParser:
    """Frames out of a byte stream fed in pieces (for non-blocking readers)."""

    def __init__(self, data: bytes = b"") -> None:
        self.buffer = bytearray(data)

    def feed(self, data: bytes) -> list[tuple[int, bool, bytes]]:
        self.buffer += data
        frames: list[tuple[int, bool, bytes]] = []
        while True:
            parsed = self._one()
            if parsed is None:
                return frames
            frames.append(parsed)

    def _one(self) -> tuple[int, bool, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        size, offset = buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            (size,), offset = struct.unpack("!H", buf[2:4]), 4
        elif size == 127:
            if len(buf) < 10:
                return None
            (size,), offset = struct.unpack("!Q", buf[2:10]), 10
        key = b""
        if buf[1] & 0x80:
            key, offset = bytes(buf[offset : offset + 4]), offset + 4
        if len(buf) < offset + size:
            return None
        payload = bytes(buf[offset : offset + size])
        if key:
            payload = mask_payload(payload, key)
        first = buf[0]
        del buf[: offset + size]
        return first & 0x0F, bool(first & 0x80), payload


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def handshake_request(port: int, path: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def status_of(head: bytes) -> int:
    """The status code of an HTTP answer's head (0 if it is not HTTP)."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match[1]) if match else 0


@dataclass
class RawSocket:
    """A client past (or refused at) the opening handshake: ``status`` 101 or the refusal."""

    sock: socket.socket
    status: int
    parser: FrameParser


def connect_ws(
    port: int,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    timeout: float = 10.0,
    rcvbuf: int | None = None,
) -> RawSocket:
    """A blocking handshake with a timeout; raises HarnessError when no answer comes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect(), so that the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(handshake_request(port, path, headers))
        response = b""
        while b"\r\n\r\n" not in response:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise HarnessError(f"{path}: the server closed before answering: {response!r}")
            response += chunk
    except OSError as exc:
        sock.close()
        raise HarnessError(f"{path}: no handshake answer within {timeout} s ({exc})") from exc
    head, _, rest = response.partition(b"\r\n\r\n")
    return RawSocket(sock, status_of(head), FrameParser(rest))


async def aconnect_ws(
    port: int, path: str, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio handshake; raises HarnessError unless the answer is 101 within ``timeout``."""

    async def handshake() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(handshake_request(port, path))
        head = await reader.readuntil(b"\r\n\r\n")
        if status_of(head) != 101:
            writer.close()
            raise HarnessError(f"{path}: handshake refused: {head[:60]!r}")
        return reader, writer

    try:
        return await asyncio.wait_for(handshake(), timeout)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        raise HarnessError(f"{path}: handshake failed ({exc!r})") from exc


async def aread_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(size)
    return first & 0x0F, bool(first & 0x80), mask_payload(payload, key) if key else payload


def push(
    sock: socket.socket, data: bytes, deadline: float, stop: Callable[[], bool]
) -> tuple[int, str]:
    """Write ``data`` again and again until ``deadline`` or ``stop()``, never blocking for long.

    Returns how many whole copies left (were taken by the kernel) and how it ended: "open",
    or why the connection failed.
    """
    sock.setblocking(False)
    view = memoryview(data)
    offset = count = 0
    while time.monotonic() < deadline and not stop():
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:
            continue
        try:
            offset += sock.send(view[offset:])
        except BlockingIOError:
            continue
        except OSError as exc:
            return count, f"connection failed ({exc.strerror or exc})"
        if offset == len(view):
            count, offset = count + 1, 0
    return count, "open"


def drain_for_close(
    raw: RawSocket, seconds: float, limit: int = 64 * MIB, *, answer: bool = False
) -> str:
    """Read for up to ``seconds`` (or ``limit`` bytes): "closed CODE", "ended (no close
    frame)" or "open". With ``answer``, a close frame is answered, as a well-behaved client
    does (so that the server's wait for the closing handshake is not what gets measured)."""
    sock = raw.sock
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    read = 0
    while time.monotonic() < deadline and read < limit:
        readable, _, _ = select.select([sock], [], [], 0.1)
        if not readable:
            continue
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        except OSError as exc:
            return f"reset ({exc.strerror or exc})"
        if not chunk:
            return "ended (no close frame)"
        read += len(chunk)
        for opcode, _, payload in raw.parser.feed(chunk):
            if opcode == CLOSE:
                if answer:
                    _answer_close(sock, close_code(payload))
                return f"closed {close_code(payload)}"
    return "open"


def _answer_close(sock: socket.socket, code: int | None) -> None:
    """Answer a close frame, wait (up to 5 s) for the server to end TCP, then close ours:
    what a browser does. (A peer that keeps its socket open makes some engines wait their
    ``close_timeout``: that is not what an attack here measures.)"""
    with contextlib.suppress(OSError):
        sock.sendall(close_frame(code or 1000))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and not sock.recv(65536):
                break
    sock.close()


# -- processes and their memory ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_of(pid: int) -> int | None:
    """The resident set of ``pid`` in bytes (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class RssWatch:
    """Samples a process's RSS every 0.2 s; kills it (SIGKILL) once it passes ``cap``.

    ``begin()`` takes the start figure and resets the peak; ``end()`` takes the end figure.
    ``capped_at`` is the time (s since ``begin()``) when the cap was passed.
    """

    def __init__(self, pid: int, cap: int = RSS_CAP) -> None:
        self.pid, self.cap = pid, cap
        self.start = self.peak = self.last = rss_of(pid) or 0
        self.end_rss: int | None = None
        self.began = time.monotonic()
        self.capped_at: float | None = None
        self.capped = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_PERIOD):
            value = rss_of(self.pid)
            if value is None:
                return
            self.last = value
            self.peak = max(self.peak, value)
            if value > self.cap and self.capped_at is None:
                self.capped_at = time.monotonic() - self.began
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.capped.set()

    def begin(self) -> None:
        self.start = self.peak = self.last = rss_of(self.pid) or self.last
        self.began = time.monotonic()

    def end(self) -> int | None:
        self.end_rss = rss_of(self.pid)
        return self.end_rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def figures(self) -> dict[str, object]:
        return {
            "rss_start": self.start,
            # the sampling thread may starve while the harness's own loop is busy: the start
            # and end readings are samples too
            "rss_peak": max((r for r in (self.peak, self.start, self.end_rss) if r), default=None),
            "rss_end": self.end_rss,
            "capped_at": None if self.capped_at is None else round(self.capped_at, 1),
        }


class _Drain(threading.Thread):
    """Reads one pipe to its end: counts the bytes, keeps the first and last few KiB."""

    def __init__(self, pipe: object) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.count = 0
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque(maxlen=8)
        self.start()

    def run(self) -> None:
        read = self.pipe.read1  # type: ignore[attr-defined]
        while chunk := read(1 << 16):
            self.count += len(chunk)
            if len(self.head) < 8192:
                self.head += chunk[: 8192 - len(self.head)]
            self.tail.append(chunk[-1024:])


_HELP: dict[str, set[str]] = {}


def serve_flags() -> set[str]:
    """The options ``polysocket serve`` has in this checkout (from its ``--help``)."""
    if "serve" not in _HELP:
        out = subprocess.run(
            [sys.executable, "-m", "polysocket", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        _HELP["serve"] = set(re.findall(r"(--[a-z][a-z0-9-]*)", out))
    return _HELP["serve"]


def available_engines() -> set[str]:
    """Engines ``polysocket engines`` reports as available (with the server capability)."""
    out = subprocess.run(
        [sys.executable, "-m", "polysocket", "engines"], capture_output=True, text=True, timeout=60
    ).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "available" and "server" in parts[3]:
            names.add(parts[0])
    return names


_LIMIT_THEN_EXEC = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


@dataclass
class ServeProcess:
    """``polysocket serve`` on a free port, its output counted (not kept), its RSS watched.

    ``nofile`` runs it under that file-descriptor limit (soft and hard), like
    ``ulimit -n``; the limit is set in a small Python that then execs the server, so that the
    server keeps the PID we watch.
    """

    engine: str
    root: Path | None = None
    extra: Sequence[str] = ()
    nofile: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.port = free_port()
        command = [
            "-m",
            "polysocket",
            "serve",
            *([str(self.root)] if self.root is not None else []),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--engine",
            self.engine,
            *self.extra,
        ]
        if self.nofile is not None:
            argv = [sys.executable, "-c", _LIMIT_THEN_EXEC, str(self.nofile), *command]
        else:
            argv = [sys.executable, *command]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **self.env},
        )
        self._out, self._err = _Drain(self.process.stdout), _Drain(self.process.stderr)
        self.rss = RssWatch(self.process.pid)
        try:
            self._wait_listening()
        except BaseException:
            self.kill()
            raise

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the drains catch the last words
                raise HarnessError(
                    f"polysocket serve --engine {self.engine} exited with"
                    f" {self.process.returncode}: {self.output_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise HarnessError(f"polysocket serve did not listen within {START_TIMEOUT} s")

    @property
    def log_bytes(self) -> int:
        """What the server wrote to stdout and stderr so far."""
        return self._out.count + self._err.count

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output_tail(self) -> str:
        text = b"".join(self._err.tail).decode(errors="replace").strip()
        return text[-600:] or "(no output)"

    def terminate(self, timeout: float = STOP_TIMEOUT) -> tuple[int | None, float]:
        """SIGTERM, then SIGKILL after ``timeout``: (exit code or None if killed, seconds)."""
        began = time.monotonic()
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None, time.monotonic() - began
        return self.process.returncode, time.monotonic() - began

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.rss.stop()
        self._out.join(2)
        self._err.join(2)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.alive:
                self.terminate()
        finally:
            self.kill()


def mib(value: object) -> str:
    return "-" if not isinstance(value, int) else f"{value / MIB:.0f} MiB"


def size(value: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"
