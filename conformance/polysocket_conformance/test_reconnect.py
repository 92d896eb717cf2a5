"""Clients that reconnect (``reconnect=``), against a real peer process that the test SIGKILLs
mid-stream and starts again on the same port.

The sync client: ``onOpen`` on every connection, ``onError`` about each loss and each failed
attempt, ``onClose`` once, when closed for good; the same id in ``getClients()`` meanwhile;
``getSession().reconnects`` 0 then 1; ``send()`` during the outage raises after
``send_timeout``. Without ``reconnect=``, one ``onClose`` (1006). The asyncio form is
``async for ws in polysocket.connect(uri, reconnect=...)``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import polysocket
from polysocket import ConnectError, ConnectionClosedError, ReconnectPolicy, SendTimeoutError
from polysocket_conformance.peer_processes import KINDS, Peer, port_outside_the_ephemeral_range
from polysocket_conformance.rawframes import CLOSE, RawServer, close_frame
from polysocket_conformance.support import WAIT, AsyncRecorder, Recorder, _Recording

#: Small delays: attempt n waits min(0.5, 0.1 * 2 ** (n - 2)) s plus up to 0.1, 0.6 at most.
FAST = ReconnectPolicy(initial_delay=0.1, factor=2.0, max_delay=0.5, jitter=0.1)
#: What connecting to a peer that is up may take on a loaded machine, on top of the delay.
CONNECT_SLACK = 2.0
#: Enough messages that the stream is still flowing when the peer is killed.
STREAM = "cmd:burst:10000000"


@dataclass
class Restartable:
    """A peer process that the test kills (SIGKILL) and starts again on the same port."""

    peer: Peer
    start: Callable[..., Peer]

    @property
    def uri(self) -> str:
        return self.peer.uri

    def kill(self) -> None:
        self.peer.kill()

    def restart(self) -> Peer:
        self.peer = self.start(self.peer.kind, self.peer.port)
        return self.peer


@pytest.fixture
def restartable(start_private_peer: Callable[..., Peer]) -> Callable[[str], Restartable]:
    """Factory: a peer of a kind, on a port it gets back when restarted."""

    def start(kind: str) -> Restartable:
        return Restartable(
            start_private_peer(kind, port_outside_the_ephemeral_range()), start_private_peer
        )

    return start


class Reopens:
    """Records ``getSession().reconnects`` in every onOpen (mixed into a recorder)."""

    reconnects: list[int]

    def on_open_hook(self) -> None:
        self.reconnects.append(polysocket.getSession().reconnects)


class ReopenRecorder(Reopens, Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.reconnects = []


class AsyncReopenRecorder(Reopens, AsyncRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.reconnects = []


def _check_order(recorder: _Recording, opens: int) -> None:
    """One handler queue across connections: no overlap; onClose once and last; every
    onOpen after the first comes after an onError about the loss, with no message between."""
    names = recorder.names
    assert not recorder.overlapped, "two callbacks of one client ran at the same time"
    assert names.count("onopen") == opens, f"onOpen ran {names.count('onopen')} times: {names}"
    assert names[0] == "onopen", names[:5]
    assert names.count("onclose") == 1 and names[-1] == "onclose", names[-5:]
    for index, name in enumerate(names):
        if name == "onopen" and index:
            assert names[index - 1] == "onerror", (
                f"onOpen of a new connection not right after onError: {names[index - 5 : index]}"
            )


@pytest.mark.parametrize("kind", KINDS)
def test_killed_server_is_reconnected(
    engine: str, kind: str, restartable: Callable[[str], Restartable]
) -> None:
    """Done-when of issue 11: a server killed and restarted mid-stream; the reconnect=True
    client is back within the backoff, onOpen twice, onClose once (after close())."""
    server = restartable(kind)
    recorder = ReopenRecorder()
    client = polysocket.createWebsocket(
        server.uri, recorder, engine, reconnect=FAST, send_timeout=0.5
    )
    client.send(STREAM)
    assert len(recorder.wait_messages(100)) >= 100, f"no stream: {recorder.names[:5]}"
    server.kill()
    assert recorder.errored.wait(WAIT), "no onError after the server was killed"
    loss = recorder.errors[0]
    assert "lost" in loss and "reconnecting: attempt 1 in" in loss, loss
    assert not recorder.closed.is_set(), "onClose ran although the client reconnects"
    assert [c["id"] for c in polysocket.getClients()] == [client.id]
    assert not client.closed

    # The outage: send() waits send_timeout for the new connection, then says so.
    started = time.monotonic()
    with pytest.raises(ConnectionClosedError, match="reconnecting"):
        client.send("during the outage")
    waited = time.monotonic() - started
    assert 0.5 <= waited < 0.5 + CONNECT_SLACK, f"send() gave up after {waited:.2f} s"

    server.restart()
    restarted = time.monotonic()
    assert recorder.wait_for(lambda r: len(r.of("onopen")) == 2, FAST.longest + WAIT)
    back = time.monotonic() - restarted
    assert back <= FAST.longest + CONNECT_SLACK, f"back {back:.2f} s after the restart"
    assert recorder.reconnects == [0, 1]
    assert client.reconnects == 1
    opens = recorder.of("onopen")
    assert all(call.session is client for call in opens)
    assert all(call.client_ids == (client.id,) for call in opens), [c.client_ids for c in opens]
    # Every failed attempt in the outage was reported, with the next one's delay.
    failed = [e for e in recorder.errors[1:] if "failed" in e]
    assert failed and all("attempt" in e and " in " in e for e in failed), recorder.errors

    before = len(recorder.messages)
    client.send("back")  # works again on the new connection
    assert recorder.wait_message(lambda m: m == "back"), "no echo on the new connection"
    assert len(recorder.messages) > before
    assert not recorder.closed.is_set()
    client.close()
    assert recorder.wait_closed(), "onClose did not run after close()"
    assert recorder.of("onclose")[0].close_code == 1000
    assert polysocket.getClients() == []
    _check_order(recorder, opens=2)


@pytest.mark.parametrize("recorder", [ReopenRecorder, AsyncReopenRecorder], ids=["def", "async"])
def test_a_dropped_connection_is_reconnected(
    engine: str, peer: Peer, recorder: type[_Recording]
) -> None:
    """The server drops the TCP connection (no close frame) and stays up: plain and
    ``async def`` callbacks alike run in order across the connections, where they run."""
    handler = recorder()
    assert isinstance(handler, Reopens)
    client = polysocket.createWebsocket(peer.uri, handler, engine, reconnect=FAST)
    client.send("before")
    assert handler.wait_message(lambda m: m == "before")
    client.send("cmd:kill")
    assert handler.wait_for(lambda r: len(r.of("onopen")) == 2), handler.names
    assert handler.reconnects == [0, 1]
    assert "1006" in handler.errors[0] and "reconnecting" in handler.errors[0], handler.errors
    client.send("after")
    assert handler.wait_message(lambda m: m == "after")
    client.close()
    assert handler.wait_closed()
    assert handler.messages == ["before", "after"]
    _check_order(handler, opens=2)
    on_loop = isinstance(handler, AsyncRecorder)
    assert all(call.on_event_loop is on_loop for call in handler.calls), [
        (c.name, c.thread) for c in handler.calls
    ]


def test_without_reconnect_a_killed_server_ends_the_client(
    engine: str, restartable: Callable[[str], Restartable]
) -> None:
    """Reconnect off (the default): exactly one onClose, 1006, and the client is gone."""
    server = restartable("websockets")
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri, recorder, engine)
    client.send(STREAM)
    assert len(recorder.wait_messages(100)) >= 100
    server.kill()
    assert recorder.wait_closed(), "onClose did not run after the server was killed"
    assert polysocket.getClient(client.id) is None
    server.restart()
    time.sleep(FAST.longest + 0.5)  # what a reconnection would have needed: none comes
    assert recorder.names.count("onclose") == 1
    assert recorder.names.count("onopen") == 1
    assert recorder.of("onclose")[0].close_code == 1006
    with pytest.raises(ConnectionClosedError):
        client.send("gone")
    recorder.assert_well_formed()


def test_gives_up_after_max_attempts(
    engine: str, restartable: Callable[[str], Restartable]
) -> None:
    """The server stays down: each failed attempt goes to onError, then onError says it
    gave up, then onClose (1006, how the last connection ended), once. No attempt leaves a
    file descriptor behind."""
    server = restartable("websockets")
    policy = ReconnectPolicy(
        initial_delay=0.05, factor=2.0, max_delay=0.2, jitter=0.05, max_attempts=3
    )
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri, recorder, engine, reconnect=policy)
    assert recorder.opened.wait(WAIT)
    descriptors = _open_descriptors()
    server.kill()
    started = time.monotonic()
    assert recorder.wait_closed(), f"the client did not give up: {recorder.names}"
    took = time.monotonic() - started
    bound = sum(policy.bound(n) for n in range(1, 4)) + 3 * CONNECT_SLACK
    assert took < bound, f"giving up took {took:.2f} s"
    assert recorder.names == ["onopen", "onerror", "onerror", "onerror", "onerror", "onclose"]
    loss, first, second, gave_up = recorder.errors
    assert "reconnecting: attempt 1 in" in loss
    assert "attempt 1 failed" in first and "attempt 2 in" in first, first
    assert "attempt 2 failed" in second and "attempt 3 in" in second, second
    assert "gave up" in gave_up and "3 attempt" in gave_up, gave_up
    closed = recorder.of("onclose")[0]
    assert closed.close_code == 1006
    assert closed.client_ids == (), "the client was still listed in onClose"
    assert polysocket.getClient(client.id) is None
    assert client.closed
    gc.collect()  # a library's socket that only its finalizer closes counts as leaked
    # the client's socket is gone; the peer's pipes stay open until the test ends
    assert _open_descriptors() <= descriptors, "failed attempts left file descriptors open"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))  # Linux, as the suite's ss-based tests


def test_what_was_queued_at_the_loss_is_reported_not_resent(
    engine: str, raw_server: Callable[..., RawServer]
) -> None:
    """A server that stops reading, then drops the connection (RST) while messages wait in
    the client's queue: the onError about the loss counts them; the new connection gets
    only what is sent after it opened."""
    release = threading.Event()
    second: list[bytes] = []

    def conversation(sock: socket.socket, reader: Any) -> None:
        if server.handshakes == 1:
            release.wait(WAIT)  # read nothing: the client's queue fills up
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closed with SO_LINGER 0: a reset, no close frame
        while True:
            opcode, _, payload = reader.frame()
            if opcode == CLOSE:
                sock.sendall(close_frame(1000, mask=False))
                return
            second.append(payload)

    server = raw_server(conversation=conversation)
    recorder = Recorder()
    client = polysocket.createWebsocket(
        server.uri, recorder, engine, reconnect=FAST, write_limit=65536, send_timeout=0.2
    )
    assert recorder.opened.wait(WAIT)
    chunk = b"q" * 65536
    for _ in range(2000):  # the kernel's buffers first (a few MiB), then our queue
        try:
            client.send(chunk)
        except SendTimeoutError:
            break
    else:
        pytest.fail("the send queue never filled up against a server that reads nothing")
    release.set()
    assert recorder.wait_for(lambda r: len(r.of("onopen")) == 2), recorder.names
    loss = recorder.errors[0]
    assert "queued for sending were not sent" in loss and "reconnecting" in loss, loss
    client.send("after")
    client.close()
    assert recorder.wait_closed()
    assert second == [b"after"], f"the new connection got {len(second)} messages"
    _check_order(recorder, opens=2)


@pytest.mark.parametrize("code", [1000, 1001])
def test_a_normal_close_from_the_server_is_not_retried(engine: str, peer: Peer, code: int) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine, reconnect=FAST)
    client.send(f"cmd:close:{code}:bye")
    assert recorder.wait_closed(), "onClose did not run after the server closed"
    time.sleep(FAST.longest + 0.2)  # what a reconnection would have needed: none comes
    assert recorder.names == ["onopen", "onclose"]
    assert recorder.of("onclose")[0].close_code == code
    assert polysocket.getClient(client.id) is None
    recorder.assert_well_formed()


def test_a_normal_close_is_retried_when_the_policy_says_so(engine: str, peer: Peer) -> None:
    recorder = ReopenRecorder()
    policy = ReconnectPolicy(initial_delay=0.1, max_delay=0.5, jitter=0.1, retry_normal_close=True)
    client = polysocket.createWebsocket(peer.uri, recorder, engine, reconnect=policy)
    client.send("cmd:close:1001:going away")
    assert recorder.wait_for(lambda r: len(r.of("onopen")) == 2), recorder.names
    assert "1001" in recorder.errors[0] and "going away" in recorder.errors[0], recorder.errors
    assert recorder.reconnects == [0, 1]
    client.send("again")
    assert recorder.wait_message(lambda m: m == "again")
    client.close()
    assert recorder.wait_closed()
    _check_order(recorder, opens=2)


def test_close_during_the_backoff_ends_it_at_once(
    engine: str, restartable: Callable[[str], Restartable]
) -> None:
    server = restartable("websockets")
    slow = ReconnectPolicy(initial_delay=30.0, jitter=0.0)  # attempt 1 at once, then 30 s
    recorder = Recorder()
    client = polysocket.createWebsocket(server.uri, recorder, engine, reconnect=slow)
    assert recorder.opened.wait(WAIT)
    server.kill()
    assert recorder.wait_for(lambda r: any("attempt 2 in 30.00 s" in e for e in r.errors)), (
        recorder.errors
    )
    started = time.monotonic()
    client.close()
    took = time.monotonic() - started
    assert took < 1.0, f"close() during a 30 s backoff took {took:.2f} s"
    assert recorder.closed.is_set(), "close() returned before onClose ran"
    assert recorder.of("onclose")[0].close_code == 1006
    assert polysocket.getClients() == []
    server.restart()
    time.sleep(0.3)
    assert recorder.names.count("onopen") == 1 and recorder.names.count("onclose") == 1
    _check_order(recorder, opens=1)


def test_async_for_reconnects(engine: str, restartable: Callable[[str], Restartable]) -> None:
    """``async for ws in connect(uri, reconnect=...)``: a new connection after each loss."""
    server = restartable("websockets")

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {"connections": 0, "codes": []}
        async for ws in polysocket.connect(server.uri, engine=engine, reconnect=FAST):
            seen["connections"] += 1
            if seen["connections"] == 1:
                await ws.send(STREAM)
                for _ in range(100):
                    await ws.recv()
                server.kill()
                with pytest.raises(ConnectionClosedError) as lost:
                    while True:
                        await ws.recv()
                seen["codes"].append(lost.value.code)
                await asyncio.to_thread(server.restart)
                seen["restarted"] = time.monotonic()
                continue
            seen["back"] = time.monotonic() - seen["restarted"]
            await ws.send("hello")
            seen["echo"] = await ws.recv()
            await ws.close()  # ends the loop (a break would leave ws to the generator's end)
        return seen

    seen = asyncio.run(asyncio.wait_for(run(), 3 * WAIT))
    assert seen["connections"] == 2
    assert seen["codes"] == [1006]
    assert seen["echo"] == "hello"
    assert seen["back"] <= FAST.longest + CONNECT_SLACK, f"back after {seen['back']:.2f} s"


def test_async_for_ends_on_a_normal_close(engine: str, peer: Peer) -> None:
    async def run() -> list[int | None]:
        codes = []
        async for ws in polysocket.connect(peer.uri, engine=engine, reconnect=FAST):
            await ws.send("cmd:close:1000:bye")
            async for _ in ws:  # ends quietly on 1000
                pass
            codes.append(ws.close_code)
        return codes

    assert asyncio.run(asyncio.wait_for(run(), WAIT)) == [1000]


def test_async_for_gives_up_after_max_attempts(engine: str) -> None:
    from polysocket_conformance.support import ClosedPort

    port = ClosedPort()
    policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.1, jitter=0.05, max_attempts=2)

    async def run() -> None:
        async for _ in polysocket.connect(port.uri, engine=engine, reconnect=policy):
            pytest.fail("connected to a closed port")

    try:
        with pytest.raises(ConnectError, match=r"gave up reconnecting .* after 2 attempt"):
            asyncio.run(asyncio.wait_for(run(), WAIT))
    finally:
        port.close()
