"""The sync facade's one background event loop: started on first use, stopped at exit.

Every blocking call hands its work to this loop with ``run_coroutine_threadsafe`` and waits on
the result, so it works the same from a plain script, a Jupyter cell or an aiohttp handler
(the caller's own loop, if any, is never touched).

``$POLYSOCKET_LOOP`` picks the loop's implementation when it starts: ``asyncio`` (the default,
the standard library's), ``uvloop`` (an error if it is not installed) or ``auto`` (uvloop when
it is installed, else asyncio). uvloop makes every hand-off to and from the loop cheaper: the
sync client's round trip and open+close cost about a third less CPU on the aiohttp engine.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import WebsocketError

log = logging.getLogger("polysocket.runtime")

T = TypeVar("T")


#: What ``$POLYSOCKET_LOOP`` may name.
LOOPS = ("asyncio", "uvloop", "auto")


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the implementation ``kind`` names (see the module; empty: asyncio)."""
    kind = kind.strip().lower() or "asyncio"
    if kind not in LOOPS:
        raise WebsocketError(
            f"POLYSOCKET_LOOP={kind!r} names no event loop; use one of {', '.join(LOOPS)}"
        )
    if kind != "asyncio":
        try:  # not a dependency: imported by name, so type checks pass without it
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if kind == "uvloop":
                raise WebsocketError(
                    "POLYSOCKET_LOOP=uvloop, but uvloop is not installed: pip install uvloop,"
                    " or set POLYSOCKET_LOOP=auto (uvloop when installed) or unset it"
                ) from None
        else:
            log.debug("the background loop is uvloop's")
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


class BackgroundLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._before_stop: list[Callable[[], None]] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = new_loop(os.environ.get("POLYSOCKET_LOOP", ""))
                self._thread = threading.Thread(
                    target=self._run, args=(loop, ready), name="polysocket-loop", daemon=True
                )
                self._thread.start()
                ready.wait()
                self._loop = loop
                atexit.register(self.stop)
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any thread but the loop's)."""
        if self.in_loop_thread():
            coro.close()
            raise WebsocketError(
                f"{what} blocks, so it cannot be called from an async callback running on"
                " polysocket's event loop; use the asyncio API (await polysocket.connect(...))"
                " there, or make the callback a plain function"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (from the stopping thread) before the loop stops at exit."""
        self._before_stop.append(callback)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self.in_loop_thread():
            return
        for callback in self._before_stop:
            try:
                callback()
            except Exception:
                log.exception("shutdown step failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        with self._lock:
            self._loop = None
            self._thread = None
        if not thread.is_alive():
            loop.close()


background = BackgroundLoop()
