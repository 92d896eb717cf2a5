"""Hand-made WebSocket frames, both ways: what well-behaved peers never send.

``RawClient`` completes a handshake with a server and then writes whatever frames a test
builds; ``RawServer`` answers handshakes and writes a fixed list of frames to each client.
Both read the other side's frames and report its close frame. ``LatePongs`` is a peer on a
slow link: it answers every ping, late.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .support import WAIT

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    flag = 0x80 if mask else 0
    if size < 126:
        head += bytes([flag | size])
    elif size < 1 << 16:
        head += bytes([flag | 126]) + struct.pack("!H", size)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_payload(payload, key)


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """``payload`` masked (or unmasked) with ``key``, RFC 6455 5.3."""
    # one big-integer XOR: a per-byte loop takes a second for a 1 MiB message
    size = len(payload)
    if not size:
        return b""
    keys = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(size, "big")


def close_frame(code: int, reason: str = "", *, mask: bool = True) -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason.encode(), mask=mask)


class _Reader:
    def __init__(self, sock: socket.socket, pending: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(pending)

    def exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the connection was closed")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def frame(self) -> tuple[int, bool, bytes]:
        first, second = self.exact(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self.exact(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self.exact(8))
        key = self.exact(4) if second & 0x80 else None
        payload = self.exact(size)
        if key is not None:
            payload = mask_payload(payload, key)
        return first & 0x0F, bool(first & 0x80), payload

    def until_close(self) -> tuple[int | None, str, list[tuple[int, bytes]]]:
        """Frames up to the close frame: (its code or None, its reason, the others)."""
        seen: list[tuple[int, bytes]] = []
        while True:
            opcode, _, payload = self.frame()
            if opcode == CLOSE:
                if len(payload) < 2:
                    return None, "", seen
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode(), seen
            seen.append((opcode, payload))


class RawClient:
    """A client socket past the opening handshake, for frames no library would send
    (over TLS with ``ssl``, a client context that trusts the server).

    ``headers`` are extra request header lines, in order, repeats allowed; the answer's
    status line is ``status_line`` and its header lines ``response_headers``. A
    ``receive_buffer`` (bytes) is set before connecting: TCP's window then closes as soon as
    that much is unread, instead of after the several MiB loopback autotuning allows.
    """

    def __init__(
        self,
        port: int,
        path: str,
        ssl: Any = None,
        headers: Sequence[tuple[str, str]] = (),
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            self.sock.connect(("127.0.0.1", port))
        except OSError:
            self.sock.close()
            raise
        if ssl is not None:
            self.sock = ssl.wrap_socket(self.sock, server_hostname="127.0.0.1")
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"no handshake response: {response!r}")
            response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status_line = status_line
        self.response_headers: list[tuple[str, str]] = []
        for line in lines:
            name, _, value = line.partition(":")
            self.response_headers.append((name.strip(), value.strip()))
        self.reader = _Reader(self.sock, rest)

    def response_header(self, name: str) -> list[str]:
        """Every value of the answer's header ``name`` (any case), in order."""
        return [v for n, v in self.response_headers if n.lower() == name.lower()]

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def recv_frame(self) -> tuple[int, bool, bytes]:
        return self.reader.frame()

    def until_close(self) -> tuple[int | None, str, list[tuple[int, bytes]]]:
        code, reason, seen = self.reader.until_close()
        with contextlib.suppress(OSError):
            self.sock.sendall(close_frame(code or 1000))
        return code, reason, seen

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RawServer:
    """A hand-written server: answers every handshake, writes ``frames`` (unmasked), then reads.

    With ``answer_close`` it reads the client's frames up to its close frame, records them
    (``close_code``, ``close_reason``, ``received``) and answers the close frame; without, it
    reads and ignores everything and never answers (a peer that stopped talking). A
    ``conversation(sock, reader)`` replaces both: it gets the connection after the frames
    and talks as it likes (``reader.frame()`` reads one frame); the connection is closed
    when it returns. ``done`` is set when a connection has been handled.
    """

    def __init__(
        self,
        frames: list[bytes] | None = None,
        *,
        answer_close: bool = True,
        conversation: Callable[[socket.socket, _Reader], None] | None = None,
    ) -> None:
        self.frames = frames or []
        self.answer_close = answer_close
        self.conversation = conversation
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.handshakes = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.received: list[tuple[int, bytes]] = []
        self.done = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="raw-ws-server", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/raw"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            key = ""
            for line in request.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
            )
            self.handshakes += 1
            conn.sendall(b"".join(self.frames))
            if self.conversation is not None:
                self.conversation(conn, _Reader(conn))
                conn.close()
                return
            if not self.answer_close:
                while conn.recv(65536):
                    pass
                return
            code, reason, seen = _Reader(conn).until_close()
            self.close_code, self.close_reason, self.received = code, reason, seen
            conn.sendall(close_frame(code or 1000, mask=False))
            conn.close()  # a server closes the TCP connection first (RFC 6455 7.1.1)
        except OSError:
            pass
        finally:
            self.done.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
        self._sock.close()
        self._thread.join(WAIT)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


class LatePongs:
    """A peer on a slow link: answers every ping ``delay`` seconds late, from a timer.

    ``run()`` reads frames until the other side's close frame (answered at once, unless
    ``close()`` sent ours first) or the end of the connection; ``pings`` counts the pings
    seen, ``wait_pings(n)`` waits for them. ``mask`` is True for a client's frames, False
    for a server's.
    """

    def __init__(self, sock: socket.socket, reader: _Reader, delay: float, *, mask: bool) -> None:
        self.sock = sock
        self.reader = reader
        self.delay = delay
        self.mask = mask
        self.pings = 0
        self.close_code: int | None = None
        self.close_sent = False
        self.ended = threading.Event()
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._timers: list[threading.Timer] = []

    def send(self, data: bytes) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; ``run()`` returns at the answer."""
        self.close_sent = True
        self.send(close_frame(code, mask=self.mask))

    def run(self) -> None:
        try:
            while True:
                opcode, _, payload = self.reader.frame()
                if opcode == PING:
                    with self._cond:
                        self.pings += 1
                        self._cond.notify_all()
                    pong = frame(PONG, payload, mask=self.mask)
                    timer = threading.Timer(self.delay, self.send, (pong,))
                    timer.daemon = True
                    self._timers.append(timer)
                    timer.start()
                elif opcode == CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if payload else None
                    for timer in self._timers:
                        timer.cancel()
                    if not self.close_sent:
                        self.close_sent = True
                        self.send(close_frame(self.close_code or 1000, mask=self.mask))
                    return
        except (OSError, ConnectionError):
            pass
        finally:
            for timer in self._timers:
                timer.cancel()
            with self._cond:
                self.ended.set()
                self._cond.notify_all()

    def start(self) -> LatePongs:
        """``run()`` on a thread of its own."""
        threading.Thread(target=self.run, name="late-pongs", daemon=True).start()
        return self

    def wait_pings(self, count: int, timeout: float = WAIT) -> bool:
        """Wait until ``count`` pings came (False if the connection ended first)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.pings < count and not self.ended.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.pings >= count
