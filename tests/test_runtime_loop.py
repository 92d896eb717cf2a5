"""``$POLYSOCKET_LOOP``: which event loop implementation the sync API's background loop is."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys

import pytest

from polysocket.errors import WebsocketError
from polysocket.runtime import new_loop

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _closed(loop: asyncio.AbstractEventLoop) -> str:
    module = type(loop).__module__
    loop.close()
    return module


@pytest.mark.parametrize("kind", ["", "asyncio", " AsyncIO "])
def test_the_default_and_asyncio_are_the_standard_library_loop(kind: str) -> None:
    assert _closed(new_loop(kind)).startswith("asyncio")


def test_an_unknown_name_is_refused_with_the_names_that_work() -> None:
    with pytest.raises(WebsocketError, match="asyncio, uvloop, auto"):
        new_loop("trio")


def test_without_uvloop_auto_falls_back_and_uvloop_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert _closed(new_loop("auto")).startswith("asyncio")
    with pytest.raises(WebsocketError, match="pip install uvloop"):
        new_loop("uvloop")


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
@pytest.mark.parametrize("kind", ["uvloop", "auto"])
def test_with_uvloop_installed_uvloop_and_auto_use_it(kind: str) -> None:
    assert _closed(new_loop(kind)).startswith("uvloop")


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_a_sync_round_trip_works_on_a_uvloop_background_loop() -> None:
    # In a process of its own: the background loop starts once per process.
    script = """
import threading, polysocket
from polysocket.demo import start_echo_peer
from polysocket.runtime import background
runner, port = background.run(start_echo_peer(), "peer")
got = []
done = threading.Event()
class Handler:
    @staticmethod
    def onMessage(message):
        got.append(message)
        done.set()
client = polysocket.createWebsocket(f"ws://127.0.0.1:{port}/echo", Handler)
client.send("ping")
assert done.wait(10)
client.close()
print(type(background.loop).__module__, got, client.close_code)
background.run(runner.cleanup(), "peer")
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "POLYSOCKET_LOOP": "uvloop"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["uvloop", "['ping']", "1000"]
