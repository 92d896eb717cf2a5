"""Small pieces of the per-message path, shared by the connection and the dispatcher.

- :class:`Flag`: a one-shot ``threading.Event`` that costs two slots until someone waits on it
  (an idle connection holds two of them; a real ``Event`` is a Condition, a lock and a deque).
- :class:`LoopWakeups`: wake-ups handed to an event loop from other threads, coalesced: however
  many connections' handler threads ask at once, the loop gets one ``call_soon_threadsafe``
  (one self-pipe write) per batch, and runs the batch in one task.
- :func:`step` / :func:`finish`: run a coroutine until it first waits, on the loop, in the
  caller's task; if it does wait, a task of its own finishes it. The core uses them for the
  engine's ``send()``, which usually completes without waiting (the bytes go to the socket
  buffer), so that a reply costs no wake-up of a writer task.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Flag", "LoopWakeups", "Suspended", "finish", "step", "wakeups_for"]

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
        """Run ``callback`` on the loop, inside a task, soon (from any thread)."""
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
        # One task for the batch: the callbacks start engine sends, which may expect a task.
        self._loop.create_task(_run_all(pending))


async def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
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


def step(coro: Coroutine[Any, Any, None]) -> Suspended | None:
    """Run ``coro`` until it first waits. Returns ``None`` if it finished (its exception, if
    any, propagates); else what it waits on, to pass to :func:`finish` with ``coro``."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return Suspended(yielded)


class Suspended:
    """What a coroutine stopped at (a future, or ``None`` for a bare yield)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


async def finish(coro: Coroutine[Any, Any, T], suspended: Suspended) -> T:
    """Drive ``coro`` (stopped by :func:`step` at ``suspended``) to its end in this task,
    as a task would have, and return what it returns: it resumes when what it waits on is
    done, and a cancellation of this task reaches it where it waits."""
    yielded = suspended.value
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)  # a bare yield: give the loop one turn
            else:
                await _done(yielded)
        except BaseException as exc:  # this task was cancelled: so is the coroutine
            if asyncio.isfuture(yielded):
                yielded.cancel()
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


class _done:  # awaitable like a function call
    """Wait until ``future`` is done without taking its outcome (the coroutine reads it)."""

    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, None]:
        future = self._future
        if not asyncio.isfuture(future):
            raise RuntimeError(f"a coroutine awaited {future!r}, which is not a future")
        future._asyncio_future_blocking = False
        if not future.done():
            waiter = future.get_loop().create_future()

            def wake(_: Any) -> None:
                if not waiter.done():  # cancelled: this task was
                    waiter.set_result(None)

            future.add_done_callback(wake)
            yield from waiter
