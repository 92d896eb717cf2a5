"""pytest plugin entry of the polysocket conformance suite.

Run the suite against any installed engine, without a copy of the polysocket repository::

    pytest --pyargs polysocket_conformance --polysocket-engine=NAME

Without ``--polysocket-engine`` every engine the registry reports as available is tested.
Every conformance test that takes an ``engine`` argument runs once per engine; every test
that takes ``peer`` runs once per echo peer (``websockets`` and ``node-ws``), whether or not
it takes ``engine``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .peer_processes import KINDS, Peer, PeerUnavailable, require_peers, start_peer

if TYPE_CHECKING:
    from .rawframes import RawServer
    from .server_support import ServerThread

PACKAGE = "polysocket_conformance"
MARKER = "polysocket_conformance"

#: A test that takes ``engine`` needs its ``"client"`` capability unless it serves with it:
#: it uses one of these fixtures or carries this marker.
SERVER_MARKER = "polysocket_server"
SERVER_FIXTURES = ("serve_registry", "flow_server")

_report_key = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("polysocket", "polysocket conformance suite")
    group.addoption(
        "--polysocket-engine",
        action="append",
        dest="polysocket_engines",
        default=None,
        metavar="NAME",
        help="engine to run the conformance suite against (repeatable); default: every"
        " engine polysocket reports as available",
    )
    group.addoption(
        "--polysocket-backplane",
        dest="polysocket_backplane",
        default=None,
        metavar="URL_TEMPLATE",
        help="run the cluster suite (polysocket_conformance.cluster_suite) with this backplane"
        " URL, '{port}' standing for the private broker's port (redis://127.0.0.1:{port}/0);"
        " without it the cluster suite is not collected",
    )
    group.addoption(
        "--polysocket-broker-command",
        dest="polysocket_broker_command",
        default=None,
        metavar="COMMAND",
        help="the cluster suite's private broker, '{port}' standing for a free port"
        " (\"redis-server --port {port} --save '' --appendonly no\")",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: parametrize the test's `engine` argument over the selected polysocket"
        " engines (automatic for the tests of the polysocket_conformance package)",
    )
    config.addinivalue_line(
        "markers",
        f"{SERVER_MARKER}: the test serves with `engine` (its clients are"
        " `support.client_engine(engine)`), so it runs on a server-only engine too (automatic"
        f" for tests that use {', '.join(SERVER_FIXTURES)})",
    )
    config.addinivalue_line(
        "markers",
        "polysocket_interop: the test pairs the engine under test with every available engine"
        " (automatic for tests that take `other_engine`)",
    )
    chosen = config.getoption("polysocket_engines")
    if chosen:
        _check_engines(chosen)


CLUSTER_SUITE = Path(__file__).parent / "cluster_suite"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The cluster suite runs for a backplane, named with ``--polysocket-backplane``."""
    if config.getoption("polysocket_backplane"):
        return None
    if collection_path == CLUSTER_SUITE or CLUSTER_SUITE in collection_path.parents:
        return True
    return None


def _check_engines(names: list[str]) -> None:
    from polysocket.plugins import registry

    statuses = {s.name: s for s in registry.statuses()}
    for name in names:
        status = statuses.get(name)
        if status is None:
            raise pytest.UsageError(
                f"--polysocket-engine={name}: no such engine; installed engines:"
                f" {', '.join(sorted(statuses)) or 'none'}"
            )
        if status.status != "available":
            raise pytest.UsageError(
                f"--polysocket-engine={name}: the engine is {status.status} ({status.detail})"
            )


def selected_engines(config: pytest.Config) -> list[str]:
    chosen = config.getoption("polysocket_engines")
    if chosen:
        return list(dict.fromkeys(chosen))
    return available_engines()


def available_engines() -> list[str]:
    from polysocket.plugins import registry

    return [s.name for s in registry.statuses() if s.status == "available"]


def _is_conformance_module(module: Any) -> bool:
    name = getattr(module, "__name__", "")
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not config.getoption("polysocket_engines"):
        return None
    return [f"polysocket engines: {', '.join(selected_engines(config))}"]


@pytest.hookimpl(tryfirst=True)  # before pytest parametrizes `peer`: ids read [ENGINE-PEER]
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not {"engine", "other_engine"} & set(metafunc.fixturenames):
        return
    if not (
        _is_conformance_module(metafunc.module)
        or metafunc.definition.get_closest_marker(MARKER) is not None
    ):
        return
    if "engine" in metafunc.fixturenames:
        names = selected_engines(metafunc.config)
        metafunc.parametrize("engine", names, ids=names)
    if "other_engine" in metafunc.fixturenames:
        # the interop partner: every available engine, whichever ones are under test
        others = available_engines()
        metafunc.parametrize("other_engine", others, ids=[f"with-{n}" for n in others])


#: Per-test limit when pytest-timeout is installed but not configured (a hung engine must
#: fail its test, not stall the run).
DEFAULT_TIMEOUT = 90


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "other_engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.polysocket_interop)
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if config.getoption("timeout", None) or config.getini("timeout"):
        return
    for item in items:
        module = getattr(item, "module", None)
        if _is_conformance_module(module) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_report_key, {})[report.when] = report
    return report


# -- peers ----------------------------------------------------------------------------------


def _start_or_skip(kind: str, log_dir: Path, port: int | None = None) -> Peer:
    try:
        return start_peer(kind, log_dir, port)
    except PeerUnavailable as exc:
        if require_peers():
            pytest.fail(f"{exc} (POLYSOCKET_REQUIRE_PEERS is set, so this is an error)")
        pytest.skip(str(exc))


def _session_peer(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    peer = _start_or_skip(kind, tmp_path_factory.mktemp(f"peer-{kind}"))
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def polysocket_peer_websockets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """The shared ``websockets`` echo peer, started once per session."""
    yield from _session_peer("websockets", tmp_path_factory)


@pytest.fixture(scope="session")
def polysocket_peer_node_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """The shared Node.js ``ws`` echo peer, started once per session."""
    yield from _session_peer("node-ws", tmp_path_factory)


_SESSION_FIXTURES = {
    "websockets": "polysocket_peer_websockets",
    "node-ws": "polysocket_peer_node_ws",
}


@pytest.fixture(params=KINDS, ids=KINDS)
def peer(request: pytest.FixtureRequest) -> Peer:
    """A running echo peer that is not polysocket: ``.uri``, ``.kind``, ``.query()``...

    Parametrized over both kinds in any test that takes it, with or without ``engine``
    (next to ``engine``, test ids read ``[ENGINE-PEER]``).
    """
    kind: str = request.param
    shared: Peer = request.getfixturevalue(_SESSION_FIXTURES[kind])
    shared.check_alive()
    return shared


@pytest.fixture
def start_private_peer(tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    """Factory: ``start_private_peer(kind, port=None)`` starts a fresh peer process of a kind,
    only for this test (it may kill it, and start another on the same ``port``)."""
    started: list[Peer] = []

    def start(kind: str, port: int | None = None) -> Peer:
        peer = _start_or_skip(kind, tmp_path, port)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    """Factory: ``raw_server(frames, answer_close=True, conversation=None)`` starts a
    hand-written server (see :class:`polysocket_conformance.rawframes.RawServer`) that is
    closed after the test."""
    from .rawframes import RawServer

    started: list[RawServer] = []

    def start(
        frames: list[bytes] | None = None,
        *,
        answer_close: bool = True,
        conversation: Callable[..., None] | None = None,
    ) -> RawServer:
        started.append(RawServer(frames, answer_close=answer_close, conversation=conversation))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def serve_registry(engine: str, tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Factory: ``serve_registry(**options)`` serves the test registry (endpoints ``echo``,
    ``chat``, ``failing``...; see ``server_support``) with ``engine`` on a background
    thread, skipping when the engine lacks the ``server`` capability; stopped after the
    test. Server callbacks are recorded in ``server_support.events``, cleared here."""
    from .server_support import ServerThread, events, write_registry
    from .support import require_capability

    require_capability(engine, "server")
    events.clear()
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        started.append(ServerThread(write_registry(tmp_path), engine, **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _polysocket_client_capability(request: pytest.FixtureRequest) -> None:
    """Skip a test that needs ``engine`` as a client when the engine has no client."""
    if not (
        _is_conformance_module(request.node.module)
        or request.node.get_closest_marker(MARKER) is not None
    ):
        return
    callspec = getattr(request.node, "callspec", None)
    engine = callspec.params.get("engine") if callspec is not None else None
    if engine is None:
        return
    if request.node.get_closest_marker(SERVER_MARKER) is not None:
        return
    if set(SERVER_FIXTURES) & set(request.fixturenames):
        return
    from .support import require_capability

    require_capability(engine, "client")


# -- every conformance test leaves no client behind -----------------------------------------


@pytest.fixture(autouse=True)
def _polysocket_no_leftover_clients(request: pytest.FixtureRequest) -> Iterator[None]:
    if not (
        _is_conformance_module(request.node.module)
        or request.node.get_closest_marker(MARKER) is not None
    ):
        yield
        return
    import polysocket

    yield
    leftovers = polysocket.getClients()
    for info in leftovers:
        client = polysocket.getClient(info["id"])
        if client is not None:
            client.close()
    remaining = polysocket.getClients()
    assert not remaining, f"clients still registered after close(): {remaining}"
    reports = request.node.stash.get(_report_key, {})
    if leftovers and "call" in reports and reports["call"].passed:
        pytest.fail(f"the test left clients open (closed them now): {leftovers}")
