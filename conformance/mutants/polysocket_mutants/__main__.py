"""``python -m polysocket_mutants``: the installed mutants, as JSON.

One object per mutant: ``name``, ``bug`` (the first paragraph of its docstring), ``first``
(the conformance test modules to run first) and ``expect``: ``"fail"``, except for the
control (:class:`~polysocket_mutants.mutants.Control`, listed first), which has no bug and
must pass. Exits with status 2, saying why,
when a mutant defined in :mod:`polysocket_mutants.mutants` is not registered through its
entry point (or fails to load), or an entry point registers an engine no class defines.
"""

from __future__ import annotations

import json
import sys

from polysocket.plugins import registry

from . import PREFIX
from .mutants import MUTANTS, Control


def problems() -> list[str]:
    """What is wrong between the mutant classes and the installed entry points."""
    defined = {mutant.name for mutant in (Control, *MUTANTS)}
    found: list[str] = []
    registered: set[str] = set()
    for status in registry.statuses():
        if not status.name.startswith(PREFIX) and status.name != Control.name:
            continue
        if status.status != "available":
            found.append(f"{status.name}: {status.status} ({status.detail})")
        else:
            registered.add(status.name)
    found += [f"{name}: defined but not registered" for name in sorted(defined - registered)]
    found += [f"{name}: registered but not defined" for name in sorted(registered - defined)]
    return found


def main() -> int:
    wrong = problems()
    if wrong:
        print(
            "polysocket_mutants: the entry points in conformance/mutants/pyproject.toml and"
            " the classes in polysocket_mutants/mutants.py disagree (reinstall the"
            " distribution after changing either):\n  " + "\n  ".join(wrong),
            file=sys.stderr,
        )
        return 2
    listing = [
        {
            "name": mutant.name,
            "bug": mutant.bug(),
            "first": list(mutant.first),
            "expect": "pass" if mutant is Control else "fail",
        }
        for mutant in (Control, *MUTANTS)
    ]
    print(json.dumps(listing, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
