"""When and how often a client reconnects: :class:`ReconnectPolicy`.

The defaults are websockets' for ``async for ws in connect(...)`` (``websockets.client.backoff``
in websockets 17.4: ``BACKOFF_INITIAL_DELAY=5``, ``BACKOFF_MIN_DELAY=3.1``,
``BACKOFF_FACTOR=1.618``, ``BACKOFF_MAX_DELAY=90``; its docstring still says "capped at 60s",
the code caps at 90, and we took the code). After a loss websockets tries once at once, then
waits a random 0-5 s (RFC 6455 7.2.3: spread the clients of a server that went away), then 3.1 s
growing by 1.618 up to 90 s; here the first attempt already waits the random part, as the RFC
asks. Here the random part is ``jitter`` and it is added to every delay, not only
the first, so that clients that failed together do not retry in lockstep after that either
(at websockets' cap of 90 s they all do).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RETRY_STATUSES", "ReconnectPolicy", "reconnect_policy", "retryable"]


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a client reconnects after an unexpected loss (``reconnect=`` of ``createWebsocket``
    and ``polysocket.connect``).

    Attempt ``n`` (1, 2, ... counted from each loss; a connection that opens starts the count
    again) waits ``base + uniform(0, jitter)`` seconds first, where ``base`` is 0 for the
    first attempt and ``min(max_delay, initial_delay * factor ** (n - 2))`` after it: the
    jitter comes on top of the cap, so that clients retrying at the cap stay spread. With the
    defaults: 0-5 s, then 3.1-8.1 s, 5.0-10.0 s, 8.1-13.1 s ... up to 90-95 s.

    ``max_attempts`` bounds the attempts per loss (``None``: forever); after the last one
    fails, the client gives up and closes for good. A close from the server with 1000 (normal)
    or 1001 (going away) is not a loss: it ends the client, unless ``retry_normal_close``
    (set it to survive a server that restarts gracefully: polysocket's server sends 1001 on
    SIGTERM).
    """

    initial_delay: float = 3.1
    factor: float = 1.618
    max_delay: float = 90.0
    jitter: float = 5.0
    max_attempts: int | None = None
    retry_normal_close: bool = False

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise TypeError(
                    f"ReconnectPolicy({name}=...) must be a number of seconds >= 0, not {value!r}"
                )
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 1:
            raise TypeError(
                f"ReconnectPolicy(factor=...) must be a number >= 1 (1: no growth), not {factor!r}"
            )
        attempts = self.max_attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise TypeError(
                "ReconnectPolicy(max_attempts=...) must be a positive int, or None to retry"
                f" forever, not {attempts!r}"
            )
        if not isinstance(self.retry_normal_close, bool):
            raise TypeError(
                f"ReconnectPolicy(retry_normal_close=...) must be a bool, not"
                f" {self.retry_normal_close!r}"
            )

    def base(self, attempt: int) -> float:
        """The delay before ``attempt`` without its jitter."""
        if attempt < 1:
            raise ValueError(f"attempts count from 1, not {attempt}")
        if attempt == 1:
            return 0.0
        # Capped before it grows past floats: factor ** n overflows for a client retrying
        # for weeks.
        exponent = attempt - 2
        delay = float(self.initial_delay)
        while exponent and delay < self.max_delay:
            delay *= self.factor
            exponent -= 1
        return min(delay, self.max_delay)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before ``attempt`` (from 1), jitter included."""
        return self.base(attempt) + rand() * self.jitter

    def bound(self, attempt: int) -> float:
        """The longest :meth:`delay` can be for ``attempt``."""
        return self.base(attempt) + self.jitter

    @property
    def longest(self) -> float:
        """The longest any delay can be: ``max_delay + jitter``."""
        return self.max_delay + self.jitter

    def gives_up_after(self, attempt: int) -> bool:
        """Whether ``attempt`` failing is the last one."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def retries_close(self, code: int | None) -> bool:
        """Whether a connection that ended with ``code`` (from the server) is reconnected."""
        return code not in (1000, 1001) or self.retry_normal_close


def reconnect_policy(value: Any) -> ReconnectPolicy | None:
    """The ``reconnect=`` option checked: ``False``/``None`` (off), ``True`` (the default
    policy) or a :class:`ReconnectPolicy`."""
    if value is None or value is False:
        return None
    if value is True:
        return ReconnectPolicy()
    if isinstance(value, ReconnectPolicy):
        return value
    raise TypeError(
        f"reconnect= must be True (the default policy), False, or a"
        f" polysocket.ReconnectPolicy(...), not {value!r}"
    )


#: Refusals worth retrying (websockets' ``process_exception``): the server or a proxy in
#: front of it is down or overloaded. Any other status will not go away by itself.
RETRY_STATUSES = frozenset({500, 502, 503, 504})


def retryable(status: int | None) -> bool:
    """Whether a failed attempt (``ConnectError.status``: ``None`` for a network error or a
    timeout) is worth another."""
    return status is None or status in RETRY_STATUSES
