"""The benchmark harness's own logic (bench/harness.py): fast, stdlib only, no sockets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass",
        ]
    )
    try:
        time.sleep(0.1)
        before = cpu_seconds(busy.pid)
        time.sleep(0.4)
        used = cpu_seconds(busy.pid) - before
    finally:
        busy.wait()
    # A spinning process uses about the wall time; shared cores may give it less.
    assert 0.1 <= used <= 0.5


def test_rss_of_this_process() -> None:
    assert 1_000 < harness.rss_kib(os.getpid()) < 10_000_000
