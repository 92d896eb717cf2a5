"""The cluster suite's moving parts: a private broker started from a command template, server
processes (``polysocket serve --backplane ...``) and raw WebSocket clients (``websockets``).

Nothing here knows which broker it runs: the broker is a command line with ``{port}`` in it
(``--polysocket-broker-command``) and the servers get a URL template with ``{port}``
(``--polysocket-backplane``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

REGISTRY = Path(__file__).parent / "registry"
ENDPOINT = "room"
#: The nodes' presence expiry: short, so that a killed node is gone within seconds.
PRESENCE_EXPIRY = 2.0
#: The engine the nodes serve with (the suite tests the backplane, not the engine).
NODE_ENGINE = "aiohttp"
#: Seconds a broker or a server process gets to listen.
START_TIMEOUT = 20.0
#: Replies a client waits for this long.
REPLY_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode} before listening on {port}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {START_TIMEOUT} s")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(wait)


class Broker:
    """A private broker on a free port, from ``command`` (``{port}`` filled in); it can be
    killed and started again on the same port."""

    def __init__(self, command: str, url_template: str, logs: Path) -> None:
        self.port = free_port()
        self.argv = shlex.split(command.format(port=self.port))
        self.url = url_template.format(port=self.port)
        self._log = logs / f"broker-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            except FileNotFoundError as exc:
                raise RuntimeError(
                    f"cannot start the broker {self.argv[0]!r}: {exc}; install it (the Redis"
                    " suite needs Debian's redis-server) or pass --polysocket-broker-command"
                ) from None
        wait_listening(self.port, self.process, f"the broker ({self.argv[0]})", self._log)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a word, as a crashed one does."""
        if self.process is not None:
            stop(self.process, signal.SIGKILL)

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Node:
    """One ``polysocket serve`` process of the cluster, its stderr in a log file."""

    def __init__(self, broker_url: str, cluster: str, logs: Path, index: int) -> None:
        self.port = free_port()
        self.log_path = logs / f"{cluster}-node{index}.log"
        argv = [
            sys.executable,
            "-m",
            "polysocket",
            "serve",
            str(REGISTRY),
            "--port",
            str(self.port),
            "--engine",
            NODE_ENGINE,
            "--backplane",
            broker_url,
            "--cluster",
            cluster,
            "--presence-expiry",
            str(PRESENCE_EXPIRY),
            "--close-timeout",
            "2",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("POLYSOCKET_BACKPLANE", None)
        env.pop("POLYSOCKET_CLUSTER", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def wait_ready(self) -> None:
        wait_listening(self.port, self.process, f"polysocket serve on {self.port}", self.log_path)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websockets/v4/service/{ENDPOINT}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        stop(self.process, signal.SIGKILL)

    def close(self) -> None:
        stop(self.process)


def is_reply(message: str) -> bool:
    return message.startswith("{") or message in ("sent", "unknown")


class Client:
    """A raw WebSocket client of the suite's room on one node: broadcasts it receives go to
    :attr:`messages`, in order; answers to its commands to a queue."""

    def __init__(self, connection: ClientConnection, node: Node) -> None:
        self.connection = connection
        self.node = node
        self.messages: list[str] = []
        self._replies: asyncio.Queue[str] = asyncio.Queue(100)
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.id = ""
        self.node_name = ""

    @classmethod
    async def open(cls, node: Node) -> Client:
        connection = await websockets.connect(node.url, open_timeout=REPLY_TIMEOUT)
        client = cls(connection, node)
        listing = await client.who()
        client.id, client.node_name = listing["me"], listing["node"]
        return client

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.connection:
                assert isinstance(message, str)
                if is_reply(message):
                    self._replies.put_nowait(message)
                else:
                    self.messages.append(message)
                    self._arrived.set()

    async def send(self, message: str) -> None:
        await self.connection.send(message)

    async def ask(self, command: str) -> str:
        await self.connection.send(command)
        async with asyncio.timeout(REPLY_TIMEOUT):
            return await self._replies.get()

    async def who(self) -> dict[str, Any]:
        listing: dict[str, Any] = json.loads(await self.ask("/who"))
        return listing

    async def sessions(self) -> dict[str, str]:
        """``getSessions`` on this client's node: session id -> node."""
        return {sid: node for sid, node in (await self.who())["sessions"]}

    async def wait_messages(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 5)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


async def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll the coroutine function ``condition`` until it returns true; the seconds it took.
    ``AssertionError`` naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)


async def wait_presence(clients: list[Client], expected: set[str], timeout: float) -> None:
    """Until ``getSessions`` on every client's node lists exactly ``expected``."""

    async def complete() -> bool:
        for client in clients:
            if set(await client.sessions()) != expected:
                return False
        return True

    await wait_for(complete, timeout, f"every node lists the {len(expected)} sessions")
