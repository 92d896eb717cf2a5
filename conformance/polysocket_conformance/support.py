"""Helpers shared by the conformance tests: recording handlers and tiny TCP servers."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import pytest

import polysocket

T = TypeVar("T")

#: How long a test waits for something that should happen promptly.
WAIT = 10.0


@dataclass(frozen=True)
class Call:
    """One callback invocation, with everything the context API said during it."""

    name: str  # "onopen", "onmessage", "onerror", "onclose": the callback that ran
    payload: Any  # the argument the callback got (message / error text), else None
    method: str | None  # getMethod()
    flags: tuple[bool, bool, bool, bool]  # isOnOpen(), isOnMessage(), isOnError(), isOnClose()
    session: Any  # getSession()
    message: Any  # getMessage()
    error: Any  # getError()
    close_code: int | None  # getCloseCode()
    close_reason: str | None  # getCloseReason()
    client_ids: tuple[str, ...]  # ids in getClients() during the call
    thread: str  # name of the thread the callback ran on
    on_event_loop: bool  # an asyncio loop was running in that thread

    @property
    def expected_flags(self) -> tuple[bool, bool, bool, bool]:
        name = self.name
        return (name == "onopen", name == "onmessage", name == "onerror", name == "onclose")


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Recording:
    """What both recorders share: the calls, the waits and the checks. The callbacks are in
    :class:`Recorder` (plain) and :class:`AsyncRecorder` (``async def``), which are siblings
    because an ``async def`` callback cannot stand in for a plain one.

    Subclasses override ``on_message_hook`` and friends to add behaviour.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._cond = threading.Condition()
        self._active = 0
        self.overlapped = False
        self.opened = threading.Event()
        self.errored = threading.Event()
        self.closed = threading.Event()

    # -- what the handler callbacks do -----------------------------------------------------

    def _on_open(self) -> None:
        self._enter("onopen", None)
        try:
            self.on_open_hook()
        finally:
            self._leave()

    def _on_message(self, message: Any) -> None:
        self._enter("onmessage", message)
        try:
            self.on_message_hook(message)
        finally:
            self._leave()

    def _on_error(self, error: Any) -> None:
        self._enter("onerror", error)
        try:
            self.on_error_hook(error)
        finally:
            self._leave()

    def _on_close(self) -> None:
        self._enter("onclose", None)
        self._leave()

    # -- hooks for subclasses ---------------------------------------------------------------

    def on_open_hook(self) -> None:
        pass

    def on_message_hook(self, message: Any) -> None:
        pass

    def on_error_hook(self, error: Any) -> None:
        pass

    # -- recording --------------------------------------------------------------------------

    def _enter(self, name: str, payload: Any) -> None:
        call = Call(
            name=name,
            payload=payload,
            method=polysocket.getMethod(),
            flags=(
                polysocket.isOnOpen(),
                polysocket.isOnMessage(),
                polysocket.isOnError(),
                polysocket.isOnClose(),
            ),
            session=polysocket.getSession(),
            message=polysocket.getMessage(),
            error=polysocket.getError(),
            close_code=polysocket.getCloseCode(),
            close_reason=polysocket.getCloseReason(),
            client_ids=tuple(c["id"] for c in polysocket.getClients()),
            thread=threading.current_thread().name,
            on_event_loop=_running_loop(),
        )
        with self._cond:
            self._active += 1
            if self._active > 1:
                self.overlapped = True
            self.calls.append(call)
            self._cond.notify_all()
        if name == "onopen":
            self.opened.set()
        elif name == "onerror":
            self.errored.set()

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            closing = self.calls[-1].name == "onclose"
            self._cond.notify_all()
        if closing:
            self.closed.set()

    # -- queries ----------------------------------------------------------------------------

    def of(self, name: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.name == name]

    @property
    def messages(self) -> list[Any]:
        return [c.payload for c in self.of("onmessage")]

    @property
    def errors(self) -> list[Any]:
        return [c.payload for c in self.of("onerror")]

    @property
    def names(self) -> list[str]:
        with self._cond:
            return [c.name for c in self.calls]

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def wait_messages(self, count: int, timeout: float = WAIT) -> list[Any]:
        """Wait until ``count`` messages arrived; return them (fewer if the wait timed out)."""
        self.wait_for(lambda r: len(r.of("onmessage")) >= count or r.closed.is_set(), timeout)
        return self.messages

    def wait_message(self, predicate: Callable[[Any], bool], timeout: float = WAIT) -> bool:
        return self.wait_for(lambda r: any(predicate(m) for m in r.messages), timeout)

    def wait_closed(self, timeout: float = WAIT) -> bool:
        return self.closed.wait(timeout)

    def assert_well_formed(self, *, on_loop: bool = False) -> None:
        """The invariants of SPEC 2.3/2.5 that hold for every connection."""
        calls = list(self.calls)
        names = [c.name for c in calls]
        assert names, "no callback ran at all"
        assert names[0] == "onopen", f"onOpen was not the first callback: {names[:5]}"
        assert names.count("onopen") == 1, f"onOpen ran {names.count('onopen')} times"
        if "onclose" in names:
            assert names.count("onclose") == 1, f"onClose ran {names.count('onclose')} times"
            assert names[-1] == "onclose", f"a callback ran after onClose: {names[-5:]}"
        assert not self.overlapped, "two callbacks of one connection ran at the same time"
        for call in calls:
            if call.name == "onclose":
                assert type(call.close_code) is int, (
                    f"getCloseCode() is {call.close_code!r} ({type(call.close_code).__name__}),"
                    " not a plain int"
                )
                assert type(call.close_reason) is str, (
                    f"getCloseReason() is {call.close_reason!r}, not a str"
                )
            assert call.method == call.name, f"getMethod() was {call.method!r} in {call.name}"
            assert call.flags == call.expected_flags, (
                f"isOnOpen/isOnMessage/isOnError/isOnClose were {call.flags} in {call.name}"
            )
            if on_loop:
                assert call.on_event_loop, f"async {call.name} did not run on an event loop"
            else:
                assert not call.on_event_loop, (
                    f"plain {call.name} ran on an event-loop thread ({call.thread});"
                    " plain callbacks must run on a handler thread"
                )


class Recorder(_Recording):
    """A handler object that records every callback; tests wait on it, never sleep."""

    def onOpen(self) -> None:
        self._on_open()

    def onMessage(self, message: Any) -> None:
        self._on_message(message)

    def onError(self, error: Any) -> None:
        self._on_error(error)

    def onClose(self) -> None:
        self._on_close()


class AsyncRecorder(_Recording):
    """The same recorder, with every callback an ``async def``."""

    async def onOpen(self) -> None:
        self._on_open()

    async def onMessage(self, message: Any) -> None:
        self._enter("onmessage", message)
        try:
            await asyncio.sleep(0)  # yield to the loop mid-callback: still no overlap allowed
        finally:
            self._leave()

    async def onError(self, error: Any) -> None:
        self._on_error(error)

    async def onClose(self) -> None:
        self._on_close()


# -- handler files written by tests ---------------------------------------------------------

_shared: dict[str, Recorder] = {}
_shared_lock = threading.Lock()


def shared_recorder(key: str) -> Recorder:
    """The recorder a handler file written by a test binds its callbacks to."""
    with _shared_lock:
        return _shared.setdefault(key, Recorder())


def handler_source(key: str, *, snake_case: bool = False) -> str:
    """Python source of a handler module whose callbacks feed ``shared_recorder(key)``."""
    names = (
        ("on_open", "on_message", "on_error", "on_close")
        if snake_case
        else ("onOpen", "onMessage", "onError", "onClose")
    )
    return (
        "from polysocket_conformance.support import shared_recorder\n"
        f"_recorder = shared_recorder({key!r})\n"
        "\n"
        f"def {names[0]}():\n"
        "    _recorder.onOpen()\n"
        "\n"
        f"def {names[1]}(message):\n"
        "    _recorder.onMessage(message)\n"
        "\n"
        f"def {names[2]}(error):\n"
        "    _recorder.onError('Error: ' + error)\n"
        "\n"
        f"def {names[3]}():\n"
        "    _recorder.onClose()\n"
    )


# -- plain TCP servers ----------------------------------------------------------------------


class Tripwire:
    """A listening TCP socket that never accepts: tells whether anybody tried to connect.

    The kernel completes TCP handshakes into the backlog, so a client connect succeeds, and a
    non-blocking ``accept`` afterwards shows whether one happened. Used both for "no traffic"
    checks and as a server that accepts but never answers the WebSocket handshake.
    """

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=16)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self._accepted: list[socket.socket] = []

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    def connections(self) -> int:
        """How many TCP connections arrived so far."""
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return len(self._accepted)
            self._accepted.append(conn)

    def close(self) -> None:
        for conn in self._accepted:
            conn.close()
        self._sock.close()


class ClosedPort:
    """A port that is bound but not listening: connecting to it is refused."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    def close(self) -> None:
        self._sock.close()


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` in a fresh event loop (``asyncio.run``), bounded by ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def require_capability(engine: str, capability: str) -> None:
    """Skip (the only kind of skip the suite allows) when ``engine`` lacks ``capability``."""
    import pytest

    from polysocket.plugins import registry

    if capability not in registry.get(engine).capabilities:
        pytest.skip(f"engine lacks capability {capability!r}")


def client_engine(engine: str) -> str:
    """The engine a server test's clients use: ``engine`` itself, or for a server-only
    engine (no ``"client"`` capability) the default engine, so that its server is still
    tested (the suite's plugin skips the tests that need ``engine`` as a client)."""
    from polysocket.plugins import DEFAULT_ENGINE, registry

    return engine if "client" in registry.get(engine).capabilities else DEFAULT_ENGINE


def outside_callback_state() -> dict[str, Any]:
    """What the context API reports outside any callback (all None / False per SPEC 1)."""
    return {
        "getMethod": polysocket.getMethod(),
        "getMessage": polysocket.getMessage(),
        "getError": polysocket.getError(),
        "getSession": polysocket.getSession(),
        "getCloseCode": polysocket.getCloseCode(),
        "getCloseReason": polysocket.getCloseReason(),
        "isOnOpen": polysocket.isOnOpen(),
        "isOnMessage": polysocket.isOnMessage(),
        "isOnError": polysocket.isOnError(),
        "isOnClose": polysocket.isOnClose(),
    }


OUTSIDE = {
    "getMethod": None,
    "getMessage": None,
    "getError": None,
    "getSession": None,
    "getCloseCode": None,
    "getCloseReason": None,
    "isOnOpen": False,
    "isOnMessage": False,
    "isOnError": False,
    "isOnClose": False,
}


def ss_command() -> str:
    """iproute2's ``ss`` (socket queues as the kernel sees them): skipped without it, or a
    failure under ``POLYSOCKET_REQUIRE_PEERS`` (CI installs it)."""
    from .peer_processes import require_peers

    ss = shutil.which("ss")
    if ss is None:
        missing = "needs iproute2's ss to read socket queues"
        if require_peers():
            pytest.fail(missing)
        pytest.skip(missing)
    return ss


def unread_in_kernel(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` (TCP, IPv4) that the other end has not read yet: our send queue
    and its receive queue, which the kernel may have autotuned to tens of MiB."""
    ss = ss_command()
    here, there = sock.getsockname(), sock.getpeername()

    def queues(src: tuple[str, int], dst: tuple[str, int]) -> tuple[int, int]:
        out = subprocess.run(
            [ss, "-tnH", "src", f"{src[0]}:{src[1]}", "dst", f"{dst[0]}:{dst[1]}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return (int(out[1]), int(out[2])) if out else (0, 0)

    return queues(here, there)[1] + queues(there, here)[0]


#: A server's TLS context and a client's that trusts it.
TlsContexts = tuple[ssl.SSLContext, ssl.SSLContext]


def tls_contexts(*hostnames: str) -> TlsContexts:
    """A new certificate authority (trustme) and a server certificate for ``hostnames``:
    the server's context and a client's that trusts it."""
    trustme = pytest.importorskip("trustme", reason="test certificates need trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hostnames).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context
