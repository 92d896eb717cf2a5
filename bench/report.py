"""docs/performance.md and docs/performance.png from bench/results/*.json.

``python -m bench report`` (``nox -s bench`` runs it after the scenarios).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, ROOT
from bench.scenarios import SCENARIOS

DOC = ROOT / "docs" / "performance.md"
CHART = ROOT / "docs" / "performance.png"
LIBRARIES = [
    "polysocket",
    "polysocket-picows",
    "aiohttp",
    "websockets",
    "tornado",
    "picows",
    "websocket-client",
]

METHOD = """\
## How it is measured

- **Fresh processes, alternating.** Every run of every side starts its own processes (the
  server or client under test, and the load generator) and stops them afterwards. Inside a
  round the sides alternate (polysocket, raw, polysocket ...) and every side runs once per
  round, so that what the machine does meanwhile weighs on both.
- **One load generator for both sides.** Servers are driven by `bench/loadgen.py`: picows'
  client, many connections in one process, each keeping a window of messages in flight.
  picows is the fastest client measured here: in the client-throughput table, raw picows'
  client against the same peer is the fastest raw row by far (aiohttp's is next).
  Clients under test talk to one plain echo server, raw picows (`bench/peers.py`), which
  stays up for the whole scenario. The generator is not the bottleneck as long as the
  fastest raw server's rate stays well above polysocket's: the highest rate in a table is a
  lower bound on what the generator drives on this machine.
- **Ratios per round, oriented so that more than 1 means polysocket did better**: of rates
  (msg/s, connections/s) polysocket / raw, of times (round-trip latency, broadcast time)
  raw / polysocket. Tables give the median of the per-round ratios and [min-max]. Memory is
  a difference: polysocket minus raw, KiB per connection (lower is better).
- **CPU per message** (user + system, all threads) of the process under test over the
  measured section: for servers read from `/proc/PID/stat` (utime + stime, 10 ms ticks) by
  the harness when the load starts and ends; for clients `resource.getrusage(RUSAGE_SELF)`
  inside the client process. CPU ratios are polysocket / raw (lower is better), the median
  of the per-round ratios. With 10 ms ticks a run needs some hundreds of milliseconds of
  CPU for a figure to mean much: quick runs are too short for it.
- **Every run verifies what it measures**: echo counts are exact per connection; every
  echo's length and header (connection and sequence number) are checked, and every 101st
  (and the last) is compared byte for byte; each broadcast receiver must get exactly the
  message broadcast. A run that fails verification stops the suite.
- Servers are `polysocket serve bench/registry --engine E` (endpoints `echo-sync`, plain
  `onMessage` returning the message; `echo-async`, the same as `async def`; `broadcast`)
  against a minimal echo in the raw library (`bench/peers.py`: aiohttp web app, websockets
  `serve`, tornado `WebSocketHandler`, picows `ws_create_server`, a minimal ASGI app on
  uvicorn).
"""


def _load() -> list[dict[str, Any]]:
    documents = []
    for name in SCENARIOS:
        path = RESULTS / f"{name}.json"
        if path.exists():
            documents.append(json.loads(path.read_text()))
    return documents


def _machine() -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    for library in LIBRARIES:
        try:
            versions.append(f"{library} {importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{library} (not installed)")
    return [
        f"- CPU: {model}, {os.cpu_count()} cores (a shared machine: other work widens the ranges)",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
        f"- Libraries: {', '.join(versions)}",
    ]


def _figure(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
    if unit == "KiB/conn":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _row(result: dict[str, Any]) -> str:
    key = "difference" if result["kind"] == "memory" else "ratio"
    spread = result[key]
    unit = result["unit"]
    ours, theirs = result["polysocket"], result["raw"]
    if key == "difference":
        figure = f"{spread['median']:+.1f} [{spread['min']:+.1f} to {spread['max']:+.1f}]"
    else:
        figure = f"**{spread['median']:.2f}** [{spread['min']:.2f}-{spread['max']:.2f}]"
    cpu = ""
    if "cpu_us_per_msg" in ours and "cpu_us_per_msg" in theirs:
        cpu = f"{ours['cpu_us_per_msg']['median']:.1f} / {theirs['cpu_us_per_msg']['median']:.1f}"
        if "cpu_ratio" in result:
            cpu += f" ({result['cpu_ratio']['median']:.2f}x)"
    verdicts = [
        f"{result[name]['verdict']} ({result[name]['text']})"
        for name in ("target", "cpu_target")
        if name in result
    ]
    return (
        f"| {result['name']} | {_figure(ours['value']['median'], unit)} "
        f"| {_figure(theirs['value']['median'], unit)} | {unit} | {figure} | {cpu} "
        f"| {'; '.join(verdicts)} |"
    )


def _chart(documents: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(2.0, 0.22 * len(doc["results"]) + 1.0) for doc in documents]
    figure, axes = plt.subplots(
        len(documents),
        1,
        figsize=(10, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for axis, document in zip(axes[:, 0], documents, strict=True):
        results = document["results"]
        memory = results[0]["kind"] == "memory"
        key = "difference" if memory else "ratio"
        medians = [r[key]["median"] for r in results]
        low = [r[key]["median"] - r[key]["min"] for r in results]
        high = [r[key]["max"] - r[key]["median"] for r in results]
        colors = [
            {"PASS": "tab:green", "MISS": "tab:red"}.get(
                r.get("target", {}).get("verdict"), "tab:blue"
            )
            for r in results
        ]
        positions = list(range(len(results)))
        axis.barh(positions, medians, color=colors, alpha=0.35, height=0.7)
        axis.errorbar(medians, positions, xerr=[low, high], fmt="none", ecolor="black", capsize=2)
        axis.set_yticks(positions, [r["name"] for r in results], fontsize=6)
        axis.invert_yaxis()
        targets = {(r["target"]["text"], r["target"]["value"]) for r in results if "target" in r}
        for text, value in sorted(targets):
            axis.axvline(
                value, color="tab:red", linestyle="--", linewidth=1, label=f"target {text}"
            )
        baseline = 0.0 if memory else 1.0
        axis.axvline(baseline, color="grey", linewidth=0.8)
        # Every target line and the baseline in view, whatever the figures.
        edges = [r[key]["max"] for r in results] + [value for _, value in targets] + [baseline]
        axis.set_xlim(min(0.0, *(r[key]["min"] for r in results)) * 1.05, max(edges) * 1.08)
        if targets:
            axis.legend(loc="lower right", fontsize=6)
        axis.set_title(
            f"{document['scenario']}: "
            + ("polysocket - raw, KiB per connection (lower is better)" if memory
               else "polysocket vs raw, median ratio [min-max] (higher is better)"),
            fontsize=8,
        )  # fmt: skip
        axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    figure.savefig(CHART, dpi=110)
    plt.close(figure)


def write_report() -> Path:
    """Regenerate the doc and the chart from whatever results there are."""
    documents = [doc for doc in _load() if doc["results"]]
    if not documents:
        raise SystemExit("no results in bench/results: run `python -m bench run` first")
    _chart(documents)
    quick = any(doc["settings"].get("quick") for doc in documents)
    lines = [
        "# Performance",
        "",
        "polysocket against the raw libraries it wraps, generated by `nox -s bench` (the full"
        " suite, about 23 minutes on 2 cores, then this page and its chart;"
        " `nox -s bench -- --quick` for a smoke run of a few minutes).",
        "`python -m bench run [SCENARIO ...]` runs scenarios (`python -m bench list`),"
        " `python -m bench report` regenerates this page and its chart from"
        " bench/results/*.json.",
        "",
    ]
    if quick:
        lines += [
            "> **These figures come from a `--quick` run** (fewer messages and connections,"
            " 1 round unless `--rounds` said otherwise): a smoke run of the instrument, noisy,"
            " not a measurement to quote.",
            "",
        ]
    lines += ["## The run", ""]
    for doc in documents:
        settings = doc["settings"]
        lines.append(
            f"- {doc['scenario']}: {doc['date']}, commit {doc['commit']}, {settings['rounds']}"
            f" rounds{' (quick)' if settings.get('quick') else ''}, {settings['seconds']} s"
        )
    lines += ["", "## The machine", "", *_machine(), "", METHOD]
    lines += ["## Targets (from the issue)", ""]
    lines += ["| target | PASS | MISS |", "|---|---|---|"]
    tally: dict[str, list[int]] = {}
    for doc in documents:
        for result in doc["results"]:
            for name in ("target", "cpu_target"):
                if name in result:
                    count = tally.setdefault(f"{doc['scenario']}: {result[name]['text']}", [0, 0])
                    count[result[name]["verdict"] == "MISS"] += 1
    lines += [f"| {text} | {ok} | {miss} |" for text, (ok, miss) in tally.items()]
    lines += [
        "",
        "A ratio target applies to the median of the per-round ratios (RTT p50 <= 1.2x"
        " websocket-client's time is a ratio >= 0.83 on the more-is-better scale).",
        "",
        f"![median ratios with min-max ranges and the targets]({CHART.name})",
        "",
    ]
    for doc in documents:
        doc_string = (SCENARIOS[doc["scenario"]].__doc__ or "").split("\n\n")[0]
        lines += [f"## {doc['scenario']}", "", " ".join(doc_string.split()), ""]
        lines += [
            "| comparison | polysocket | raw | unit | ratio (or difference) | CPU us/msg"
            " polysocket / raw | target |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [_row(result) for result in doc["results"]]
        lines.append("")
    DOC.write_text("\n".join(lines))
    return DOC
