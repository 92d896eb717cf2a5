"""Encoded frames for ``broadcast``: one encoding of a message, written to every session.

The core encodes (:func:`server_frame`); an engine whose connections sit on an asyncio
transport implements :class:`polysocket.transport.FrameWriter` with :func:`write_frame`.
"""

from __future__ import annotations

import asyncio

__all__ = ["server_frame", "write_frame"]

_TEXT, _BINARY = 0x81, 0x82  # FIN and the opcode


def server_frame(message: str | bytes) -> bytes:
    """``message`` as one frame from a server: unmasked (RFC 6455 5.1), no extension bits."""
    if isinstance(message, str):
        first, payload = _TEXT, message.encode()
    else:
        first, payload = _BINARY, bytes(message)
    size = len(payload)
    if size < 126:
        head = bytes((first, size))
    elif size < 1 << 16:
        head = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + size.to_bytes(8, "big")
    return head + payload


def write_frame(tcp: asyncio.WriteTransport, frame: bytes, limit: int) -> bool | None:
    """``FrameWriter.write_frame`` on an asyncio transport: write ``frame`` unless the buffer
    is not empty and would go over ``limit`` with it (False); None once it is closing."""
    if tcp.is_closing():
        return None
    buffered = tcp.get_write_buffer_size()
    if buffered and buffered + len(frame) > limit:
        return False
    tcp.write(frame)
    return True
