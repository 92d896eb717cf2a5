"""What a handler callback can ask about: ``getMessage()``, ``getMethod()``, ``getSession()``...

One context variable holds the whole call, set for the duration of one callback, so callbacks
running at the same time on other threads or tasks never see each other's values.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CallbackContext",
    "get_close_code",
    "get_close_reason",
    "get_error",
    "get_message",
    "get_method",
    "get_session",
    "is_on_close",
    "is_on_error",
    "is_on_message",
    "is_on_open",
]


@dataclass(slots=True)
class CallbackContext:
    """What one callback is about. The dispatcher reuses one per batch of messages on its own
    thread (only ``message`` changes), so treat it as read-only."""

    method: str  # "onopen", "onmessage", "onerror" or "onclose"
    session: Any
    message: str | bytes | None = None
    error: str | None = None  # an ``ErrorText`` (a ``str``) in onError
    close_code: int | None = None
    close_reason: str | None = None


current_call: ContextVar[CallbackContext | None] = ContextVar("polysocket_call", default=None)


def get_message() -> str | bytes | None:
    """In ``onMessage``: the message (``str`` for text, ``bytes`` for binary); else ``None``."""
    call = current_call.get()
    return None if call is None else call.message


def get_error() -> str | None:
    """In ``onError``: the error text; else ``None``."""
    call = current_call.get()
    return None if call is None else call.error


def get_method() -> str | None:
    """In a callback: ``"onopen"``, ``"onmessage"``, ``"onerror"`` or ``"onclose"``."""
    call = current_call.get()
    return None if call is None else call.method


def get_session() -> Any:
    """In a callback: the connection it belongs to (a client or a server session)."""
    call = current_call.get()
    return None if call is None else call.session


def get_close_code() -> int | None:
    """In ``onClose``: the close code (1006 when the connection was lost)."""
    call = current_call.get()
    return None if call is None else call.close_code


def get_close_reason() -> str | None:
    """In ``onClose``: the close reason."""
    call = current_call.get()
    return None if call is None else call.close_reason


def is_on_open() -> bool:
    return get_method() == "onopen"


def is_on_message() -> bool:
    return get_method() == "onmessage"


def is_on_error() -> bool:
    return get_method() == "onerror"


def is_on_close() -> bool:
    return get_method() == "onclose"
