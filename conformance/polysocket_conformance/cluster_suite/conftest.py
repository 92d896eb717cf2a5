"""Fixtures of the cluster suite: the private broker and the server processes."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support import Broker, Node


@pytest.fixture(scope="session")
def broker_settings(pytestconfig: pytest.Config) -> tuple[str, str]:
    url = pytestconfig.getoption("polysocket_backplane")
    command = pytestconfig.getoption("polysocket_broker_command")
    if not command:
        raise pytest.UsageError(
            "the cluster suite starts a private broker: give --polysocket-broker-command"
            " (\"redis-server --port {port} --save '' --appendonly no\")"
        )
    for option, value in (
        ("--polysocket-backplane", url),
        ("--polysocket-broker-command", command),
    ):
        if "{port}" not in value:
            raise pytest.UsageError(f"{option}={value!r}: write the broker's port as {{port}}")
    return url, command


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def broker(broker_settings: tuple[str, str], logs: Path) -> Iterator[Broker]:
    """A private broker shared by a module's tests (each test has a cluster name of its own)."""
    url, command = broker_settings
    with Broker(command, url, logs) as started:
        yield started


@pytest.fixture
def private_broker(broker_settings: tuple[str, str], logs: Path) -> Iterator[Broker]:
    """A broker of the test's own, which it may kill and restart."""
    url, command = broker_settings
    with Broker(command, url, logs) as started:
        yield started


@pytest.fixture
def launch(logs: Path) -> Iterator[Callable[[Broker, int], list[Node]]]:
    """``launch(broker, n)``: ``n`` server processes in a cluster named for this test."""
    nodes: list[Node] = []
    cluster = f"suite-{secrets.token_hex(4)}"

    def start(broker: Broker, count: int) -> list[Node]:
        fresh = [Node(broker.url, cluster, logs, len(nodes) + i) for i in range(count)]
        nodes.extend(fresh)
        for node in fresh:
            node.wait_ready()
        return fresh

    yield start
    for node in nodes:
        node.close()
    for node in nodes:  # pytest shows it when the test failed
        print(f"--- {node.log_path.name}\n{node.log()[-4000:]}")
