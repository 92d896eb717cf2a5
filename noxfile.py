"""Every session polysocket has. A bare ``nox`` runs what CI runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = [
    "lint",
    "tests",
    "asgi_fresh_venv",
    "conformance",
    "conformance_picows",
    "backplanes",
    "backplane_nats",
    "interop",
    "minimums",
    "autobahn",
    "autobahn_performance",
    "mutants",
]
nox.options.error_on_missing_interpreters = True

ENGINES = ["aiohttp", "websockets", "tornado"]
SUITE = Path(__file__).parent / "conformance" / "polysocket_conformance"
PEERS = SUITE / "peers"
PICOWS = "engines/polysocket-picows"
#: The suite's mutation check: engines with one planted bug each (nox -s mutants).
MUTANTS = "conformance/mutants"
#: Engines shipped as distributions of their own, installed like any outside plugin.
DISTRIBUTIONS = {"picows": PICOWS}
#: Backplanes shipped as distributions of their own, found through their entry point.
NATS = "backplanes/polysocket-nats"
ALL_ENGINES = [*ENGINES, *DISTRIBUTIONS]
#: Built-in engines that only serve (no "client" capability): their conformance run tests the
#: server half (the suite skips the client tests), and Autobahn drives their server side only.
SERVER_ONLY = ["uvicorn"]
#: (engine, side) of the Autobahn sessions.
AUTOBAHN_RUNS = [
    *((engine, side) for engine in ALL_ENGINES for side in ("server", "client")),
    *((engine, "server") for engine in SERVER_ONLY),
]


def _install(session: nox.Session, *engines: str) -> None:
    """polysocket with its built-in engines, plus the distributions of ``engines``."""
    session.install("-e", ".[dev]")
    for engine in engines:
        if engine in DISTRIBUTIONS:
            session.install("-e", DISTRIBUTIONS[engine])


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, then mypy --strict (pyproject's [tool.mypy]) on the core, every engine and
    backplane in this repository, the conformance suite and the mutants, with their libraries
    installed."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.install("-e", ".[dev]", "-e", PICOWS, "-e", NATS, "-e", MUTANTS, "mypy==2.4.1")
    session.run("mypy", "src", "engines", "conformance", "backplanes")


@nox.session
def tests(session: nox.Session) -> None:
    """The core's own tests, against the in-memory engine; the few that run
    ``polysocket serve`` in a process of its own do so on every engine, picows included.
    The Node `ws` peer is installed for the ASGI test that mounts a registry in FastAPI."""
    _install(session, "picows")
    _install_node_peer(session)
    session.run("pytest", "tests", *SUITE_WORKERS, *session.posargs)


#: Seconds the fresh venv's uvicorn has to start listening.
FRESH_SERVER_START = 30


@nox.session
def asgi_fresh_venv(session: nox.Session) -> None:
    """Issue 12's first "done when", as a user would do it: a plain venv (``python -m
    venv``, in a temporary directory) gets only ``pip install ".[uvicorn]"`` (not editable,
    no dev extra), runs ``uvicorn polysocket.asgi:app --factory`` (the bundled sample) from
    outside the repository, and tests/test_asgi_fresh_venv.py, run from this session's own
    venv, checks that install and runs the seed's browser snippet against the server in
    Debian's Chromium."""
    _install(session)  # pytest, playwright and the suite's browser driver, here only
    with tempfile.TemporaryDirectory(prefix="polysocket-fresh-") as scratch:
        venv = Path(scratch) / "venv"
        began = time.monotonic()
        session.run("python", "-m", "venv", str(venv))
        python = str(venv / "bin" / "python")
        repository = Path(__file__).parent.resolve()
        pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        session.run(*pip, f"{repository}[uvicorn]", external=True)
        session.log(f"fresh venv with polysocket[uvicorn] in {time.monotonic() - began:.1f} s")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # only what a user's shell has: no PYTHONPATH, VIRTUAL_ENV or POLYSOCKET_ROOT
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", scratch)}
        command = [str(venv / "bin" / "uvicorn"), "polysocket.asgi:app", "--factory"]
        command += ["--port", str(port)]
        log_path = Path(scratch) / "uvicorn.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                command, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            _wait_listening(session, server, port, log_path)
            session.run(
                "pytest",
                "tests/test_asgi_fresh_venv.py",
                "-p",
                "no:randomly",
                *session.posargs,
                env={
                    "POLYSOCKET_FRESH_URL": f"http://127.0.0.1:{port}",
                    "POLYSOCKET_FRESH_VENV": str(venv),
                    "POLYSOCKET_FRESH_PID": str(server.pid),
                },
            )
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            session.log(f"uvicorn from the fresh venv said:\n{log_path.read_text()}")


def _wait_listening(
    session: nox.Session, server: subprocess.Popen[bytes], port: int, log_path: Path
) -> None:
    deadline = time.monotonic() + FRESH_SERVER_START
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if server.poll() is not None:
                session.error(f"uvicorn exited ({server.returncode}): {log_path.read_text()}")
            if time.monotonic() > deadline:
                session.error(f"uvicorn did not listen in {FRESH_SERVER_START} s")
            time.sleep(0.1)


def _install_node_peer(session: nox.Session) -> None:
    if shutil.which("npm") is None:
        session.warn("npm not found: the Node.js 'ws' peer tests will skip (or fail in CI)")
        return
    session.run("npm", "ci", "--silent", "--prefix", str(PEERS), external=True)


#: pytest-xdist for the suite runs and the core's tests: two worker processes, each taking
#: whole modules (the module-scoped peers and servers stay in one process). Most tests wait on
#: sockets, timers and child processes, so two workers on this 2-core machine take 37 s where
#: one takes 65 s (the suite on aiohttp), 51 s where one takes 94 s (tests/).
SUITE_WORKERS = ["-n", "2", "--dist", "loadfile"]


def _run_suite(session: nox.Session, engine: str) -> None:
    """The conformance suite (the installed pytest plugin) against one engine, interop aside."""
    session.run(
        "pytest",
        "--pyargs",
        "polysocket_conformance",
        f"--polysocket-engine={engine}",
        "-m",
        "not polysocket_interop",
        *SUITE_WORKERS,
        *session.posargs,
    )


@nox.session
@nox.parametrize("engine", [*ENGINES, *SERVER_ONLY])
def conformance(session: nox.Session, engine: str) -> None:
    """The conformance suite, installed as a pytest plugin, against one engine."""
    _install(session, engine)
    _install_node_peer(session)
    _run_suite(session, engine)


@nox.session
def conformance_picows(session: nox.Session) -> None:
    """The suite against the third-party picows engine, installed through its entry point
    like any outside package, then the engine's own tests."""
    _install(session, *DISTRIBUTIONS)
    _install_node_peer(session)
    _run_suite(session, "picows")
    session.run("pytest", f"{PICOWS}/tests", "--polysocket-engine=picows", *session.posargs)


#: The cluster suite's brokers: backplane URL template and the private broker's command
#: (``{port}``: a free port). Backplanes shipped as distributions of their own run the same
#: suite from their own directory.
BACKPLANES = {
    "redis": ("redis://127.0.0.1:{port}/0", "redis-server --port {port} --save '' --appendonly no"),
}


#: The shared suites every backplane runs: its links against the contract, then three
#: `polysocket serve` nodes over it.
SHARED_BACKPLANE_SUITES = ("backplane_link_suite", "cluster_suite")


@nox.session
def backplanes(session: nox.Session) -> None:
    """The shared backplane link suite and cluster suite once per built-in backplane, each
    with private brokers: Debian's redis-server for redis (.ci/run installs it). The core's
    cluster tests (tests/test_cluster.py) and the --workers chat test over Redis are in the
    tests session."""
    _install(session)
    for name, (url, command) in BACKPLANES.items():
        broker = command.split()[0]
        if shutil.which(broker) is None:
            session.error(
                f"the {name} backplane's suite needs {broker!r} on PATH: install it (Debian:"
                f" apt-get install {broker})"
            )
        for suite in SHARED_BACKPLANE_SUITES:
            session.run(
                "pytest",
                "--pyargs",
                f"polysocket_conformance.{suite}",
                f"--polysocket-backplane={url}",
                f"--polysocket-broker-command={command}",
                *session.posargs,
            )


#: The suites' NATS broker: a private nats-server per test module, with a password so that
#: the link suite checks no error shows it.
NATS_LINK_URL = "nats://polysocket:link-suite-pw@127.0.0.1:{port}"
NATS_BROKER = "{nats_server} -a 127.0.0.1 -p {{port}} --user polysocket --pass link-suite-pw"


@nox.session
def backplane_nats(session: nox.Session) -> None:
    """The NATS backplane, installed from its own directory and found through its entry
    point: the shared backplane link suite and the shared cluster suite (three `polysocket
    serve` nodes) against private nats-servers (Debian's nats-server package; .ci/run
    installs it), then the distribution's own tests."""
    session.install("-e", ".[dev]", "-e", NATS)
    # Debian puts it in /usr/sbin, which is not on a non-root user's PATH.
    nats_server = shutil.which("nats-server", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if nats_server is None:
        session.error("nats-server not found: install it (Debian: apt-get install nats-server)")
    broker = NATS_BROKER.format(nats_server=nats_server)
    options = [f"--polysocket-backplane={NATS_LINK_URL}", f"--polysocket-broker-command={broker}"]
    for suite in SHARED_BACKPLANE_SUITES:
        session.run("pytest", "--pyargs", f"polysocket_conformance.{suite}", *options)
    # issue 13's chat test (4 workers, 40 clients, every message to all exactly once) on NATS
    session.run("pytest", "tests/test_workers.py", "-k", "chat_sample", *options)
    session.run("pytest", f"{NATS}/tests", *session.posargs)


@nox.session
def interop(session: nox.Session) -> None:
    """Every engine, picows included, against every other: clients x servers, and the
    property tests."""
    _install(session, *DISTRIBUTIONS)
    _install_node_peer(session)
    session.run(
        "pytest", "--pyargs", "polysocket_conformance", "-m", "polysocket_interop", *session.posargs
    )


#: The oldest library versions pyproject.toml allows. aiohttp 3.14.1 answers reserved bits
#: (Autobahn 3.4) with 1000 instead of 1002 and 3.10 lacks ClientWSTimeout; websockets 14.0
#: loses messages that arrive just before a close frame; tornado 6.3 passes everything;
#: python-socks 2.4 (async-timeout from its asyncio extra) opens the proxy tunnels; uvicorn
#: 0.50 fails the suite's flow tests (a WebSocket send does not wait for room) and its
#: subprotocol tests, 0.43 sends no pings on websockets-sansio; 0.52.4 passes everything.
#: redis 5.0.1 (the first with aclose()) passes tests/test_cluster.py.
MINIMUMS = [
    "aiohttp==3.14.2",
    "websockets==14.1",
    "tornado==6.3",
    "python-socks[asyncio]==2.4.0",
    "uvicorn==0.52.4",
    "redis==5.0.1",
]
#: The private attributes of these libraries that engines still use are listed in
#: engines/polysocket_engines/private_api.py; tests/test_private_api.py checks them on these
#: versions (here) and on the newest (the tests session), so an upgrade that drops one fails
#: loudly.


@nox.session
def minimums(session: nox.Session) -> None:
    """The conformance suite on the built-in engines with the oldest libraries allowed."""
    _install(session)
    session.install(*MINIMUMS)
    _install_node_peer(session)
    session.run("pytest", "tests/test_private_api.py", "tests/test_cluster.py", *session.posargs)
    for engine in [*ENGINES, *SERVER_ONLY]:
        _run_suite(session, engine)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (bench/; not run by CI): every scenario, polysocket against the
    raw library in alternating fresh processes, then docs/performance.md and its chart.

    Arguments go to `python -m bench run`: `nox -s bench -- --quick` is a smoke run of 2-3
    minutes, `nox -s bench -- server-echo --engines picows` one scenario and engine."""
    session.install("-e", ".[bench]", "-e", PICOWS)
    session.run("python", "-m", "bench", "run", *session.posargs)
    session.run("python", "-m", "bench", "report")


@nox.session
def soak(session: nox.Session) -> None:
    """About 60 s of 200 clients with random traffic, slow readers and disconnects against
    `polysocket serve` (reliability/soak.py; not run by CI): `nox -s soak -- --engine
    tornado`. Fails if the server dies or its RSS ends 200 MiB or more above its start."""
    _install(session, *DISTRIBUTIONS)
    session.run("python", "reliability/soak.py", *session.posargs)


AUTOBAHN = ["autobahn/run.py", "--allow", "autobahn/allowed-failures.toml"]


@nox.session
@nox.parametrize(("engine", "side"), AUTOBAHN_RUNS)
def autobahn(session: nox.Session, engine: str, side: str) -> None:
    """The Autobahn TestSuite (through kosoku) on one engine and side, without the 9.* cases.

    Reports go to autobahn/reports/ENGINE-SIDE/; `python autobahn/run.py --summarize
    autobahn/reports > docs/conformance.md` renders the summary.
    """
    _install(session, engine)
    session.run(
        "python",
        *AUTOBAHN,
        f"--engine={engine}",
        f"--side={side}",
        "--exclude=9.*",
        "--report-dir=autobahn/reports",
        *session.posargs,
    )


@nox.session
@nox.parametrize(("engine", "side"), AUTOBAHN_RUNS)
def autobahn_performance(session: nox.Session, engine: str, side: str) -> None:
    """Only the Autobahn 9.* cases (limits and performance: up to 16 MiB messages)."""
    _install(session, engine)
    session.run(
        "python",
        *AUTOBAHN,
        f"--engine={engine}",
        f"--side={side}",
        "--cases=9.*",
        "--report-dir=autobahn/reports-performance",
        "--case-timeout=120",
        *session.posargs,
    )


#: Per-test limit in the mutants session: a mutant that hangs a test is killed by it.
MUTANT_TEST_TIMEOUT = 20


@nox.session
def mutants(session: nox.Session) -> None:
    """The conformance suite against every mutant engine (polysocket_mutants): each is the
    aiohttp engine with one planted bug, and the suite must fail (pytest exit code 1). A
    mutant the suite passes, or any other exit code, fails the session. The control (no
    bug) must pass the tests that killed them (it runs last, on exactly those tests; alone,
    on the whole suite). `nox -s mutants -- NAME...` runs only those mutants (the control
    too only if named)."""
    _install(session)
    session.install("-e", MUTANTS)
    _install_node_peer(session)
    session.run("pytest", f"{MUTANTS}/tests", "-q", "-p", "no:randomly")
    listing = session.run("python", "-m", "polysocket_mutants", silent=True)
    assert isinstance(listing, str)
    plan = json.loads(listing)
    if session.posargs:
        unknown = set(session.posargs) - {mutant["name"] for mutant in plan}
        if unknown:
            session.error(f"no such mutant: {', '.join(sorted(unknown))}")
        plan = [mutant for mutant in plan if mutant["name"] in session.posargs]
    modules = sorted(path.stem for path in SUITE.glob("test_*.py"))
    rows: list[tuple[str, str, float, str]] = []
    wrong: list[str] = []
    # The tests that killed a mutant, as (node id, mutant): the control must pass each.
    killers: list[tuple[str, str]] = []
    started = time.monotonic()
    plan.sort(key=lambda mutant: mutant["expect"] == "pass")  # the control last
    for mutant in plan:
        name, expect = mutant["name"], mutant["expect"]
        first = [module for module in mutant["first"] if module in modules]
        if first != mutant["first"]:
            session.warn(f"{name}: no such test module: {set(mutant['first']) - set(first)}")
        order = [*first, *(module for module in modules if module not in first)]
        tests = ["--pyargs", *(f"polysocket_conformance.{module}" for module in order)]
        if expect == "pass" and killers:
            tests = [_for_engine(test, killer, name) for test, killer in killers]
        began = time.monotonic()
        try:
            output = session.run(
                "pytest",
                *tests,
                f"--polysocket-engine={name}",
                "-m",
                "not polysocket_interop",
                "-x",
                "-q",
                "-p",
                "no:randomly",
                f"--timeout={MUTANT_TEST_TIMEOUT}",
                "-rfE",
                success_codes=[1] if expect == "fail" else [0],
                silent=True,
            )
            code = 1 if expect == "fail" else 0
        except CommandFailed as failed:
            code, output = _exit_code(failed), ""
        seconds = time.monotonic() - began
        failure = _first_failure(str(output)) if code == 1 else ""
        if expect == "fail" and failure.startswith(("FAILED ", "ERROR ")):
            killers.append((failure.split(" - ", 1)[0].split(" ", 1)[1], name))
        first = failure.split(" - ", 1)[0].split("/")[-1]
        first = first.replace(f"{name}-", "").replace(f"[{name}]", "")
        verdict = {0: "survived", 1: "killed"}.get(code, f"pytest exit code {code}")
        if expect == "pass":
            verdict = "passed (control)" if code == 0 else f"control failed: {verdict}"
        rows.append((name, verdict, seconds, first))
        session.log(f"{name}: {verdict} in {seconds:.1f} s {failure}")
        if expect == "fail" and code != 1:
            why = "the suite passed" if code == 0 else f"pytest exited with {code}, not 1"
            wrong.append(f"{name} ({mutant['bug']}): {why}")
        elif expect == "pass" and code != 0:
            wrong.append(f"{name}: the suite failed without any planted bug (exit {code})")
    width = max(len(row[0]) for row in rows)
    session.log(
        f"mutants, {time.monotonic() - started:.0f} s in all:\n"
        + "\n".join(
            f"  {n:<{width}}  {verdict:<16} {seconds:6.1f} s  {first}"
            for n, verdict, seconds, first in rows
        )
    )
    if wrong:
        session.error("the mutation check failed:\n  " + "\n  ".join(wrong))


def _for_engine(test: str, engine: str, other: str) -> str:
    """Node id ``test``, parametrized for engine ``engine``, as it is for engine ``other``."""
    path, bracket, params = test.partition("[")
    return path + bracket + params.replace(engine, other) if bracket else test


def _first_failure(output: str) -> str:
    """The first FAILED/ERROR line of a pytest ``-rfE`` summary."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line
    return "(no FAILED line)"


def _exit_code(failed: CommandFailed) -> int | None:
    """The exit code of a failed command: an attribute from nox 2026.07 on, before that only
    in the message ("Returned code N")."""
    code = getattr(failed, "return_code", None)
    if code is None:
        match = re.fullmatch(r"Returned code (-?\d+)", str(failed.reason))
        code = int(match[1]) if match else None
    return code
