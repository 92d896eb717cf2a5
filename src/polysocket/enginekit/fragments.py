"""The limit on the frames of one message, the same on every engine.

A message of endless empty continuation frames never reaches ``max_size``; without a count it
holds its connection (and, on some libraries, the event loop) for as long as the peer likes.
"""

from __future__ import annotations

from polysocket.transport import ProtocolViolation

from .closecodes import CloseCode

__all__ = ["FRAGMENTS_REASON", "MAX_FRAGMENTS", "FrameCounter", "too_many_fragments"]

#: The most frames one message may come in; one more fails the connection with 1009. Far
#: above what real peers send (Autobahn's 9.3.x and 9.4.x cases send 4 MiB in 64-byte
#: fragments, 65,536), low enough that counting them takes the slowest engine a few seconds.
MAX_FRAGMENTS = 1 << 17

#: The reason of the 1009 close frame an engine sends when a message has too many frames.
FRAGMENTS_REASON = f"a message in more than {MAX_FRAGMENTS} fragments"


def too_many_fragments() -> ProtocolViolation:
    """The error an engine reports (``TransportClosed(1009, error=...)``) for such a message."""
    return ProtocolViolation(
        CloseCode.MESSAGE_TOO_BIG,
        f"the peer sent {FRAGMENTS_REASON} (enginekit.MAX_FRAGMENTS); no real peer does",
    )


class FrameCounter:
    """Counts the frames of the fragmented message in progress from the raw bytes, for an
    engine whose library reassembles out of reach: :meth:`feed` every received chunk, in
    order; it returns False once a message has more than ``limit`` frames. Only frame heads
    are parsed (payloads are skipped, not copied); at most one partial head is kept."""

    def __init__(self, limit: int = MAX_FRAGMENTS) -> None:
        self.limit = limit
        self.fragments = 0  # frames of the message in progress; 0 between messages
        self._head = bytearray()  # a frame head split across chunks (14 bytes at most)
        self._skip = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        pos, end, head = 0, len(data), self._head
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            if not head and end - pos >= 14:
                # The hot path: a whole head in data (14 bytes is the longest), read in place.
                first, second = data[pos], data[pos + 1]
                size = second & 0x7F
                if size == 126:
                    size = (data[pos + 2] << 8) | data[pos + 3]
                    pos += 2
                elif size == 127:
                    size = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    pos += 8
                pos += 6 if second & 0x80 else 2  # the mask after the length
            else:  # a head split across chunks: gathered in ``head`` first
                had = len(head)
                head += data[pos : pos + 14 - had]
                if len(head) < 2:
                    return True  # all of data is in head
                first, second = head[0], head[1]
                size = second & 0x7F
                width = 2 if size == 126 else 8 if size == 127 else 0
                length = 2 + width + (4 if second & 0x80 else 0)
                if len(head) < length:
                    return True
                pos += length - had
                if width:
                    size = int.from_bytes(head[2 : 2 + width], "big")
                head.clear()
            self._skip = size  # the payload: skipped at the top of the loop
            if first & 0x08 == 0:  # text, binary, continuation: frames of a message
                self.fragments += 1
                if self.fragments > self.limit:
                    return False
                if first & 0x80:  # the message's last frame
                    self.fragments = 0
        return True
