"""polysocket-nats: a polysocket backplane on NATS (core publish/subscribe, through nats-py).

Found by polysocket through its entry point (``polysocket.backplanes``: ``nats``); serves
``nats://`` and ``tls://`` backplane URLs.
"""

from __future__ import annotations

from collections.abc import Callable

from polysocket import hookimpl
from polysocket.backplane import Backplane

from ._backplane import INBOX_BYTES, INBOX_MESSAGES, NatsBackplane, NatsLink
from ._names import NatsURL, channel_of, parse_url, subject_of

__all__ = [
    "INBOX_BYTES",
    "INBOX_MESSAGES",
    "NatsBackplane",
    "NatsLink",
    "NatsURL",
    "channel_of",
    "parse_url",
    "subject_of",
]


@hookimpl
def polysocket_register_backplanes(register: Callable[[Backplane], None]) -> None:
    register(NatsBackplane())
