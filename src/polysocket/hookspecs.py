"""pluggy hook specifications: the one place where plugins meet the core.

An engine distribution exposes a module through the ``polysocket.engines`` entry-point group;
that module implements :func:`polysocket_register_engines` and calls ``register`` once per
engine it provides::

    from polysocket import hookimpl

    @hookimpl
    def polysocket_register_engines(register):
        register(MyEngine())
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .transport import Engine

PROJECT = "polysocket"
ENTRY_POINT_GROUP = "polysocket.engines"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def polysocket_register_engines(register: Callable[[Engine], None]) -> None:
    """Register engines by calling ``register(engine)`` for each one."""
