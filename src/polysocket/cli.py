"""The ``polysocket`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .plugins import registry


def _engines(args: argparse.Namespace) -> int:
    # Plugin failures are rows of the table; the log line would only repeat them.
    logging.getLogger("polysocket.plugins").setLevel(logging.ERROR)
    rows = registry.statuses()
    if not rows:
        print("no engines installed: pip install polysocket")
        return 1
    width = max(len(row.name) for row in rows)
    for row in rows:
        version = row.version or "-"
        capabilities = ",".join(sorted(row.capabilities)) or "-"
        line = f"{row.name:<{width}}  {row.status:<15}  {version:<10}  {capabilities}"
        if row.detail:
            line += f"  ({row.detail})"
        print(line)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logging.getLogger("polysocket").setLevel(logging.INFO)
    return run_demo(args.engine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polysocket", description="The Dirigible WebSocket API over several engines."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    engines = commands.add_parser(
        "engines", help="list engines: library version, capabilities, status"
    )
    engines.set_defaults(run=_engines)
    demo = commands.add_parser(
        "demo", help="run the Dirigible seed's client example against a local echo peer"
    )
    demo.add_argument("--engine", help="engine to use (default: $POLYSOCKET_ENGINE or aiohttp)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
