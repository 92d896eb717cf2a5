"""The handler threads: a pool of daemon threads that grows with demand and shrinks when idle.

A callback that sleeps holds only its own thread, so it never delays another connection;
threads are daemons so a stuck handler never blocks interpreter exit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("polysocket.threads")

IDLE_SECONDS = 30.0


class HandlerThreads:
    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # waiting workers not yet promised a task
        self._count = 0
        self._idle_seconds = idle_seconds

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._tasks.put(task)
            if self._idle:
                self._idle -= 1
                return
            self._count += 1
            name = f"polysocket-handler-{self._count}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        tasks = self._tasks
        while True:
            try:
                task = tasks.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    try:
                        task = tasks.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return
            try:
                task()
            except BaseException:  # a task must never kill its worker
                log.exception("handler task failed")
            with self._lock:
                self._idle += 1


handler_threads = HandlerThreads()
