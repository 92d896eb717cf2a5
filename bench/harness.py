"""The benchmark harness: fresh processes, alternating rounds, verified results, ratios.

Stdlib only (the fast test of its logic imports it without the bench dependencies).

How a scenario is measured:

- every *side* (polysocket, or the raw library it is compared with) runs in fresh processes,
  started for each run and stopped after it; the sides of a scenario alternate inside every
  round (polysocket, raw, polysocket, raw ...), and each round runs every side once, so that
  whatever else the machine does at that moment weighs on both sides alike;
- a *ratio* is taken per round, between the two runs of that round, oriented so that more
  than 1 means polysocket did better: of rates (msg/s, opens/s) it is polysocket / raw, of
  times (latency, broadcast time) raw / polysocket. The summary is the median of the
  per-round ratios with their min and max;
- CPU per message is the CPU time (user + system, every thread) of the process under test
  over the measured section, divided by the messages it handled. For a server it is read
  from ``/proc/PID/stat`` (utime + stime) before and after the load; a client process
  measures itself with ``resource.getrusage(RUSAGE_SELF)`` around its measured section;
- every run verifies what it measured (exact echo counts, sampled payloads compared byte
  for byte: :func:`check_echo`); a run that fails verification stops the scenario.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: The header at the start of every echoed payload: connection number and sequence number.
HEADER = 18


class VerificationError(AssertionError):
    """A run's result is wrong (a lost, extra or corrupted message): its figure is void."""


# --- payloads ---------------------------------------------------------------------------------


def header(conn: int, seq: int) -> bytes:
    """The first :data:`HEADER` bytes of message ``seq`` of connection ``conn``."""
    return b"%06d:%010d:" % (conn % 1_000_000, seq % 10_000_000_000)


def filler(size: int) -> bytes:
    """The rest of a payload of ``size`` bytes: printable ASCII (valid as a text message)
    that differs from position to position, so that a shifted or truncated echo shows."""
    if size < HEADER:
        raise ValueError(f"a payload needs at least {HEADER} bytes, not {size}")
    pattern = bytes(range(ord("a"), ord("z") + 1)) + bytes(range(ord("A"), ord("Z") + 1))
    rest = size - HEADER
    return (pattern * (rest // len(pattern) + 1))[:rest]


def payload(conn: int, seq: int, size: int, fill: bytes | None = None) -> bytes:
    """Message ``seq`` of connection ``conn``: header, then ``fill`` (default ``filler(size)``)."""
    return header(conn, seq) + (filler(size) if fill is None else fill)


def check_echo(conn: int, seq: int, size: int, echoed: bytes | str, full: bool) -> None:
    """Raise :class:`VerificationError` unless ``echoed`` is message ``seq`` of ``conn``.

    Every echo's length and header are checked (which message it is); with ``full`` the
    whole payload is compared byte for byte (the sampled ones)."""
    data = echoed.encode() if isinstance(echoed, str) else bytes(echoed)
    if len(data) != size:
        raise VerificationError(f"conn {conn} seq {seq}: echo of {len(data)} bytes, sent {size}")
    if data[:HEADER] != header(conn, seq):
        raise VerificationError(
            f"conn {conn}: expected the echo of seq {seq}, got header {data[:HEADER]!r}"
        )
    if full and data != payload(conn, seq, size):
        raise VerificationError(f"conn {conn} seq {seq}: the echoed payload differs")


def sampled(seq: int, count: int, every: int) -> bool:
    """Whether echo ``seq`` of ``count`` is compared in full: every ``every``-th and the last."""
    return seq % every == 0 or seq == count - 1


# --- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """The median of some per-round values, with their min and max."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), tuple(values))

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.low:.2f}-{self.high:.2f}]"

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "values": self.values}


def ratio(polysocket: float, raw: float, kind: str) -> float:
    """One round's ratio, more than 1 when polysocket did better.

    ``kind`` "rate" (higher is better: msg/s) gives polysocket / raw; "time" (lower is
    better: seconds) gives raw / polysocket."""
    if polysocket <= 0 or raw <= 0:
        raise ValueError(f"cannot take a ratio of {polysocket} and {raw}")
    if kind == "rate":
        return polysocket / raw
    if kind == "time":
        return raw / polysocket
    raise ValueError(f"unknown kind {kind!r}")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``values``, nearest rank."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


# --- processes --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/PID/stat.

    The resolution is one clock tick (usually 10 ms)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICK


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process, every thread (getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new limit.

    Children inherit it, so the harness calls this before it starts any process."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until something accepts TCP connections on ``port`` (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before listening"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def child_env() -> dict[str, str]:
    """The environment of every child: the repository on PYTHONPATH (``bench`` importable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def stop(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def server(command: Sequence[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A server process that accepts connections on ``port``; its output goes to a temporary
    file (read only if it fails to start), so that it never blocks on a full pipe."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=errors,
            stderr=errors,
        )
        try:
            try:
                wait_port(port, process)
            except RuntimeError:
                errors.seek(0)
                output = errors.read().decode(errors="replace")
                raise RuntimeError(f"{' '.join(command)} failed:\n{output[-2000:]}") from None
            yield process
        finally:
            stop(process)


class Child:
    """A process that talks JSON lines: commands on its stdin, events on its stdout."""

    def __init__(self, command: Sequence[str]):
        self.command = list(command)
        # stderr to a file: a chatty child must not block on a full pipe nobody reads.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._buffer = b""

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def expect(self, event: str, timeout: float = 120) -> dict[str, Any]:
        """The next event line; it must be ``event`` (an "error" event raises)."""
        message = self._line(timeout)
        if message.get("event") == "error":
            raise VerificationError(f"{self.command[2:6]}: {message.get('detail')}")
        if message.get("event") != event:
            raise RuntimeError(f"expected {event!r} from {self.command}, got {message}")
        return message

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.command}: no output within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.process.wait(5)
                    self._errors.seek(0)
                    stderr = self._errors.read().decode(errors="replace")
                    raise RuntimeError(
                        f"{' '.join(self.command)} exited ({self.process.returncode}):\n"
                        f"{stderr[-3000:]}"
                    )
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            parsed: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            return self._line(timeout)  # a stray line (a library's print): not ours
        return parsed

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            if self.process.stdin:
                self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._errors.close()


def emit(event: str, **data: Any) -> None:
    """In a child: write one event line for the harness."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


# --- rounds, comparisons, targets -------------------------------------------------------------


@dataclass
class Sample:
    """One run of one side: its figure (msg/s, seconds, KiB ...) and what came with it."""

    value: float
    cpu_us_per_msg: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Side:
    """One side of a scenario: ``run()`` measures it once, in fresh processes."""

    name: str
    run: Callable[[], Sample]


@dataclass(frozen=True)
class Target:
    """A fixed target from the issue: ``value`` compared with ``op`` (">=" or "<=")."""

    text: str
    op: str
    value: float

    def verdict(self, measured: float) -> str:
        good = measured >= self.value if self.op == ">=" else measured <= self.value
        return "PASS" if good else "MISS"

    def as_json(self, measured: float) -> dict[str, Any]:
        return {
            "text": self.text,
            "op": self.op,
            "value": self.value,
            "verdict": self.verdict(measured),
        }


@dataclass
class Comparison:
    """polysocket side against raw side, per round: a ratio ("rate"/"time") or, for
    "memory", the difference polysocket - raw (KiB per connection, lower is better)."""

    name: str
    polysocket: str
    raw: str
    kind: str
    unit: str
    params: dict[str, Any] = field(default_factory=dict)
    target: Target | None = None
    cpu_target: Target | None = None
    #: The figure compared: ``Sample.value`` when None, else ``Sample.extra[metric]``.
    metric: str | None = None

    def figure(self, sample: Sample) -> float:
        return sample.value if self.metric is None else float(sample.extra[self.metric])


def run_rounds(
    sides: Sequence[Side], rounds: int, log: Callable[[str], None] = print
) -> dict[str, list[Sample]]:
    """Every side once per round, in the order given (put polysocket and raw sides
    alternately), for ``rounds`` rounds; returns each side's samples in round order."""
    samples: dict[str, list[Sample]] = {side.name: [] for side in sides}
    for number in range(rounds):
        for side in sides:
            sample = side.run()
            samples[side.name].append(sample)
            cpu = f", {sample.cpu_us_per_msg:.1f} CPU us/msg" if sample.cpu_us_per_msg else ""
            log(f"  round {number + 1}/{rounds} {side.name}: {sample.value:,.4g}{cpu}")
    return samples


def summarize(comparison: Comparison, samples: dict[str, list[Sample]]) -> dict[str, Any]:
    """The figures of one comparison: per-round ratios (or differences), CPU, verdicts."""
    ours, theirs = samples[comparison.polysocket], samples[comparison.raw]
    if len(ours) != len(theirs):
        raise ValueError("both sides need the same number of rounds")
    pairs = [
        (comparison.figure(a), comparison.figure(b)) for a, b in zip(ours, theirs, strict=True)
    ]
    if comparison.kind == "memory":
        per_round = [a - b for a, b in pairs]
    else:
        per_round = [ratio(a, b, comparison.kind) for a, b in pairs]
    spread = Spread.of(per_round)
    result: dict[str, Any] = {
        "name": comparison.name,
        "params": comparison.params,
        "kind": comparison.kind,
        "unit": comparison.unit,
        "polysocket": {"side": comparison.polysocket, **_side(ours, comparison)},
        "raw": {"side": comparison.raw, **_side(theirs, comparison)},
        "ratio" if comparison.kind != "memory" else "difference": spread.as_json(),
    }
    if comparison.target:
        result["target"] = comparison.target.as_json(spread.median)
    cpu_ours = [s.cpu_us_per_msg for s in ours if s.cpu_us_per_msg]
    cpu_theirs = [s.cpu_us_per_msg for s in theirs if s.cpu_us_per_msg]
    if len(cpu_ours) == len(ours) and len(cpu_theirs) == len(theirs):
        cpu = Spread.of([a / b for a, b in zip(cpu_ours, cpu_theirs, strict=True)])
        result["cpu_ratio"] = cpu.as_json()  # polysocket / raw: lower is better
        if comparison.cpu_target:
            result["cpu_target"] = comparison.cpu_target.as_json(cpu.median)
    return result


def _side(samples: list[Sample], comparison: Comparison) -> dict[str, Any]:
    side: dict[str, Any] = {"value": Spread.of([comparison.figure(s) for s in samples]).as_json()}
    cpu = [s.cpu_us_per_msg for s in samples if s.cpu_us_per_msg]
    if cpu:
        side["cpu_us_per_msg"] = Spread.of(cpu).as_json()
    extras = [s.extra for s in samples if s.extra]
    if extras:
        side["extra"] = extras
    return side


def format_result(result: dict[str, Any]) -> str:
    """One comparison as a line of the console table."""
    key = "difference" if result["kind"] == "memory" else "ratio"
    spread = Spread(result[key]["median"], result[key]["min"], result[key]["max"], ())
    ours, theirs = result["polysocket"], result["raw"]
    unit = result["unit"]
    text = (
        f"{result['name']:<44} {ours['value']['median']:>11,.5g}"
        f" vs {theirs['value']['median']:>11,.5g}"
        f" {unit:<8} {'diff' if key == 'difference' else 'ratio'} {spread}"
    )
    if "cpu_us_per_msg" in ours and "cpu_us_per_msg" in theirs:
        text += (
            f" | CPU us/msg {ours['cpu_us_per_msg']['median']:.1f} vs"
            f" {theirs['cpu_us_per_msg']['median']:.1f}"
        )
        if "cpu_ratio" in result:
            text += f" ({result['cpu_ratio']['median']:.2f}x)"
    for name in ("target", "cpu_target"):
        if name in result:
            text += f"  [{result[name]['verdict']} {result[name]['text']}]"
    return text


#: Paths the suite writes, as git pathspecs that exclude them.
GENERATED = [":!bench/results", ":!docs/performance.md", ":!docs/performance.png"]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            # The suite's own output (results, the doc) does not make the code dirty.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *GENERATED],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(scenario: str, settings: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    """bench/results/<scenario>.json, read by ``python -m bench report``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}.json"
    document = {
        "scenario": scenario,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": git_commit(),
        "settings": settings,
        "results": results,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
