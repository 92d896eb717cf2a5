"""Keepalive defaults (issue 9): on for servers (20 s / 20 s), off for clients, and an
engine without the ``keepalive`` capability still serves with the server's default."""

from __future__ import annotations

import pytest

from polysocket.errors import UnsupportedOptionError
from polysocket.options import client_options, server_options
from polysocket.testing import MemoryEngine
from polysocket.transport import CAPABILITIES, ClientOptions, ServerOptions


def test_the_server_pings_every_20_s_and_waits_20_s_by_default() -> None:
    options = ServerOptions()
    assert (options.ping_interval, options.ping_timeout, options.keepalive_timeout) == (20, 20, 20)
    assert ClientOptions().ping_interval is None  # clients: only when asked


def test_ping_interval_none_turns_the_server_keepalive_off() -> None:
    engine = MemoryEngine(capabilities=CAPABILITIES)
    checked, _ = server_options(engine, {"ping_interval": None})
    assert checked.ping_interval is None and checked.keepalive_timeout is None
    checked, _ = server_options(engine, {})
    assert checked.keepalive_timeout == 20


def test_an_engine_without_keepalive_serves_with_the_default_only() -> None:
    engine = MemoryEngine()
    assert "keepalive" not in engine.capabilities
    for given in ({}, {"ping_interval": 20.0, "ping_timeout": 20}, {"ping_interval": None}):
        server_options(engine, given)  # the default (or none): accepted, nothing to honour
    for name in ("ping_interval", "ping_timeout"):
        with pytest.raises(UnsupportedOptionError, match=f"{name}=.*'keepalive'"):
            server_options(engine, {name: 5})
        with pytest.raises(UnsupportedOptionError, match=f"{name}="):
            client_options(engine, {name: 20})  # a client's default is no keepalive
