"""Small pieces of the per-message path, shared by the connection and the dispatcher.

- :class:`Flag`: a one-shot ``threading.Event`` that costs two slots until someone waits on it
  (an idle connection holds two of them; a real ``Event`` is a Condition, a lock and a deque).
- :class:`LoopWakeups`: wake-ups handed to an event loop from other threads, coalesced: however
  many connections' handler threads ask at once, the loop gets one ``call_soon_threadsafe``
  (one self-pipe write) per batch.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable

__all__ = ["Flag", "LoopWakeups", "wakeups_for"]

_flag_lock = threading.Lock()


class Flag:
    """Set once, waited on from any thread; the ``threading.Event`` exists only once a
    waiter needs one."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with _flag_lock:  # orders against wait() creating the event
            self._set = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        with _flag_lock:
            if self._set:
                return True
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        return event.wait(timeout)


class LoopWakeups:
    """Callbacks to run on one loop, asked for from other threads, coalesced (see module)."""

    __slots__ = ("__weakref__", "_lock", "_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[Callable[[], None]] = []
        self._scheduled = False

    def add(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop soon (from any thread)."""
        with self._lock:
            self._pending.append(callback)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: nothing will run on it any more
            with self._lock:
                self._pending.clear()
                self._scheduled = False

    def _run(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        for callback in pending:
            callback()


_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWakeups] = (
    weakref.WeakKeyDictionary()
)
_wakeups_lock = threading.Lock()


def wakeups_for(loop: asyncio.AbstractEventLoop) -> LoopWakeups:
    """The one :class:`LoopWakeups` of ``loop``."""
    with _wakeups_lock:
        found = _wakeups.get(loop)
        if found is None:
            found = _wakeups[loop] = LoopWakeups(loop)
        return found
