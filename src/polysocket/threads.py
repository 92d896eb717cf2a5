"""The handler threads: a bounded pool of daemon threads that grows with demand and shrinks
when idle.

Plain (``def``) callbacks run here. A connection's callbacks are one task at a time (the
dispatcher submits a connection's drain only when none is queued or running), so they run in
order and never two at once, whichever worker takes them.

The pool holds at most ``max_threads`` workers: :data:`DEFAULT_MAX_THREADS`, that is
``max(32, 4 * CPUs)``, unless ``$POLYSOCKET_HANDLER_THREADS`` says otherwise. While fewer
are busy, a callback that sleeps or blocks holds only its own worker and delays no other
connection. What a slow handler costs the others: once every worker is busy (say ``N``
connections each blocked in a callback, ``N >= max_threads``), other connections' callbacks
wait in the queue, in the order they became ready, until a worker is free; their messages
meanwhile count against their ``max_queue`` (so those connections stop reading, not the
process growing). The bound keeps a flood of slow callbacks from creating a thread per
connection (hundreds of stacks and GIL contenders). Raise it for handlers that block on
I/O a lot; ``async def`` callbacks run on the event loop and never need a worker. A callback
that blocks until another connection's callback has run deadlocks once every worker blocks
that way (the awaited callback waits in the queue): such waits need a timeout.

Workers are daemons, so a stuck handler never blocks interpreter exit; one idle for
:data:`IDLE_SECONDS` ends.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("polysocket.threads")

IDLE_SECONDS = 30.0

#: The default bound on handler threads (``$POLYSOCKET_HANDLER_THREADS`` overrides it).
DEFAULT_MAX_THREADS = max(32, 4 * (os.cpu_count() or 1))

_ENV = "POLYSOCKET_HANDLER_THREADS"


def _configured_max() -> int:
    value = os.environ.get(_ENV)
    if not value:
        return DEFAULT_MAX_THREADS
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        log.warning("ignoring %s=%r: not a positive integer", _ENV, value)
        return DEFAULT_MAX_THREADS
    return count


class HandlerThreads:
    """A pool of at most ``max_threads`` daemon workers taking tasks in submission order."""

    def __init__(self, max_threads: int | None = None, idle_seconds: float = IDLE_SECONDS) -> None:
        if max_threads is not None and max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, not {max_threads}")
        self.max_threads = max_threads if max_threads is not None else _configured_max()
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # The counts, under the lock. _idle: workers waiting (or about to) that no queued task
        # is promised to; _backlog: queued tasks promised to no worker (all were busy, at the
        # bound); _count: live workers. A finishing worker takes a backlog task before it
        # counts itself idle, so a task never waits while a worker is idle.
        self._idle = 0
        self._backlog = 0
        self._count = 0
        self._started = 0
        self._idle_seconds = idle_seconds

    @property
    def thread_count(self) -> int:
        """Workers alive now (busy or idle)."""
        return self._count

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task`` on a worker: an idle one, else a new one below the bound, else the
        first one to finish its current task."""
        with self._lock:
            self._tasks.put(task)
            if self._idle:
                self._idle -= 1
                return
            if self._count >= self.max_threads:
                self._backlog += 1
                return
            self._count += 1
            self._started += 1
            name = f"polysocket-handler-{self._started}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        tasks = self._tasks
        while True:
            try:
                task = tasks.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    try:  # a task promised to this worker just as it timed out
                        task = tasks.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        self._count -= 1
                        return
            try:
                task()
            except BaseException:  # a task must never kill its worker
                log.exception("handler task failed")
            del task  # the drain it was, with its dispatcher, is not kept alive while idle
            with self._lock:
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1


handler_threads = HandlerThreads()
