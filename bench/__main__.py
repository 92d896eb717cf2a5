"""``python -m bench``: run scenarios, or regenerate docs/performance.md from their results.

    python -m bench list
    python -m bench run [SCENARIO ...] [--quick] [--rounds 5] [--engines aiohttp,picows]
    python -m bench report          # docs/performance.md and docs/performance.png

``run`` with no scenario runs them all; each writes bench/results/<scenario>.json.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.harness import raise_fd_limit
from bench.scenarios import ENGINES, SCENARIOS, Settings, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the scenarios, one a line")
    runner = commands.add_parser("run", help="run scenarios (all when none is named)")
    runner.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    runner.add_argument(
        "--quick", action="store_true", help="smaller runs, 1 round: a smoke run of 2-3 minutes"
    )
    runner.add_argument("--rounds", type=int, help="rounds per scenario (5; 1 with --quick)")
    runner.add_argument("--engines", default=",".join(ENGINES), help="polysocket engines to run")
    runner.add_argument(
        "--broadcast-engines",
        default="websockets",
        help="polysocket engines in the broadcast scenario (each against raw websockets)",
    )
    commands.add_parser("report", help="regenerate docs/performance.md and its chart")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, scenario in SCENARIOS.items():
            print(f"{name:<18} {(scenario.__doc__ or '').split(chr(10))[0]}")
        return 0
    if args.command == "report":
        from bench.report import write_report

        print(write_report())
        return 0
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    engines = [engine for engine in args.engines.split(",") if engine]
    settings = Settings(
        rounds=args.rounds or (1 if args.quick else 5),
        quick=args.quick,
        engines=engines,
        broadcast_engines=[engine for engine in args.broadcast_engines.split(",") if engine],
        log=lambda line: print(line, flush=True),
    )
    limit = raise_fd_limit()
    print(
        f"open-file limit {limit}; {settings.rounds} rounds; engines {', '.join(engines)}",
        flush=True,
    )
    started = time.monotonic()
    for name in args.scenarios or list(SCENARIOS):
        run(name, settings)
    print(f"all done in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
