"""The figures tables of docs/reliability.md, from ``attacks.py --json`` output.

    python reliability/table.py BEFORE.json [AFTER.json]

Prints one markdown table per attack: a row per engine, the "before" figure and the "after"
one (TBD without a second file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness import mib, size

Result = dict[str, Any]
GOOD = "http://good.example"


def _rss(result: Result) -> str:
    if result.get("capped_at") is not None:
        return f"RSS {mib(result['rss_start'])} → **> 2 GiB at t={result['capped_at']} s** (killed)"
    return (
        f"RSS {mib(result['rss_start'])} / peak {mib(result['rss_peak'])}"
        f" / end {mib(result['rss_end'])}"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def figure(result: Result) -> str:
    """The figure of one result, in a few words."""
    if "error" in result:
        return f"harness error: {result['error']}"
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    attack = result["attack"]
    if attack in ("no-read", "slow-handler", "client-slow-handler"):
        extra = f"; log {size(result['log_bytes'])}" if result.get("log_bytes") else ""
        return f"{_rss(result)}; {result['messages']:,} msgs in {result['seconds']} s{extra}"
    if attack == "chat-stalled":
        return (
            f"others got {result['delivered']:,} of {result['expected']:,}"
            f" ({result['per_second']}/s of {result['per_second_expected']}/s;"
            f" last 5 s: {result['per_second_last_5s']}/s); stalled member"
            f" {result['stalled_member']}; RSS peak {mib(result['rss_peak'])}"
        )
    if attack == "stalled-handshakes":
        got_in = result["got_in_after"]
        waited = f"**never** in {result['seconds']} s" if got_in is None else f"{got_in} s"
        return (
            f"real client in after {waited}; log {size(result['log_bytes'])};"
            f" stalled sockets dropped by then: {result['stalled_dropped']}"
            f" of {result['stalled_connected']}"
        )
    if attack == "endless-fragments":
        closed = result["attacker"]
        if result.get("attacker_closed_at") is not None:
            closed += f" at {result['attacker_closed_at']} s"
        return (
            f"attacker {closed} after {result['fragments']:,} fragments; others' echo p50"
            f" {_ms(result['echo_p50_ms'])}, max {_ms(result['echo_max_ms'])}"
            f" ({result['echo_lost']} lost); {_rss(result)}"
        )
    if attack == "cross-site":
        with_list = (
            f"evil {result['evil_with_origins']}, good {result['good_with_origins']}"
            if "good_with_origins" in result
            else "not supported by this checkout"
        )
        return (
            f"no origin list: evil {result['evil_no_origins']}; --origin {GOOD}: {with_list};"
            f" anonymous same-origin: {result['anonymous_same_origin']}"
        )
    if attack == "sigterm-stuck":
        return (
            f"exit {result['exit_code']} after {result['exit_seconds']} s;"
            f" close frames {result['close_frames']}; silent clients: exit"
            f" {result.get('silent_exit_code', '?')}"
            f" after {result.get('silent_exit_seconds', '?')} s"
        )
    return json.dumps(result)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    runs = [json.loads(Path(path).read_text()) for path in argv]
    before = runs[0]
    after = {(r["attack"], r["engine"]): r for r in runs[1]} if len(runs) > 1 else {}
    attacks = list(dict.fromkeys(r["attack"] for r in before))
    for attack in attacks:
        print(f"#### {attack}\n")
        print("| engine | before (main at dcf3130) | after |")
        print("|---|---|---|")
        for result in (r for r in before if r["attack"] == attack):
            later = after.get((attack, result["engine"]))
            print(
                f"| {result['engine']} | {figure(result)} | {figure(later) if later else 'TBD'} |"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
