"""The benchmark harness's own logic (bench/harness.py): fast, stdlib only, no sockets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's bench/

from bench import harness
from bench.harness import (
    Comparison,
    Sample,
    Side,
    Spread,
    Target,
    VerificationError,
    check_echo,
    cpu_seconds,
    payload,
    percentile,
    ratio,
    run_rounds,
    summarize,
)


def test_spread_is_the_median_with_min_and_max() -> None:
    spread = Spread.of([1.2, 0.8, 1.0, 3.0, 0.9])
    assert (spread.median, spread.low, spread.high) == (1.0, 0.8, 3.0)
    assert Spread.of([1.0, 2.0]).median == 1.5
    assert str(spread) == "1.00 [0.80-3.00]"
    with pytest.raises(ValueError):
        Spread.of([])


def test_ratio_is_more_than_one_when_polysocket_does_better() -> None:
    assert ratio(200.0, 100.0, "rate") == 2.0  # twice the msg/s
    assert ratio(0.5, 1.0, "time") == 2.0  # half the time
    assert ratio(100.0, 200.0, "rate") == 0.5
    with pytest.raises(ValueError):
        ratio(1.0, 0.0, "rate")
    with pytest.raises(ValueError):
        ratio(1.0, 1.0, "speed")


def test_percentile_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([7.0], 0.99) == 7.0


def test_summary_takes_ratios_per_round_not_of_the_medians() -> None:
    # Round by round polysocket is always 2x faster, though its medians alone would say 1x.
    ours = [Sample(100.0, 10.0), Sample(400.0, 10.0), Sample(200.0, 10.0)]
    theirs = [Sample(50.0, 8.0), Sample(200.0, 8.0), Sample(100.0, 5.0)]
    comparison = Comparison(
        "echo",
        "p",
        "r",
        "rate",
        "msg/s",
        target=Target(">= 0.9x", ">=", 0.9),
        cpu_target=Target("<= 1.15x", "<=", 1.15),
    )
    result = summarize(comparison, {"p": ours, "r": theirs})
    assert result["ratio"]["median"] == result["ratio"]["min"] == result["ratio"]["max"] == 2.0
    assert result["target"]["verdict"] == "PASS"
    assert result["cpu_ratio"]["median"] == 1.25  # 10/8, 10/8, 10/5: median 1.25
    assert result["cpu_target"]["verdict"] == "MISS"


def test_memory_is_a_difference_and_lower_is_better() -> None:
    comparison = Comparison("mem", "p", "r", "memory", "KiB/conn", target=Target("", "<=", 4.0))
    result = summarize(comparison, {"p": [Sample(20.0), Sample(30.0)], "r": [Sample(15.0)] * 2})
    assert result["difference"]["median"] == 10.0
    assert result["target"]["verdict"] == "MISS"


def test_rounds_alternate_the_sides() -> None:
    order: list[str] = []

    def side(name: str) -> Side:
        return Side(name, lambda: order.append(name) or Sample(1.0))  # type: ignore[func-returns-value]

    samples = run_rounds([side("p"), side("raw")], 3, log=lambda line: None)
    assert order == ["p", "raw"] * 3
    assert [len(samples["p"]), len(samples["raw"])] == [3, 3]


def test_echo_verification_catches_a_wrong_echo() -> None:
    sent = payload(3, 41, 64)
    check_echo(3, 41, 64, sent, full=True)
    check_echo(3, 41, 64, sent.decode(), full=True)  # a text echo
    corrupted = sent[:-1] + b"?"
    check_echo(3, 41, 64, corrupted, full=False)  # only sampled echoes are compared in full
    with pytest.raises(VerificationError, match="differs"):
        check_echo(3, 41, 64, corrupted, full=True)
    with pytest.raises(VerificationError, match="seq 41"):
        check_echo(3, 41, 64, payload(3, 40, 64), full=False)  # a lost or reordered message
    with pytest.raises(VerificationError, match="bytes"):
        check_echo(3, 41, 64, sent[:32], full=False)
    assert len(payload(0, 0, 65536)) == 65536


def test_cpu_of_a_child_from_proc() -> None:
    # The child burns 0.3 s of CPU and exits; read its /proc/PID/stat before reaping it
    # (WNOWAIT), so that the figure is the whole of its CPU however loaded the machine is.
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile time.process_time() < 0.3: pass"]
    )
    try:
        os.waitid(os.P_PID, busy.pid, os.WEXITED | os.WNOWAIT)
        used = cpu_seconds(busy.pid)
    finally:
        busy.wait()
    assert 0.28 <= used <= 0.6  # 10 ms ticks, plus the interpreter's start


def test_rss_of_this_process() -> None:
    assert 1_000 < harness.rss_kib(os.getpid()) < 10_000_000


def test_a_child_reporting_a_verification_error_fails_the_run() -> None:
    # What bench/loadgen.py does when an echo is wrong: an "error" event, not a figure.
    script = 'print("stray output")\nprint(\'{"event": "error", "detail": "seq 7 differs"}\')'
    child = harness.Child([sys.executable, "-c", script])
    try:
        with pytest.raises(VerificationError, match="seq 7 differs"):
            child.expect("done", timeout=30)
    finally:
        child.close()
