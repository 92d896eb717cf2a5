"""``polysocket serve --workers N``, run as a user runs it: a supervisor and N real worker
processes sharing one port, driven by real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websockets
from polysocket_conformance.cluster_suite.support import Broker
from websockets.asyncio.client import connect

from polysocket import serve
from polysocket.errors import UnsupportedOptionError
from polysocket.options import server_options
from polysocket.plugins import registry
from polysocket.server import SAMPLE_ROOT
from polysocket.testing import MemoryEngine, install
from polysocket.workers import Supervisor, WorkersRefused, check_workers

SERVE = [sys.executable, "-m", "polysocket", "serve"]
#: Bound of every wait in these tests.
WAIT = 15.0
#: The project's shared Redis; the tests start a private redis-server where it does not run.
SHARED_REDIS = ("127.0.0.1", 6379)
#: The workers' close_timeout (--close-timeout): SIGTERM must end them well within it + 5 s.
CLOSE_TIMEOUT = 2.0

PID_HANDLER = '''\
"""Replies with the worker's pid, and the sessions of "chat" with the pid of their node."""
import json
import os

import polysocket


def onMessage(message):
    sessions = {}
    for session in polysocket.getSessions("chat"):
        node = getattr(session, "node", None)  # a session on another node of the cluster
        sessions[session.id] = int(node.split("/")[1]) if node else os.getpid()
    return json.dumps({"pid": os.getpid(), "chat": sessions})
'''


def answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def require_peers() -> bool:
    return os.environ.get("POLYSOCKET_REQUIRE_PEERS", "").strip() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def redis_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The workers' backplane (a cross-process one, or --workers N > 1 is refused): the one
    the cluster suite's options name (``--polysocket-backplane`` with
    ``--polysocket-broker-command``: a private broker, as ``nox -s backplane_nats`` runs the
    chat test on NATS), else the shared Redis at 127.0.0.1:6379 when it answers, else a private
    redis-server on a free port. Pub/sub channels ignore the database number: each test's
    cluster name keeps it apart."""
    url = request.config.getoption("polysocket_backplane")
    command = request.config.getoption("polysocket_broker_command")
    if url and command:
        with Broker(command, url, tmp_path_factory.mktemp("broker")) as broker:
            yield broker.url
        return
    if answers_ping(*SHARED_REDIS):
        yield "redis://127.0.0.1:6379/0"
        return
    if shutil.which("redis-server") is None:
        missing = "no Redis at 127.0.0.1:6379 and no redis-server (apt-get install redis-server)"
        if require_peers():
            pytest.fail(f"{missing} (POLYSOCKET_REQUIRE_PEERS is set)")
        pytest.skip(missing)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT
        while not answers_ping("127.0.0.1", port):
            assert process.poll() is None, f"redis-server exited with {process.returncode}"
            assert time.monotonic() < deadline, f"redis-server did not answer within {WAIT} s"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(WAIT)


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    """The bundled sample (its echo and chat endpoints) and a ``pid`` endpoint."""
    root = tmp_path / "registry"
    shutil.copytree(SAMPLE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pid-handler.py").write_text(PID_HANDLER)
    (root / "pid.websocket").write_text(
        json.dumps({"handler": "pid-handler", "endpoint": "pid", "description": "whoami"})
    )
    return root


class Supervised:
    """A ``polysocket serve --workers N`` process and what it logs, read on a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "polysocket", "serve", *args],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<EOF>")
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern`` (waiting for them)."""
        regex = re.compile(pattern)

        def found() -> list[re.Match[str]]:
            return [m for m in map(regex.search, self.lines) if m][:count]

        with self._changed:
            ok = self._changed.wait_for(
                lambda: len(found()) >= count or "<EOF>" in self.lines, timeout
            )
            matches = found()
        assert ok and len(matches) >= count, f"no {count} x {pattern!r} in:\n{self.log}"
        return matches

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(CLOSE_TIMEOUT + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)


def cluster_env(backplane: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("POLYSOCKET_")}
    env.update(
        POLYSOCKET_BACKPLANE=backplane,
        POLYSOCKET_CLUSTER=f"test-workers-{uuid.uuid4().hex[:12]}",
        **extra,
    )
    return env


def start_workers(
    backplane: str, root: Path, count: int, *args: str
) -> tuple[Supervised, int, list[int]]:
    """``count`` workers serving ``root`` on a free port: (supervisor, port, worker pids)."""
    served = Supervised(
        str(root),
        "--port",
        "0",
        "--workers",
        str(count),
        "--close-timeout",
        str(CLOSE_TIMEOUT),
        *args,
        env=cluster_env(backplane),
    )
    port = int(served.wait_for(r"starting \d+ workers on 127\.0\.0\.1:(\d+)")[0][1])
    pids = [int(m[1]) for m in served.wait_for(r"worker \d+ started \(pid (\d+)\)", count)]
    served.wait_for(
        rf"worker \d+: polysocket\.server: serving .* on http://127\.0\.0\.1:{port}/", count
    )
    return served, port, pids


@pytest.fixture
def supervised(redis_url: str) -> Iterator[Callable[..., tuple[Supervised, int, list[int]]]]:
    """Factory: ``supervised(root, count, *args)`` starts ``polysocket serve --workers count``
    over Redis; each one is stopped (SIGTERM) after the test."""
    started: list[Supervised] = []

    def start(root: Path, count: int, *args: str) -> tuple[Supervised, int, list[int]]:
        served, port, pids = start_workers(redis_url, root, count, *args)
        started.append(served)
        return served, port, pids

    yield start
    for served in started:
        served.stop()


async def pid_of_a_connection(port: int) -> int:
    async with connect(f"ws://127.0.0.1:{port}/websockets/v4/service/pid", open_timeout=WAIT) as ws:
        await ws.send("who")
        reply = await asyncio.wait_for(ws.recv(), WAIT)
        return int(json.loads(reply)["pid"])


def pids_answering(port: int, connections: int) -> Counter[int]:
    async def ask() -> Counter[int]:
        return Counter([await pid_of_a_connection(port) for _ in range(connections)])

    return asyncio.run(asyncio.wait_for(ask(), WAIT * 2))


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts: it holds no socket)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):  # Linux: the state field of /proc/PID/stat
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def test_workers_share_the_port_and_the_kernel_spreads_connections(registry_root, supervised):
    _, port, pids = supervised(registry_root, 3)
    answered = pids_answering(port, 30)
    assert set(answered) <= set(pids), (answered, pids)
    assert len(answered) > 1, f"30 connections all landed on one worker: {answered}"


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(registry_root, supervised):
    served, port, pids = supervised(registry_root, 3)
    victim = pids[1]
    os.kill(victim, signal.SIGKILL)
    served.wait_for(r"worker 2 was killed by SIGKILL after [\d.]+ s; restarting it in")
    # Between the death and the restart, the two others take every connection.
    meanwhile = pids_answering(port, 10)
    assert set(meanwhile) <= {pids[0], pids[2]}, (meanwhile, pids)
    restarted = int(served.wait_for(r"worker 2 started \(pid (\d+)\)", 2)[1][1])
    assert restarted not in pids
    served.wait_for(rf"worker 2: polysocket\.server: serving .*:{port}/", 2)

    async def until_the_new_worker_answers() -> set[int]:
        seen: set[int] = set()
        while restarted not in seen:
            seen.add(await pid_of_a_connection(port))
        return seen

    seen = asyncio.run(asyncio.wait_for(until_the_new_worker_answers(), WAIT))
    assert victim not in seen and seen <= {pids[0], restarted, pids[2]}
    assert served.process.poll() is None


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_closes_every_session_with_1001_and_every_process_exits(
    registry_root, supervised, stop_signal
):
    """SIGTERM (or SIGINT, Ctrl-C) to the supervisor: every worker closes its sessions with
    1001 and exits 0, within the bound; the supervisor exits 0."""
    served, port, pids = supervised(registry_root, 3)

    async def scenario() -> tuple[set[int], list[int | None], float]:
        uri = f"ws://127.0.0.1:{port}/websockets/v4/service/pid"
        clients = [await connect(uri, open_timeout=WAIT) for _ in range(12)]
        answered = set()
        for ws in clients:
            await ws.send("who")
            answered.add(json.loads(await asyncio.wait_for(ws.recv(), WAIT))["pid"])
        started = time.monotonic()
        served.process.send_signal(stop_signal)
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), WAIT)
        return answered, [ws.close_code for ws in clients], time.monotonic() - started

    answered, codes, took = asyncio.run(scenario())
    assert len(answered) > 1, f"12 sessions all on one worker ({answered}): nothing shown"
    assert codes == [1001] * 12, codes
    try:
        exit_code = served.process.wait(CLOSE_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the supervisor did not exit within {CLOSE_TIMEOUT + 5} s:\n{served.log}")
    assert exit_code == 0, served.log
    assert took < CLOSE_TIMEOUT + 1, took
    deadline = time.monotonic() + 5
    while not all(map(gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, pids)), [pid for pid in pids if not gone(pid)]
    for number in (1, 2, 3):
        served.wait_for(rf"worker {number} \(pid \d+\) exited with code 0")


def test_workers_shut_down_when_their_supervisor_is_killed(registry_root, supervised):
    """SIGKILL leaves the supervisor no chance to pass anything on: its pipe to each worker
    closes, and the workers stop as on SIGTERM instead of serving on unsupervised."""
    served, _, pids = supervised(registry_root, 2)
    served.process.kill()
    served.process.wait(WAIT)
    deadline = time.monotonic() + CLOSE_TIMEOUT + 5
    while not all(map(gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, pids)), [pid for pid in pids if not gone(pid)]
    served.wait_for("the supervisor is gone", 2)


def test_more_than_one_worker_without_a_backplane_is_refused(registry_root):
    env = {key: value for key, value in os.environ.items() if not key.startswith("POLYSOCKET_")}
    result = subprocess.run(
        [sys.executable, "-m", "polysocket", "serve", str(registry_root), "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
    )
    assert result.returncode == 2, result
    assert "--workers 2 needs a backplane" in result.stderr
    assert "--backplane redis://" in result.stderr
    assert "started" not in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--backplane", "nosuch://broker:1"], "no backplane for 'nosuch://broker:1'"),
        (["--cluster", "bad name!"], "cluster name 'bad name!': use letters, digits"),
    ],
)
def test_what_every_worker_would_fail_on_is_refused_before_any_starts(
    registry_root, redis_url, args, said
):
    result = subprocess.run(
        [*SERVE, str(registry_root), "--workers", "2", *args],
        capture_output=True,
        text=True,
        env=cluster_env(redis_url),
        timeout=WAIT,
    )
    assert result.returncode == 2, result
    assert said in result.stderr
    assert "started" not in result.stderr and "Traceback" not in result.stderr


def test_a_bad_cluster_name_is_refused_in_one_process_too(registry_root):
    """Without --workers the same message, not a traceback, whether the name comes from
    --cluster or from $POLYSOCKET_CLUSTER."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("POLYSOCKET_")}
    for args, extra in (
        (["--cluster", "bad name!"], {}),
        ([], {"POLYSOCKET_CLUSTER": "bad name!"}),
    ):
        result = subprocess.run(
            [*SERVE, str(registry_root), "--port", "0", *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=WAIT,
        )
        assert result.returncode == 2, result
        assert "cluster name 'bad name!': use letters, digits" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_port_taken_by_another_program_is_refused_before_any_worker_starts(
    registry_root, redis_url
):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SERVE, str(registry_root), "--workers", "2", "--port", str(port)],
            capture_output=True,
            text=True,
            env=cluster_env(redis_url),
            timeout=WAIT,
        )
    assert result.returncode == 2, result
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "without SO_REUSEPORT" in result.stderr
    assert "worker 1 started" not in result.stderr


def test_a_worker_that_keeps_exiting_at_once_makes_the_supervisor_give_up(caplog):
    """Real processes that exit at once: restarted with a growing delay, then the supervisor
    stops the other worker and returns 1 instead of restarting forever."""
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    supervisor = Supervisor(crash, 2, "127.0.0.1", 0, restart_delay=0.05, quick_exit_limit=3)
    caplog.set_level(logging.INFO, "polysocket.workers")
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < WAIT
    text = caplog.text
    assert "exited with code 3 after" in text and "restarting it in 0.05 s" in text
    assert "restarting it in 0.1 s" in text  # the delay doubles
    assert re.search(r"worker \d exited with code 3 .* the 3rd time in a row .*giving up", text)


def test_an_engine_that_cannot_share_a_port_is_refused():
    with install(MemoryEngine(name="no-reuse-port")):  # binds no socket: no "reuse_port"
        with pytest.raises(WorkersRefused, match="lacks the 'reuse_port' capability") as refused:
            check_workers(2, "redis://127.0.0.1:6379/0", "no-reuse-port")
        assert "aiohttp" in str(refused.value)  # the engines that can
        check_workers(1, None, "no-reuse-port")  # one worker: nothing to share


def test_workers_must_be_a_positive_count():
    result = subprocess.run(
        [sys.executable, "-m", "polysocket", "serve", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2 and "'0' is not a positive int" in result.stderr


# -- reuse_port on every engine ----------------------------------------------------------

ENGINES_WITH_REUSE_PORT = [
    row.name for row in registry.statuses() if "reuse_port" in row.capabilities
]


@pytest.mark.parametrize("engine", ENGINES_WITH_REUSE_PORT)
def test_an_engine_with_reuse_port_binds_twice_on_one_port(engine, registry_root):
    async def scenario() -> None:
        async with serve(registry_root, port=0, engine=engine, reuse_port=True) as first:
            async with serve(
                registry_root, port=first.port, engine=engine, reuse_port=True
            ) as second:
                assert second.port == first.port
                assert await pid_of_a_connection(first.port) > 0
            # without the option the port is not shared: the kernel refuses the bind
            with pytest.raises(OSError) as refused:
                await serve(registry_root, port=first.port, engine=engine).__aenter__()
            assert refused.value.errno == errno.EADDRINUSE

    asyncio.run(asyncio.wait_for(scenario(), WAIT))


def test_reuse_port_needs_the_capability_and_a_bool():
    without = MemoryEngine()  # binds no socket: it lacks "reuse_port"
    with pytest.raises(UnsupportedOptionError, match="lacks the 'reuse_port' capability"):
        server_options(without, {"reuse_port": True})
    assert server_options(without, {"reuse_port": False})[0].reuse_port is False
    with pytest.raises(TypeError, match="reuse_port must be True or False"):
        server_options(
            MemoryEngine(capabilities=frozenset({"server", "reuse_port"})), {"reuse_port": 1}
        )


# -- the first Done-when line ------------------------------------------------------


CHAT_CLIENTS = 40
MESSAGES_EACH = 3


def test_chat_sample_on_4_workers_over_a_backplane_reaches_all_40_clients_exactly_once(
    registry_root, supervised, redis_url
):
    """The bundled chat endpoint on ``--workers 4 --backplane URL`` (Redis, or the broker the
    suite options name): 40 raw clients
    spread over the workers each send 3 messages; every client gets each of the 120 exactly
    once, each sender's in the order sent."""
    _, port, pids = supervised(registry_root, 4, "--backplane", redis_url)
    chat = f"ws://127.0.0.1:{port}/websockets/v4/service/chat"

    async def scenario() -> None:
        clients = [await connect(chat, open_timeout=WAIT) for _ in range(CHAT_CLIENTS)]
        received: list[list[str]] = [[] for _ in clients]

        async def read(index: int) -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for message in clients[index]:
                    assert isinstance(message, str)
                    received[index].append(message)

        readers = [asyncio.create_task(read(i)) for i in range(CHAT_CLIENTS)]
        # Every client learns its session id from its hello coming back (not counted).
        for index, ws in enumerate(clients):
            await ws.send(f"c{index}-hello")
        ids: dict[int, str] = {}
        deadline = time.monotonic() + WAIT
        while len(ids) < CHAT_CLIENTS and time.monotonic() < deadline:
            for index in range(CHAT_CLIENTS):
                for line in received[index]:
                    if line.endswith(f": c{index}-hello"):
                        ids[index] = line.split(":")[0]
            await asyncio.sleep(0.05)
        assert len(ids) == CHAT_CLIENTS, f"only {len(ids)} clients got their own hello back"
        # Wait until every worker's presence view has the 40 sessions: then every worker
        # hears every other one, and the counted messages can go.
        views: dict[int, dict[str, int]] = {}
        while time.monotonic() < deadline:
            async with connect(f"ws://127.0.0.1:{port}/websockets/v4/service/pid") as ws:
                await ws.send("who")
                answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            views[answer["pid"]] = {sid[:8]: pid for sid, pid in answer["chat"].items()}
            if set(views) == set(pids) and all(
                set(ids.values()) <= set(view) for view in views.values()
            ):
                break
            await asyncio.sleep(0.05)
        holders = views.get(pids[0], {})
        assert set(views) == set(pids) and set(ids.values()) <= set(holders), (
            f"presence did not converge within {WAIT} s: {views}"
        )
        workers_used = {holders[sid] for sid in ids.values()}
        assert workers_used <= set(pids), (workers_used, pids)
        assert len(workers_used) > 1, f"all 40 chat sessions on one worker: {workers_used}"
        for sent in range(MESSAGES_EACH):
            for index, ws in enumerate(clients):
                await ws.send(f"c{index}-m{sent}")
        expected = [
            f"{ids[i]}: c{i}-m{k}" for i in range(CHAT_CLIENTS) for k in range(MESSAGES_EACH)
        ]

        def chat_lines(index: int) -> list[str]:
            return [
                line
                for line in received[index]
                if not line.startswith("* ") and not line.endswith("-hello")
            ]

        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if all(len(chat_lines(i)) >= len(expected) for i in range(CHAT_CLIENTS)):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a duplicate would come now
        for index in range(CHAT_CLIENTS):
            lines = chat_lines(index)
            counts = Counter(lines)
            missing = [m for m in expected if counts[m] == 0]
            twice = [m for m, n in counts.items() if n > 1]
            stray = [m for m in counts if m not in expected]
            assert not (missing or twice or stray), (
                f"client {index} (session {ids[index]}): {len(missing)} missing {missing[:5]},"
                f" {len(twice)} more than once {twice[:5]}, unexpected {stray[:5]}"
            )
            for sender in range(CHAT_CLIENTS):
                own = [m for m in lines if m.startswith(f"{ids[sender]}: ")]
                assert own == [f"{ids[sender]}: c{sender}-m{k}" for k in range(MESSAGES_EACH)]
        for ws in clients:
            await ws.close()
        await asyncio.gather(*readers)

    asyncio.run(asyncio.wait_for(scenario(), WAIT * 3))
