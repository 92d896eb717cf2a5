"""Render docs/conformance.md from the summary.json files that autobahn/run.py writes.

python autobahn/summarize.py autobahn/reports > docs/conformance.md
python autobahn/run.py --summarize autobahn/reports > docs/conformance.md   # the same
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
NOT_FAILING = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")
ENGINE_ORDER = ("aiohttp", "websockets", "tornado")
SIDE_ORDER = ("server", "client")
#: Autobahn's names for the case groups (as in its HTML report).
CATEGORIES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "Compression (payloads)",
    "13": "Compression (parameters)",
}
LIBRARY_OF = {"aiohttp": "aiohttp", "websockets": "websockets", "tornado": "tornado"}


def find_summaries(dirs: Iterable[Path]) -> list[dict[str, Any]]:
    found: dict[Path, dict[str, Any]] = {}
    for folder in dirs:
        candidates = [folder] if folder.is_file() else sorted(folder.rglob("summary.json"))
        for path in candidates:
            found[path.resolve()] = json.loads(path.read_text(encoding="utf-8"))
    if not found:
        sys.exit(f"summarize: no summary.json under {', '.join(map(str, dirs))}; run run.py first")

    def order(s: dict[str, Any]) -> tuple[int, str, int, str]:
        engine, side = s["engine"], s["side"]
        e = ENGINE_ORDER.index(engine) if engine in ENGINE_ORDER else len(ENGINE_ORDER)
        k = SIDE_ORDER.index(side) if side in SIDE_ORDER else len(SIDE_ORDER)
        return (e, engine, k, side)

    return sorted(found.values(), key=order)


def case_key(case_id: str) -> list[int]:
    return [int(p) for p in case_id.split(".") if p.isdigit()]


def columns_of(summaries: Sequence[dict[str, Any]]) -> list[str]:
    extra = sorted({v for s in summaries for v in s["counts"] if v not in COLUMNS})
    return [*COLUMNS, *extra]


def compact(ids: Iterable[str]) -> str:
    """``6.4.1, 6.4.2, 6.4.3`` -> ``6.4.1-6.4.3`` for runs of consecutive case ids."""
    ordered = sorted(ids, key=case_key)
    groups: list[list[str]] = []
    for case in ordered:
        key = case_key(case)
        if groups:
            last = case_key(groups[-1][-1])
            if key[:-1] == last[:-1] and key[-1] == last[-1] + 1:
                groups[-1].append(case)
                continue
        groups.append([case])
    return ", ".join(g[0] if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def selection_text(selection: dict[str, Any]) -> str:
    cases = ", ".join(f"`{c}`" for c in selection.get("cases", ["*"]))
    excluded = ", ".join(f"`{c}`" for c in selection.get("exclude", []))
    return f"cases {cases}" + (f" except {excluded}" if excluded else "")


def render(dirs: Sequence[Path]) -> str:
    summaries = find_summaries(dirs)
    cols = columns_of(summaries)
    first = min(s["started"] for s in summaries)
    versions: dict[str, str] = {}
    for s in summaries:
        library = s.get("library") or LIBRARY_OF.get(s["engine"], s["engine"])
        versions[library] = s["versions"].get("engine_library") or "?"
    common = summaries[0]["versions"]
    selections = {selection_text(s["selection"]) for s in summaries}
    out: list[str] = [
        "# Autobahn TestSuite conformance",
        "",
        "<!-- Generated; do not edit by hand. Regenerate with:"
        " nox -s autobahn && python autobahn/run.py --summarize autobahn/reports"
        " > docs/conformance.md -->",
        "",
        "polysocket runs the [Autobahn TestSuite](https://github.com/crossbario/autobahn-testsuite)"
        " case files on every engine and on both sides, through"
        " [kosoku](https://pypi.org/project/kosoku/) (a runner for Autobahn's own cases):",
        "",
        "- **server**: `python -m polysocket serve` serves an echo endpoint (`onMessage` returns"
        " the message) and `kosoku -m fuzzingclient` drives"
        " `ws://127.0.0.1:PORT/websockets/v4/service/echo`;",
        "- **client**: `kosoku -m fuzzingserver` serves the cases and `polysocket.createWebsocket"
        "(uri, handler, engine=..., max_size=None)` connects to each `/runCase` URL, echoing every"
        " message with `polysocket.getSession().send(message)`.",
        "",
        f"Run on {first[:10]} (first run started {first} UTC) with polysocket"
        f" {common.get('polysocket')}, kosoku {common.get('kosoku')}, Python"
        f" {common.get('python')}, "
        + ", ".join(f"{lib} {ver}" for lib, ver in versions.items())
        + f"; {' / '.join(sorted(selections))}.",
        "",
        "Produced by:",
        "",
        "```",
        "nox -s autobahn            # or, per run: python autobahn/run.py --engine E --side S ...",
        "python autobahn/run.py --summarize autobahn/reports > docs/conformance.md",
        "```",
        "",
        "Verdicts are Autobahn's: **OK** as required; **NON-STRICT** acceptable, but a SHOULD"
        " was not followed (e.g. the connection was failed before an earlier message was"
        " echoed, or invalid UTF-8 was noticed at the end of a frame rather than at the first"
        " bad byte); **INFORMATIONAL** the case only records behaviour the RFC leaves open;"
        " **UNIMPLEMENTED** an optional feature the peer did not negotiate (here"
        " permessage-deflate, cases 12.* and 13.*: polysocket leaves compression off unless"
        " asked); **FAILED** a MUST was broken (a case whose messages passed but whose closing"
        " handshake kosoku judged wrong is counted as FAILED). A run fails unless every FAILED"
        " case is in `autobahn/allowed-failures.toml` for that engine and side.",
        "",
        "## Summary",
        "",
    ]
    rows = []
    for s in summaries:
        counts = s["counts"]
        allowed = sum(1 for f in s["failures"] if f["allowed"])
        rows.append(
            [
                s["engine"],
                s["side"],
                *[counts.get(c, 0) for c in cols],
                sum(counts.values()),
                allowed,
                f"{s['seconds']:.1f} s",
            ]
        )
    out += table(["engine", "side", *cols, "total", "allow-listed", "time"], rows)
    out += [""]

    for s in summaries:
        out += [f"## {s['engine']} — {s['side']}", ""]
        out += [
            f"{s['engine']} {s['versions'].get('engine_library')}, agent"
            f" `{s.get('agent')}`, {selection_text(s['selection'])}, {s['seconds']:.1f} s,"
            f" started {s['started']}.",
            "",
            "```",
            s.get("command") or "(run.py was imported, not run as a script)",
            s.get("kosoku_command", ""),
            "```",
            "",
        ]
        by_group: dict[str, Counter[str]] = {}
        for case, detail in s["cases"].items():
            by_group.setdefault(case.split(".")[0], Counter())[detail["verdict"]] += 1
        rows = []
        for group in sorted(by_group, key=int):
            counts = by_group[group]
            rows.append(
                [
                    f"{group} {CATEGORIES.get(group, '')}".strip(),
                    *[counts.get(c, 0) or "" for c in cols],
                    sum(counts.values()),
                ]
            )
        out += table(["cases", *cols, "total"], rows)
        out += [""]
        by_verdict: dict[str, list[str]] = {}
        for case, detail in s["cases"].items():
            by_verdict.setdefault(detail["verdict"], []).append(case)
        for verdict in ("NON-STRICT", "INFORMATIONAL", *[c for c in cols if c not in NOT_FAILING]):
            if by_verdict.get(verdict):
                out.append(f"- {verdict}: {compact(by_verdict[verdict])}")
        for failure in s["failures"]:
            tag = "allow-listed" if failure["allowed"] else "**not allow-listed**"
            out.append(
                f"- {failure['case']} {failure['behavior']} / close {failure['behaviorClose']}"
                f" (close code sent by polysocket: {failure['remoteCloseCode']}), {tag}:"
                f" {failure['resultClose'] or failure['result']}"
            )
        for problem in s.get("problems", []):
            out.append(f"- problem: {problem}")
        out.append("")

    out += ["## Allow-listed failures", ""]
    grouped: dict[tuple[str, str | None], list[str]] = {}
    for s in summaries:
        for failure in s["failures"]:
            if failure["allowed"]:
                key = (failure["cause"], failure.get("upstream"))
                grouped.setdefault(key, []).append(f"{failure['case']} ({s['engine']}/{s['side']})")
    if not grouped:
        out += ["None: every case passed (OK, NON-STRICT, INFORMATIONAL or UNIMPLEMENTED).", ""]
    for (cause, upstream), where in grouped.items():
        out.append(f"- {', '.join(where)}: {cause.strip()}")
        if upstream:
            out.append(f"  Upstream: {upstream}")
    stale = [
        f"{case} ({s['engine']}/{s['side']})"
        for s in summaries
        for case in s.get("stale_allowances", [])
    ]
    if stale:
        out += [
            "",
            f"Allow-list entries that did not fail (candidates for removal): {', '.join(stale)}.",
        ]
    out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.exit("usage: python autobahn/summarize.py REPORT_DIR... > docs/conformance.md")
    sys.stdout.write(render([Path(a) for a in args]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
