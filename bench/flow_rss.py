"""RSS of ``polysocket serve`` under two flow-control attacks (issue 9, items 1 and 2).

    python bench/flow_rss.py [--engines aiohttp,websockets,tornado,picows] [--seconds 30]

Attacks, each against a fresh ``polysocket serve`` process per engine:

- ``push``: a raw client pushes 1 MiB binary messages as fast as TCP lets it at a handler that
  sleeps 0.1 s per message (a temporary registry), reading whatever comes back;
- ``noread``: a raw client sends 1 MiB messages to the bundled sample's echo endpoint
  (``my-endpoint``) and never reads the echoes.

It samples the server's VmRSS (``/proc/PID/status``) every 0.5 s and prints, per row, RSS at
start, at the end and the peak, and how much the client got onto the wire. The server's log
goes to /dev/null (the sample logs every message).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SLOW_HANDLER = """
import time

def onMessage(message):
    time.sleep(0.1)
"""
MIB = 1 << 20
#: The attack stops when the server's RSS passes this (before the fix it grows without bound).
MAX_RSS_KIB = 3 << 20
PATH = "/websockets/v4/service/"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary_frame(payload: bytes) -> bytes:
    """A masked client frame with an all-zero key: the payload goes as it is (legal, fast)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def handshake(port: int, endpoint: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        (
            f"GET {PATH}{endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"no handshake answer: {answer!r}")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(answer.split(b"\r\n")[0].decode())
    return sock


def attack(port: int, endpoint: str, seconds: float, read: bool, sent: list[int]) -> None:
    sock = handshake(port, endpoint)
    stop = time.monotonic() + seconds
    message = binary_frame(b"x" * MIB)
    if read:

        def drain() -> None:
            with contextlib.suppress(OSError):
                while sock.recv(1 << 20):
                    pass

        threading.Thread(target=drain, daemon=True).start()
    sock.settimeout(0.5)
    view = memoryview(message)
    offset = 0
    try:
        while time.monotonic() < stop:
            try:
                offset += sock.send(view[offset:])
            except TimeoutError:
                continue  # blocked: the server stopped reading (what flow control should do)
            if offset == len(message):
                sent[0] += offset
                offset = 0
    except OSError:
        pass  # the server closed the connection
    finally:
        sent[0] += offset
        sock.close()


def run(engine: str, kind: str, seconds: float, root: str | None) -> str:
    port = free_port()
    command = [sys.executable, "-m", "polysocket", "serve", "--port", str(port)]
    command += ["--engine", engine] + ([root] if root else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    return f"{engine:<11} {kind:<7} server did not start"
                time.sleep(0.1)
        start = rss_kib(server.pid)
        sent = [0]
        endpoint = "slow" if kind == "push" else "my-endpoint"
        worker = threading.Thread(
            target=attack, args=(port, endpoint, seconds, kind == "push", sent), daemon=True
        )
        worker.start()
        peak, began, over = start, time.monotonic(), ""
        while worker.is_alive():
            worker.join(0.5)
            if server.poll() is not None:
                break
            peak = max(peak, rss_kib(server.pid))
            if peak > MAX_RSS_KIB:  # the machine is shared: stop before it runs out
                took = time.monotonic() - began
                over = f"  STOPPED: over {MAX_RSS_KIB >> 20} GiB after {took:.0f} s"
                break
        end = rss_kib(server.pid) if server.poll() is None else 0
        state = "alive" if server.poll() is None else f"DIED ({server.returncode})"
        return (
            f"{engine:<11} {kind:<7} start {start / 1024:7.0f} MiB  end {end / 1024:7.0f} MiB"
            f"  peak {peak / 1024:7.0f} MiB  sent {sent[0] / MIB:8.0f} MiB  server {state}{over}"
        )
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="aiohttp,websockets,tornado,picows")
    parser.add_argument("--attacks", default="push,noread")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "slow-handler.py").write_text(SLOW_HANDLER)
        (root / "slow.websocket").write_text('{"handler": "slow-handler", "endpoint": "slow"}')
        print(f"{args.seconds:.0f} s per row; pid {os.getpid()}", flush=True)
        for engine in args.engines.split(","):
            for kind in args.attacks.split(","):
                print(run(engine, kind, args.seconds, tmp if kind == "push" else None), flush=True)


if __name__ == "__main__":
    main()
