"""Messages larger than the server's ``max_payload``, sent in parts and put back together.

NATS refuses a message above the server's ``max_payload`` (1 MiB by default), while a
polysocket message may be up to 16 MiB. A larger message is published as consecutive parts,
each with a header ``Polysocket-Part: LINK SEQUENCE INDEX COUNT`` (a NATS header, so that
messages that fit travel exactly as they are). One link publishes from one task at a time, so
its parts arrive one after another; other links' messages may come in between, and are told
apart by the publishing link's random token.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

#: The header of a part.
PART_HEADER = "Polysocket-Part"
#: Room left in a part for the header line (NATS counts headers in max_payload).
HEADER_ROOM = 256
#: Messages being put back together at most (one per publishing link and channel in
#: practice); beyond it the oldest is given up.
MAX_PARTIAL = 256


def split(data: bytes, max_payload: int, token: str, sequence: int) -> list[tuple[bytes, str]]:
    """``data`` as ``(part, header value)`` pairs that each fit ``max_payload``."""
    size = max(1, max_payload - HEADER_ROOM)
    count = -(-len(data) // size)
    return [
        (data[index * size : (index + 1) * size], f"{token} {sequence} {index} {count}")
        for index in range(count)
    ]


def new_token() -> str:
    return secrets.token_hex(8)


@dataclass
class _Partial:
    sequence: int
    count: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    broken: bool = False


class Reassembly:
    """Parts back into messages, within ``max_bytes`` of parts held at a time."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._partial: OrderedDict[tuple[str, str], _Partial] = OrderedDict()
        self._bytes = 0
        #: Messages given up: a part missing (the publisher's connection broke midway), or
        #: too much held at once.
        self.lost = 0

    def add(self, channel: str, header: str, data: bytes) -> bytes | None:
        """Take one part; the whole message once its last part came, else ``None``."""
        try:
            token, sequence_text, index_text, count_text = header.split(" ")
            sequence, index, count = int(sequence_text), int(index_text), int(count_text)
        except ValueError:
            self.lost += 1  # not ours, or damaged: nothing to put together
            return None
        key = (channel, token)
        partial = self._partial.get(key)
        if index == 0:
            if partial is not None:
                self._drop(key, partial, lost=not partial.broken)
            partial = self._partial[key] = _Partial(sequence, count)
        elif partial is None or partial.sequence != sequence:
            if partial is not None:
                self._drop(key, partial, lost=not partial.broken)
            # The start of this message was missed: ignore the rest of it, count it once.
            self._partial[key] = _Partial(sequence, count, broken=True)
            self.lost += 1
            return None
        if partial.broken:
            return None
        if len(partial.parts) != index or partial.count != count:
            self._drop(key, partial, lost=True)
            self._partial[key] = _Partial(sequence, count, broken=True)
            return None
        partial.parts.append(data)
        partial.size += len(data)
        self._bytes += len(data)
        if len(partial.parts) == count:
            self._drop(key, partial, lost=False)
            return b"".join(partial.parts)
        self._bound()
        return None

    def _drop(self, key: tuple[str, str], partial: _Partial, *, lost: bool) -> None:
        self._partial.pop(key, None)
        self._bytes -= partial.size
        if lost:
            self.lost += 1

    def _bound(self) -> None:
        while self._partial and (self._bytes > self._max_bytes or len(self._partial) > MAX_PARTIAL):
            key, oldest = next(iter(self._partial.items()))
            self._drop(key, oldest, lost=not oldest.broken)
