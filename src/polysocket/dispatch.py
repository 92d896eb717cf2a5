"""Running one connection's callbacks: in order, never two at once, in batches.

The event-loop thread pushes events (received messages, open/error/close) into a per-connection
queue. The first push of a burst wakes the consumer once; the consumer then takes everything
queued in one go. Plain callbacks run on a handler thread, ``async def`` callbacks on the loop.

The queue is bounded in bytes (``max_queue``): each message counts as its length plus
:data:`MESSAGE_OVERHEAD`, from its arrival until the handler has finished the batch it came
in. Above ``max_queue`` the connection's reader pauses (see :meth:`Dispatcher.wait_for_backlog`)
until the handler is down to a quarter of it; the message that crossed the mark is queued, so
a message bigger than ``max_queue`` still gets through.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .context import CallbackContext, current_call
from .handlers import Handler
from .hotpath import Flag
from .threads import handler_threads
from .transport import DEFAULT_MAX_QUEUE

log = logging.getLogger("polysocket.dispatch")

#: What a queued message costs on top of its length (its object and queue slot), so that a
#: flood of empty messages is bounded by ``max_queue`` too.
MESSAGE_OVERHEAD = 64


class ErrorText(str):
    """The error text handed to ``onError``; ``.exception`` keeps the original exception."""

    exception: BaseException | None

    def __new__(cls, text: str, exception: BaseException | None = None) -> ErrorText:
        self = super().__new__(cls, text)
        self.exception = exception
        return self

    @classmethod
    def of(cls, exception: BaseException) -> ErrorText:
        text = str(exception) or type(exception).__name__
        return cls(f"{type(exception).__name__}: {text}", exception)


class Event:
    """A non-message event; received messages travel as plain ``str``/``bytes``."""

    __slots__ = ("close_code", "close_reason", "error", "method")

    def __init__(
        self,
        method: str,
        error: ErrorText | None = None,
        close_code: int | None = None,
        close_reason: str | None = None,
    ) -> None:
        self.method = method
        self.error = error
        self.close_code = close_code
        self.close_reason = close_reason


@functools.lru_cache(maxsize=256)  # inspect.signature costs 15-40 us; handlers are few
def _accepts_argument(callback: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        return True
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            return True
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
    return False


class Dispatcher:
    """Delivers one connection's events to its handler.

    ``push`` is called on the loop thread only. ``finished`` is set once ``onClose`` has run.
    With ``reply`` (server sessions), a non-``None`` value returned by a plain ``onMessage``
    is passed to it on the handler thread; one returned by an ``async def`` one is awaited
    through ``reply_async`` on the loop.
    """

    __slots__ = (
        "_bytes",
        "_handler",
        "_high",
        "_items",
        "_items_bytes",
        "_lock",
        "_loop",
        "_low",
        "_message_takes_arg",
        "_on_loop",
        "_on_message",
        "_reply",
        "_reply_async",
        "_reply_now",
        "_resume",
        "_scheduled",
        "_session",
        "counts_opens",
        "finished",
        "max_queue",
        "opens",
    )

    def __init__(
        self,
        handler: Handler,
        session: Any,
        loop: asyncio.AbstractEventLoop,
        reply: Callable[[Any], None] | None = None,
        reply_async: Callable[[Any], Awaitable[None]] | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        reply_now: Callable[[Any], bool] | None = None,
    ) -> None:
        self._handler = handler
        self._reply = reply
        self._reply_async = reply_async
        #: Tried before ``reply_async``: sends at once when there is room (True).
        self._reply_now = reply_now or _never
        self._session = session
        self._loop = loop
        self._on_loop = handler.is_async
        self._lock = threading.Lock()
        # A list, swapped for a new one per batch: cheaper than a deque, and small when idle.
        self._items: list[Any] = []
        #: Bytes of the messages in ``_items``, and of those plus the batch being handled.
        self._items_bytes = 0
        self._bytes = 0
        self._high = self.max_queue = max_queue
        self._low = max_queue // 4
        self._scheduled = False
        self._resume: asyncio.Event | None = None
        self.finished = Flag()
        #: ``onopen`` events run so far (on the handler's side, in order with the rest), and
        #: whether every open is queued as one, callback or not (a reconnecting client
        #: counts its connections this way: ``WebsocketClient.reconnects``).
        self.opens = 0
        self.counts_opens = False
        callbacks = handler.callbacks
        self._on_message = callbacks.get("onmessage")
        self._message_takes_arg = self._on_message is not None and _accepts_argument(
            self._on_message
        )

    def has_callback(self, method: str) -> bool:
        """Whether the handler has ``method`` (lower-case, e.g. ``"onopen"``)."""
        return method in self._handler.callbacks

    # -- loop side -------------------------------------------------------------------------

    def push(self, item: Any, size: int = 0) -> bool:
        """Queue an event or a message (``size``: what it counts for ``max_queue``);
        True when the backlog is now over ``max_queue`` (the reader should pause)."""
        with self._lock:
            self._items.append(item)
            self._items_bytes += size
            self._bytes += size
            over = self._bytes > self._high
            if self._scheduled:
                return over
            self._scheduled = True
        if self._on_loop:
            self._loop.create_task(self._drain_on_loop())
        else:
            handler_threads.submit(self._drain_on_thread)
        return over

    @property
    def backlog(self) -> int:
        """Bytes of received messages the handler has not finished yet (as ``max_queue``
        counts them)."""
        return self._bytes

    async def wait_for_backlog(self) -> None:
        """Wait until the handler has caught up to a quarter of ``max_queue``."""
        self._resume = asyncio.Event()
        # _resume is published before the check: a consumer that finishes after the check
        # sees it and sets it (_batch_done updates the count before it looks).
        if self._bytes > self._low:
            await self._resume.wait()
        self._resume = None

    def release(self) -> None:
        """Stop holding the reader back (the connection is closing)."""
        if self._resume is not None:
            self._resume.set()

    # -- consumer side ---------------------------------------------------------------------

    def _take_batch(self) -> tuple[list[Any], int] | None:
        with self._lock:
            if not self._items:
                self._scheduled = False
                return None
            batch, size = self._items, self._items_bytes
            self._items, self._items_bytes = [], 0
            return batch, size

    def _batch_done(self, size: int) -> bool:
        """The handler finished a batch of ``size`` bytes; True if a paused reader may go on."""
        with self._lock:
            self._bytes -= size
            return self._resume is not None and self._bytes <= self._low

    def _caught_up(self, size: int) -> None:
        if self._batch_done(size):
            resume = self._resume
            if resume is not None:
                self._loop.call_soon_threadsafe(resume.set)

    def _drain_on_thread(self) -> None:
        # The hot path: one context for the whole drain, only its message changes.
        on_message = self._on_message
        takes_arg = self._message_takes_arg
        context = CallbackContext("onmessage", self._session)
        while (taken := self._take_batch()) is not None:
            batch, size = taken
            for item in batch:
                if item.__class__ is Event:
                    self._run_on_thread(item)
                    continue
                if on_message is None:
                    continue
                context.message = item
                self._invoke(on_message, (item,) if takes_arg else (), context)
            self._caught_up(size)

    async def _drain_on_loop(self) -> None:
        # The hot path: a message is one call. A context per message, unlike on a thread:
        # a task the callback starts copies it, and may read getMessage() later.
        on_message = self._on_message
        takes_arg = self._message_takes_arg
        reply = self._reply_async
        reply_now = self._reply_now
        session = self._session
        while (taken := self._take_batch()) is not None:
            batch, size = taken
            for item in batch:
                if item.__class__ is Event:
                    await self._run_on_loop(item)
                    continue
                if on_message is None:
                    continue
                context = CallbackContext("onmessage", session, item)
                token = current_call.set(context)
                try:
                    result = await (on_message(item) if takes_arg else on_message())
                    if result is not None and reply is not None and not reply_now(result):
                        await reply(result)
                except Exception as exc:
                    report = self._callback_failed(context, exc)
                    if report is not None:
                        await self._run_on_loop(report)
                finally:
                    current_call.reset(token)
            if self._batch_done(size) and self._resume is not None:
                self._resume.set()

    def _call_for(
        self, item: Any
    ) -> tuple[Callable[..., Any] | None, tuple[Any, ...], CallbackContext]:
        if item.__class__ is not Event:
            callback = self._on_message
            args: tuple[Any, ...] = (item,) if self._message_takes_arg else ()
            return callback, args, CallbackContext("onmessage", self._session, message=item)
        callback = self._handler.callbacks.get(item.method)
        if item.method == "onopen":
            self.opens += 1
        context = CallbackContext(
            item.method,
            self._session,
            error=item.error,
            close_code=item.close_code,
            close_reason=item.close_reason,
        )
        args = ()
        if item.method == "onerror" and callback is not None and _accepts_argument(callback):
            args = (item.error,)
        return callback, args, context

    def _run_on_thread(self, item: Any) -> None:
        callback, args, context = self._call_for(item)
        if callback is not None:
            self._invoke(callback, args, context)
        if context.method == "onclose":
            self.finished.set()

    def _invoke(
        self, callback: Callable[..., Any], args: tuple[Any, ...], context: CallbackContext
    ) -> None:
        """Run one plain callback on this handler thread, with its context set."""
        token = current_call.set(context)
        try:
            result = callback(*args)
            if result is not None:
                kind = result.__class__
                if (kind is str or kind is bytes) and self._reply is not None:
                    if context.method == "onmessage":  # a reply: no awaitable to look for
                        self._reply(result)
                else:
                    self._returned(context, result)
        except Exception as exc:
            report = self._callback_failed(context, exc)
            if report is not None:
                self._run_on_thread(report)
        finally:
            current_call.reset(token)

    async def _run_on_loop(self, item: Any) -> None:
        callback, args, context = self._call_for(item)
        if callback is not None:
            token = current_call.set(context)
            try:
                result = await callback(*args)
                if (
                    result is not None
                    and self._reply_async is not None
                    and item.__class__ is not Event
                ):
                    await self._reply_async(result)
            except Exception as exc:
                report = self._callback_failed(context, exc)
                if report is not None:
                    await self._run_on_loop(report)
            finally:
                current_call.reset(token)
        if context.method == "onclose":
            self.finished.set()

    def _returned(self, context: CallbackContext, result: Any) -> None:
        """Handle what a plain callback returned: await a coroutine, send a reply."""
        if inspect.isawaitable(result):
            result = asyncio.run_coroutine_threadsafe(
                _awaited_in(context, result), self._loop
            ).result()
        if result is not None and self._reply is not None and context.method == "onmessage":
            self._reply(result)

    def _callback_failed(self, context: CallbackContext, exc: Exception) -> Event | None:
        """Log a callback's exception; return the onError event that reports it, if any."""
        log.error(
            "%s of handler %s raised; the connection stays open",
            context.method,
            self._handler.source,
            exc_info=exc,
        )
        # onError reports it, unless onError itself failed or onClose (which must stay last).
        if context.method in ("onerror", "onclose") or "onerror" not in self._handler.callbacks:
            return None
        return Event("onerror", error=ErrorText.of(exc))


def _never(result: Any) -> bool:
    return False


async def _awaited_in(context: CallbackContext, awaitable: Any) -> Any:
    current_call.set(context)
    return await awaitable
