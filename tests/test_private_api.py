"""The private parts of libraries that engines still use exist in the installed versions.

Each engine package exports them as ``PRIVATE_API`` (``"module.Class.attribute": why``; the
built-in engines' lists are in ``polysocket_engines/private_api.py``). The
``minimums`` nox session runs this on the oldest versions pyproject allows, the ``tests``
session on the newest, so an upgrade that renames one fails here, loudly, instead of in a
connection.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys

import pytest

from polysocket.plugins import registry


def _private_api() -> list[tuple[str, str, str]]:
    entries = []
    for status in registry.statuses():
        if status.status != "available":
            continue
        engine = registry.get(status.name)
        module = sys.modules[type(engine).__module__]
        for path, why in getattr(module, "PRIVATE_API", {}).items():
            entries.append((status.name, path, why))
    return entries


def _resolves(path: str) -> bool:
    """Whether ``module.Class.attribute`` exists: as a class attribute, or assigned to
    ``self`` in an ``__init__`` of the class or its bases (instance attributes)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:-1]:
            owner = getattr(owner, name, None)
            if owner is None:
                return False
        attribute = parts[-1]
        if hasattr(owner, attribute):
            return True
        if not inspect.isclass(owner):
            return False
        assigned = re.compile(rf"\bself\.{re.escape(attribute)}\b\s*(:[^=]+)?=")
        for cls in owner.__mro__:
            init = cls.__dict__.get("__init__")
            try:
                source = inspect.getsource(init) if init is not None else ""
            except (OSError, TypeError):  # compiled: only class attributes can be checked
                continue
            if assigned.search(source):
                return True
        return False
    return False


ENTRIES = _private_api()


@pytest.mark.parametrize(("engine", "path", "why"), ENTRIES, ids=[e[1] for e in ENTRIES])
def test_private_api_exists(engine: str, path: str, why: str) -> None:
    assert _resolves(path), (
        f"engine {engine!r} uses {path} ({why}), which this version of its library lacks:"
        " adapt the engine, then update its PRIVATE_API"
    )


def test_resolver_tells_missing_from_present() -> None:
    assert _resolves("asyncio.base_events.BaseEventLoop._ready")  # set in __init__
    assert _resolves("asyncio.Event.wait")
    assert not _resolves("asyncio.Event._no_such_attribute")
