"""Attack: many stalled sockets against `polysocket serve` under a 1024 file-descriptor limit.

Starts ``polysocket serve --engine E`` under ``prlimit --nofile=LIMIT``, opens STALLED raw
sockets that send half a request and then nothing, then tries a real WebSocket handshake
(waiting up to the end of the run, again if refused or dropped). Reports the server log's
size after DURATION seconds, how long the first real client waited for its 101 (from its
first attempt, 1 s after the last stalled socket was opened), and the server's CPU time.

    python bench/stalled_sockets.py --engine aiohttp [--stalled 1100 --limit 1024 --duration 15]
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def handshake(port: int, timeout: float) -> bool:
    """One real WebSocket handshake; True on a 101 within ``timeout``."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /websockets/v4/service/my-endpoint HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(request)
            return s.recv(64).startswith(b"HTTP/1.1 101")
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True)
    parser.add_argument("--stalled", type=int, default=1100)
    parser.add_argument("--limit", type=int, default=1024)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--serve-args", default="", help="extra `polysocket serve` arguments")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.stalled + 256)), hard))
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)  # noqa: SIM115
    command = ["prlimit", f"--nofile={args.limit}", sys.executable, "-m", "polysocket", "serve"]
    command += ["--engine", args.engine, "--port", str(port), *args.serve_args.split()]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not handshake(port, 1.0):
            if time.monotonic() > deadline or server.poll() is not None:
                print("server did not start", file=sys.stderr)
                return 2
            time.sleep(0.2)
        before = os.path.getsize(log.name)
        cpu_before = cpu_seconds(server.pid)
        stalled = []
        start = time.monotonic()
        for _ in range(args.stalled):
            s = socket.socket()
            s.settimeout(0.2)  # past the backlog, a connect waits for SYN retries: go on
            try:
                s.connect(("127.0.0.1", port))
                s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a request, then nothing
            except OSError:
                pass
            stalled.append(s)
        opened = time.monotonic() - start
        time.sleep(1.0)  # let the server run out of descriptors
        attempt_start = time.monotonic()
        connected_after = None
        while time.monotonic() - start < args.duration:
            left = args.duration - (time.monotonic() - start)
            if handshake(port, max(0.5, left)):
                connected_after = time.monotonic() - attempt_start
                break
        while time.monotonic() - start < args.duration:
            time.sleep(0.2)
        size = os.path.getsize(log.name) - before
        cpu = cpu_seconds(server.pid) - cpu_before
        got = "never" if connected_after is None else f"{connected_after:.1f} s"
        print(
            f"{args.engine}: {len(stalled)} stalled sockets (opened in {opened:.1f} s),"
            f" fd limit {args.limit}:"
            f" log grew {size} bytes in {args.duration:.0f} s; a real client got a 101 after {got};"
            f" server CPU {cpu:.1f} s"
        )
        for s in stalled:
            s.close()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        print(f"  log: {log.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
