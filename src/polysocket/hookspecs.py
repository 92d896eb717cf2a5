"""pluggy hook specifications: the one place where plugins meet the core.

An engine distribution exposes a module through the ``polysocket.engines`` entry-point group;
that module implements :func:`polysocket_register_engines` and calls ``register`` once per
engine it provides::

    from polysocket import hookimpl

    @hookimpl
    def polysocket_register_engines(register):
        register(MyEngine())

A backplane distribution does the same through the ``polysocket.backplanes`` group with
:func:`polysocket_register_backplanes` (the contract: :mod:`polysocket.backplane`).

Any registered plugin (found through either group, or given to
``polysocket.plugins.registry.register_plugin``) may also implement
:func:`polysocket_authenticate`, which the endpoint server asks on every handshake.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .auth import Handshake, Principal
from .backplane import Backplane
from .transport import Engine

PROJECT = "polysocket"
ENTRY_POINT_GROUP = "polysocket.engines"
BACKPLANE_ENTRY_POINT_GROUP = "polysocket.backplanes"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def polysocket_register_engines(register: Callable[[Engine], None]) -> None:
    """Register engines by calling ``register(engine)`` for each one."""


@hookspec
def polysocket_register_backplanes(register: Callable[[Backplane], None]) -> None:
    """Register backplanes by calling ``register(backplane)`` for each one."""


@hookspec(firstresult=True)
def polysocket_authenticate(request: Handshake) -> Principal | None:
    """Who opens this WebSocket handshake, before the 101: a ``Principal`` to accept,
    ``None`` for no opinion (when no authenticator accepts, the server answers 401), or raise
    ``polysocket.auth.Refused(status, text)`` for a 401/403 of your own. The first plugin
    that returns a principal wins; the ``authenticate=`` callable of ``serve()`` is asked
    first. It runs on the event loop in the middle of routing: answer at once (check a token
    or a signature), never do network I/O."""
