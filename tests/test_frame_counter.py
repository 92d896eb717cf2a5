"""enginekit.FrameCounter: a message's frames counted from raw bytes, however they are split."""

from __future__ import annotations

import struct

import pytest

from polysocket.enginekit import MAX_FRAGMENTS, FrameCounter, too_many_fragments


def frame(opcode: int, size: int, *, fin: bool, mask: bool) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    flag = 0x80 if mask else 0
    if size < 126:
        head += bytes([flag | size])
    elif size < 1 << 16:
        head += bytes([flag | 126]) + struct.pack("!H", size)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", size)
    return head + (b"\x01\x02\x03\x04" if mask else b"") + b"\x81" * size  # payload: not a head


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 7, 1000, 1 << 20])
def test_counts_the_frames_of_a_message_across_any_split(mask: bool, chunk: int) -> None:
    # 4 frames (sizes of every length encoding) with a ping between them, then a whole
    # message: the first has 4 frames, the count starts again after it.
    wire = b"".join(
        [
            frame(0x1, 5, fin=False, mask=mask),
            frame(0x0, 300, fin=False, mask=mask),
            frame(0x9, 4, fin=True, mask=mask),  # control frames are not the message's
            frame(0x0, 70_000, fin=False, mask=mask),
            frame(0x0, 0, fin=True, mask=mask),
            frame(0x2, 1, fin=False, mask=mask),
            frame(0x0, 2, fin=False, mask=mask),
        ]
    )
    counter = FrameCounter(limit=4)
    assert all(counter.feed(wire[i : i + chunk]) for i in range(0, len(wire), chunk))
    assert counter.fragments == 2  # of the binary message in progress
    assert counter.feed(frame(0x0, 0, fin=False, mask=mask) * 2)
    assert not counter.feed(frame(0x0, 0, fin=False, mask=mask))  # the fifth frame


def test_the_limit_and_its_error() -> None:
    counter = FrameCounter()
    empty = bytes([0x00, 0x80]) + bytes(4)
    assert counter.feed(bytes([0x01, 0x80]) + bytes(4) + empty * (MAX_FRAGMENTS - 1))
    assert not counter.feed(empty)
    assert MAX_FRAGMENTS > 65_536  # Autobahn 9.3.x/9.4.x: 4 MiB in 64-byte fragments
    error = too_many_fragments()
    assert error.code == 1009 and f"more than {MAX_FRAGMENTS} fragments" in str(error)
