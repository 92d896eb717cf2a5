"""Run the Autobahn TestSuite cases (through kosoku) against polysocket on one engine.

    python autobahn/run.py --engine aiohttp --side server --exclude '9.*' \\
        --report-dir autobahn/reports --allow autobahn/allowed-failures.toml
    python autobahn/run.py --summarize autobahn/reports > docs/conformance.md

``--side server`` serves an echo endpoint with ``python -m polysocket serve`` and lets
``kosoku -m fuzzingclient`` drive it. ``--side client`` starts ``kosoku -m fuzzingserver`` and
drives it with ``polysocket.createWebsocket`` the way Autobahn clients are driven
(``/getCaseCount``, ``/runCase``, ``/updateReports``), echoing every message from ``onMessage``.

kosoku writes its usual report (``index.json``, one JSON and one HTML file per case) into
``REPORT_DIR/ENGINE-SIDE/``; this script adds ``summary.json`` there and exits non-zero when a
case failed that ``--allow`` does not list for that engine and side.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import importlib.metadata
import json
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Verdicts that pass, as Autobahn and kosoku count them. UNIMPLEMENTED (an optional feature,
#: here permessage-deflate, that the peer did not negotiate) does not fail a run either.
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
NOT_FAILING = (*PASSING, "UNIMPLEMENTED")
#: Columns of the tables, in order; any other verdict kosoku reports gets its own column.
COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
#: Closing-handshake verdicts that pass.
CLOSE_PASSING = ("OK", "INFORMATIONAL")

ENDPOINT = "echo"
SERVICE_PATH = "/websockets/v4/service/"
SERVE_LINE = re.compile(r"serving \d+ endpoint\(s\) from .* on http://([^:/]+):(\d+)/ with (\S+)")
FUZZINGSERVER_LINE = re.compile(r"fuzzingserver listening on ws://([^\s:]+):(\d+)")
ECHO_HANDLER = '''"""Echo every message back (written by autobahn/run.py)."""


def onMessage(message):
    return message
'''
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 20.0


# -- small helpers ---------------------------------------------------------------------------


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def kosoku_command() -> list[str]:
    """The ``kosoku`` console script of this interpreter's environment (else on PATH)."""
    beside = Path(sys.executable).with_name("kosoku")
    found = str(beside) if beside.exists() else shutil.which("kosoku")
    if found is None:
        sys.exit("autobahn: kosoku is not installed here: pip install kosoku (or -e '.[dev]')")
    return [found]


def selection_args(cases: Sequence[str], exclude: Sequence[str]) -> list[str]:
    args: list[str] = []
    for case in cases:
        if case != "*":  # kosoku runs the whole suite when no -i is given
            args += ["-i", case]
    for case in exclude:
        args += ["-x", case]
    return args


class LogPump(threading.Thread):
    """Copy a child's stream to a file line by line, and hand lines to a watcher."""

    def __init__(self, stream: Any, path: Path) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._file = path.open("w", encoding="utf-8", errors="replace")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.lines: list[str] = []

    def run(self) -> None:
        for raw in iter(self._stream.readline, ""):
            self._file.write(raw)
            self._file.flush()
            with self._lock:
                self.lines.append(raw.rstrip("\n"))
                self._changed.notify_all()
        self._file.close()
        with self._lock:
            self.lines.append("")  # end of stream marker for waiters
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._lock:
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == "" and not self.is_alive()):
                    return None
                self._changed.wait(min(left, 0.5))


def stop_process(proc: subprocess.Popen[str], timeout: float = SHUTDOWN_TIMEOUT) -> int:
    """SIGTERM the child (only it), wait, and kill it if it does not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- side server: kosoku's fuzzing client drives `polysocket serve` ----------------------------


def write_echo_registry(root: Path) -> None:
    (root / "echo.py").write_text(ECHO_HANDLER, encoding="utf-8")
    descriptor = {
        "handler": "echo",
        "endpoint": ENDPOINT,
        "description": "Echo for the Autobahn TestSuite",
    }
    (root / f"{ENDPOINT}.websocket").write_text(json.dumps(descriptor), encoding="utf-8")


def run_server_side(engine: str, cases: Sequence[str], exclude: Sequence[str], out: Path) -> dict:
    notes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="polysocket-autobahn-") as root:
        write_echo_registry(Path(root))
        serve = [sys.executable, "-m", "polysocket", "serve", root, "--port", "0"]
        serve += ["--engine", engine]
        server = subprocess.Popen(
            serve,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        pump = LogPump(server.stderr, out / "server.log")
        pump.start()
        try:
            match = pump.wait_for(SERVE_LINE, STARTUP_TIMEOUT)
            if match is None:
                stop_process(server)
                pump.join(5)
                sys.exit(
                    f"autobahn: `{shlex.join(serve)}` did not report its port within"
                    f" {STARTUP_TIMEOUT:.0f} s; see {out / 'server.log'}:\n"
                    + "\n".join(pump.lines[-20:])
                )
            host, port = match.group(1), int(match.group(2))
            url = f"ws://{host}:{port}{SERVICE_PATH}{ENDPOINT}"
            write_spec(out, "fuzzingclient", url, cases, exclude, engine)
            fuzz = [*kosoku_command(), "-m", "fuzzingclient", url, "-o", str(out)]
            fuzz += selection_args(cases, exclude)
            notes["kosoku_command"] = shlex.join(["kosoku", *fuzz[1:]])
            with (out / "kosoku.log").open("w", encoding="utf-8") as log:
                done = subprocess.run(fuzz, stdout=log, stderr=subprocess.STDOUT, check=False)
            notes["kosoku_exit"] = done.returncode
        finally:
            notes["server_exit"] = stop_process(server)
            pump.join(5)
    if notes["server_exit"] != 0:
        notes["problems"] = [
            f"`polysocket serve` exited with {notes['server_exit']} on SIGTERM (expected 0);"
            f" see {out / 'server.log'}"
        ]
    return notes


def write_spec(
    out: Path, mode: str, url: str, cases: Sequence[str], exclude: Sequence[str], engine: str
) -> None:
    """The same run as an Autobahn ``wstest`` spec, for reproducing it with the original.

    kosoku 0.1 takes its selection as ``-i``/``-x`` flags (its ``--spec`` is not implemented),
    so this file is for reference and for ``wstest -m fuzzingclient -s ...``.
    """
    spec: dict[str, Any] = {
        "outdir": str(out),
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }
    if mode == "fuzzingclient":
        spec["servers"] = [{"agent": f"polysocket-{engine}", "url": url}]
    else:
        spec["url"] = url
    (out / f"{mode}.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


# -- side client: polysocket clients driven by kosoku's fuzzing server -------------------------


class EchoClient:
    """The handler of one Autobahn connection: echo every message, note the close."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.messages: list[str | bytes] = []
        self.errors: list[str] = []
        self.close_code: int | None = None

    def onMessage(self, message: str | bytes) -> None:
        import polysocket

        self.messages.append(message)
        with contextlib.suppress(polysocket.ConnectionClosedError):
            polysocket.getSession().send(message)

    def onError(self, error: str) -> None:
        self.errors.append(str(error))

    def onClose(self) -> None:
        import polysocket

        self.close_code = polysocket.getCloseCode()
        self.closed.set()


def drive(base: str, path: str, engine: str, timeout: float) -> tuple[EchoClient, str | None]:
    """Open ``base + path`` as a polysocket client and wait for ``onClose``."""
    import polysocket

    handler = EchoClient()
    try:
        client = polysocket.createWebsocket(base + path, handler, engine=engine, max_size=None)
    except polysocket.WebsocketError as exc:
        return handler, f"createWebsocket failed: {exc}"
    if handler.closed.wait(timeout):
        return handler, None
    client.close(1000, "case timed out")  # flushes, closes, waits for onClose
    return handler, f"no onClose within {timeout:.0f} s; closed it"


def run_client_side(
    engine: str, cases: Sequence[str], exclude: Sequence[str], out: Path, case_timeout: float
) -> dict:
    notes: dict[str, Any] = {"problems": []}
    fuzz = [*kosoku_command(), "-m", "fuzzingserver", "127.0.0.1:0", "-o", str(out)]
    fuzz += selection_args(cases, exclude)
    notes["kosoku_command"] = shlex.join(["kosoku", *fuzz[1:]])
    fuzzer = subprocess.Popen(
        fuzz,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pump = LogPump(fuzzer.stdout, out / "kosoku.log")
    pump.start()
    agent = f"polysocket-{engine}"
    try:
        match = pump.wait_for(FUZZINGSERVER_LINE, STARTUP_TIMEOUT)
        if match is None:
            sys.exit(
                f"autobahn: `{shlex.join(fuzz)}` did not report its port within"
                f" {STARTUP_TIMEOUT:.0f} s:\n" + "\n".join(pump.lines[-20:])
            )
        base = f"ws://{match.group(1)}:{match.group(2)}"
        write_spec(out, "fuzzingserver", base, cases, exclude, engine)
        counter, problem = drive(base, "/getCaseCount", engine, STARTUP_TIMEOUT)
        if problem or not counter.messages:
            sys.exit(f"autobahn: could not read /getCaseCount from kosoku: {problem}")
        count = int(counter.messages[0])
        notes["case_count"] = count
        for number in range(1, count + 1):
            _, problem = drive(base, f"/runCase?case={number}&agent={agent}", engine, case_timeout)
            if problem:
                notes["problems"].append(f"case #{number}: {problem}")
        _, problem = drive(base, f"/updateReports?agent={agent}", engine, STARTUP_TIMEOUT)
        if problem:
            notes["problems"].append(f"updateReports: {problem}")
        try:
            notes["kosoku_exit"] = fuzzer.wait(STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            notes["problems"].append("kosoku did not finish after /updateReports")
    finally:
        notes.setdefault("kosoku_exit", stop_process(fuzzer))
        pump.join(5)
    return notes


# -- the report --------------------------------------------------------------------------


def verdict(entry: dict[str, Any]) -> str:
    """One verdict per case: the message verdict, or FAILED when the closing handshake failed."""
    behavior = entry.get("behavior", "MISSING")
    if behavior in PASSING and entry.get("behaviorClose") not in CLOSE_PASSING:
        return "FAILED"
    return behavior


def case_key(case_id: str) -> list[int]:
    return [int(part) for part in case_id.split(".") if part.isdigit()]


def load_allow_list(path: Path | None) -> list[dict[str, str]]:
    if path is None or not path.exists():
        return []
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = data.get("failure", [])
    for entry in entries:
        missing = [k for k in ("case", "engine", "side", "cause") if not entry.get(k)]
        if missing:
            sys.exit(f"autobahn: {path}: an entry lacks {', '.join(missing)}: {entry}")
    return entries


def allowed(entries: Iterable[dict[str, str]], case: str, engine: str, side: str) -> dict | None:
    for entry in entries:
        if (
            entry["engine"] == engine
            and entry["side"] == side
            and fnmatch.fnmatchcase(case, entry["case"])
        ):
            return entry
    return None


def summarize_report(
    out: Path, engine: str, side: str, entries: list[dict[str, str]]
) -> dict[str, Any]:
    index_file = out / "index.json"
    if not index_file.exists():
        return {"cases": {}, "counts": {}, "failures": [], "problems": ["no index.json written"]}
    index = json.loads(index_file.read_text(encoding="utf-8"))
    results: dict[str, dict[str, Any]] = {}
    for agent, by_case in index.items():
        for case, entry in by_case.items():
            results[case] = {**entry, "agent": agent}
    cases: dict[str, dict[str, Any]] = {}
    failures = []
    for case in sorted(results, key=case_key):
        entry = results[case]
        detail = {
            "verdict": verdict(entry),
            "behavior": entry.get("behavior"),
            "behaviorClose": entry.get("behaviorClose"),
            "remoteCloseCode": entry.get("remoteCloseCode"),
            "duration_ms": entry.get("duration"),
        }
        cases[case] = detail
        if detail["verdict"] not in NOT_FAILING:
            report = json.loads((out / entry["reportfile"]).read_text(encoding="utf-8"))
            allowance = allowed(entries, case, engine, side)
            failures.append(
                {
                    "case": case,
                    **detail,
                    "expectation": report.get("expectation"),
                    "result": report.get("result"),
                    "resultClose": report.get("resultClose"),
                    "allowed": allowance is not None,
                    "cause": allowance["cause"] if allowance else None,
                    "upstream": allowance.get("upstream") if allowance else None,
                }
            )
    agents = sorted({r["agent"] for r in results.values()})
    return {
        "agent": agents[0] if len(agents) == 1 else agents,
        "cases": cases,
        "counts": dict(Counter(c["verdict"] for c in cases.values())),
        "close_counts": dict(Counter(str(c["behaviorClose"]) for c in cases.values())),
        "failures": failures,
        "problems": [],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn TestSuite (kosoku) against polysocket on one engine."
    )
    parser.add_argument("--engine", help="polysocket engine (see `polysocket engines`)")
    parser.add_argument("--side", choices=("server", "client"), help="which side is tested")
    parser.add_argument(
        "--cases", action="append", help="case id or glob to run (repeatable; default: '*')"
    )
    parser.add_argument(
        "--exclude", action="append", default=[], help="case id or glob to leave out (repeatable)"
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("autobahn/reports"),
        help="reports go to REPORT_DIR/ENGINE-SIDE/ (default: autobahn/reports)",
    )
    parser.add_argument(
        "--allow",
        type=Path,
        help="TOML allow-list of known failures (autobahn/allowed-failures.toml)",
    )
    parser.add_argument(
        "--case-timeout",
        type=float,
        default=60.0,
        help="side client: seconds to wait for one case's onClose (default: 60)",
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="render docs/conformance.md (to stdout) from the summaries found under DIR...",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        from summarize import render  # the renderer lives beside this file

        sys.stdout.write(render(args.summarize))
        return 0
    if not args.engine or not args.side:
        parser.error("--engine and --side are required (or --summarize DIR...)")
    return run(args)


def run(args: argparse.Namespace) -> int:
    engine, side = args.engine, args.side
    cases = args.cases or ["*"]
    out: Path = args.report_dir / f"{engine}-{side}"
    if out.exists():
        shutil.rmtree(out)  # a stale index.json must never be read as this run's
    out.mkdir(parents=True)
    entries = load_allow_list(args.allow)

    import polysocket
    from polysocket.plugins import registry

    try:
        chosen = registry.get(engine)
    except polysocket.WebsocketError as exc:  # unknown engine, library missing
        sys.exit(f"autobahn: {exc}")
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    if side == "server":
        notes = run_server_side(engine, cases, args.exclude, out)
    else:
        notes = run_client_side(engine, cases, args.exclude, out, args.case_timeout)
    elapsed = time.monotonic() - clock

    summary = summarize_report(out, engine, side, entries)
    problems = [*summary.pop("problems"), *notes.pop("problems", [])]
    expected = notes.get("case_count")
    if expected is not None and expected != len(summary["cases"]):
        problems.append(f"kosoku served {expected} cases but reported {len(summary['cases'])}")
    unexplained = [f for f in summary["failures"] if not f["allowed"]]
    failed_cases = [f["case"] for f in summary["failures"]]
    stale = [
        e["case"]
        for e in entries
        if e["engine"] == engine
        and e["side"] == side
        and any(fnmatch.fnmatchcase(c, e["case"]) for c in summary["cases"])
        and not any(fnmatch.fnmatchcase(c, e["case"]) for c in failed_cases)
    ]
    record = {
        "engine": engine,
        "side": side,
        "command": shlex.join(["python", *sys.argv]) if argv_is_ours() else None,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "selection": {"cases": cases, "exclude": args.exclude},
        "versions": {
            "polysocket": polysocket.__version__,
            "engine_library": chosen.library_version(),
            "kosoku": version_of("kosoku"),
            "python": platform.python_version(),
        },
        "library": chosen.library,
        **notes,
        **summary,
        "problems": problems,
        "stale_allowances": stale,
    }
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    counts = summary["counts"]
    shown = [f"{name} {counts.get(name, 0)}" for name in COLUMNS]
    shown += [f"{name} {n}" for name, n in sorted(counts.items()) if name not in COLUMNS]
    status = "ok" if not unexplained and not problems else "FAILED"
    print(
        f"autobahn {engine}/{side}: {sum(counts.values())} cases in {elapsed:.1f} s: "
        + ", ".join(shown)
        + (
            f"; {len(summary['failures']) - len(unexplained)} allow-listed"
            if summary["failures"]
            else ""
        )
        + f" -> {status} (report: {out}/index.html)"
    )
    for failure in unexplained:
        print(
            f"  not allow-listed: {failure['case']} {failure['behavior']}/"
            f"{failure['behaviorClose']} (polysocket's close code {failure['remoteCloseCode']}):"
            f" {failure['resultClose'] or failure['result']}",
            file=sys.stderr,
        )
    for problem in problems:
        print(f"  problem: {problem}", file=sys.stderr)
    for case in stale:
        print(f"  note: allow-list entry {case} ({engine}/{side}) did not fail; drop it?")
    return 1 if unexplained or problems else 0


def argv_is_ours() -> bool:
    return bool(sys.argv) and Path(sys.argv[0]).name == "run.py"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
