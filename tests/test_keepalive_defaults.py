"""Keepalive defaults (issues 9 and 11): on for both sides (20 s / 20 s), and an engine
without the ``keepalive`` capability still connects and serves with the default."""

from __future__ import annotations

import pytest

from polysocket.errors import UnsupportedOptionError
from polysocket.options import client_options, server_options
from polysocket.testing import MemoryEngine
from polysocket.transport import CAPABILITIES, ClientOptions, ServerOptions


def test_both_sides_ping_every_20_s_and_wait_20_s_by_default() -> None:
    for options in (ServerOptions(), ClientOptions()):
        got = (options.ping_interval, options.ping_timeout, options.keepalive_timeout)
        assert got == (20, 20, 20), options
    engine = MemoryEngine(capabilities=CAPABILITIES)
    assert client_options(engine, {}).keepalive_timeout == 20
    assert client_options(engine, {"ping_interval": None}).keepalive_timeout is None
    assert client_options(engine, {"ping_timeout": None}).keepalive_timeout == 20


def test_ping_interval_none_turns_the_server_keepalive_off() -> None:
    engine = MemoryEngine(capabilities=CAPABILITIES)
    checked, _ = server_options(engine, {"ping_interval": None})
    assert checked.ping_interval is None and checked.keepalive_timeout is None
    checked, _ = server_options(engine, {})
    assert checked.keepalive_timeout == 20


def test_an_engine_without_keepalive_connects_and_serves_with_the_default_only() -> None:
    engine = MemoryEngine()
    assert "keepalive" not in engine.capabilities
    for given in ({}, {"ping_interval": 20.0, "ping_timeout": 20}, {"ping_interval": None}):
        server_options(engine, given)  # the default (or none): accepted, nothing to honour
    for name in ("ping_interval", "ping_timeout"):
        with pytest.raises(UnsupportedOptionError, match=f"{name}=.*'keepalive'"):
            server_options(engine, {name: 5})
        with pytest.raises(UnsupportedOptionError, match=f"{name}=.*'keepalive'"):
            client_options(engine, {name: 5})
    for given in ({}, {"ping_interval": 20.0, "ping_timeout": 20}, {"ping_interval": None}):
        client_options(engine, given)  # a client's default too: it connects
