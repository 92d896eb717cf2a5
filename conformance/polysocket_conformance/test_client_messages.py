"""SPEC 2.3 and 2.6: messages arrive whole, typed and in order; send is thread-safe."""

from __future__ import annotations

import os
import threading
from collections import defaultdict

import pytest

import polysocket
from polysocket_conformance.peer_processes import Peer
from polysocket_conformance.support import WAIT, Recorder


def test_thousand_messages_in_order(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    expected = [f"message {i}" for i in range(1000)]
    for text in expected:
        client.send(text)
    assert recorder.wait_messages(1000, timeout=20) == expected
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


def test_text_and_binary_keep_their_type(engine: str, peer: Peer) -> None:
    """str stays str; bytes stays bytes; bytearray and memoryview are sent as binary."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    sent: list[str | bytes | bytearray | memoryview] = [
        "text",
        b"\x00\xffbinary",
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        "",
        b"",
        "unicode \u00e9\u4e2d\U0001f600",
    ]
    for message in sent:
        client.send(message)
    got = recorder.wait_messages(len(sent))
    expected = ["text", b"\x00\xffbinary", b"bytearray", b"memoryview", "", b"", sent[-1]]
    assert got == expected
    assert [type(m) for m in got] == [str, bytes, bytes, bytes, str, bytes, str]
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


def test_five_mib_round_trip(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    binary = os.urandom(5 * 1024 * 1024)
    text = "0123456789abcdef" * (5 * 1024 * 1024 // 16)
    client.send(binary)
    client.send(text)
    got = recorder.wait_messages(2, timeout=30)
    assert len(got) == 2, f"got {len(got)} of 2 large messages"
    assert type(got[0]) is bytes and got[0] == binary, "the 5 MiB binary message changed"
    assert type(got[1]) is str and got[1] == text, "the 5 MiB text message changed"
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


def test_burst_arrives_complete_and_in_order(engine: str, peer: Peer) -> None:
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send("cmd:burst:20000")
    got = recorder.wait_messages(20000, timeout=30)
    assert len(got) == 20000, f"got {len(got)} of 20000 burst messages"
    assert got == [str(i) for i in range(20000)], "burst messages out of order or changed"
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


@pytest.mark.parametrize("fragments", [50, 10000])
def test_fragmented_message_arrives_whole(engine: str, peer: Peer, fragments: int) -> None:
    """Whatever the number of fragments: max_size is the one limit (websockets' assembler
    alone would stop at 4096)."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    client.send(f"cmd:frag:{fragments}")
    assert recorder.wait_messages(1) == ["".join(f"{i};" for i in range(fragments))]
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


def test_send_from_eight_threads(engine: str, peer: Peer) -> None:
    """SPEC 2.6: send is safe from any thread; one thread's messages leave in call order."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    threads, per_thread = 8, 500
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def sender(t: int) -> None:
        try:
            start.wait(WAIT)
            for i in range(per_thread):
                client.send(f"{t}:{i}")
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not any(w.is_alive() for w in workers), "a sending thread is stuck"
    assert not failures, f"send() raised: {failures!r}"
    got = recorder.wait_messages(threads * per_thread, timeout=30)
    assert len(got) == threads * per_thread, f"{len(got)} of {threads * per_thread} echoed"
    by_thread: dict[int, list[int]] = defaultdict(list)
    for message in got:
        t, i = message.split(":")
        by_thread[int(t)].append(int(i))
    for t in range(threads):
        assert by_thread[t] == list(range(per_thread)), f"thread {t}'s messages out of order"
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


def test_send_from_inside_callbacks(engine: str, peer: Peer) -> None:
    """SPEC 2.6: send works from inside a callback (here onOpen and onMessage)."""

    class Replier(Recorder):
        def on_open_hook(self) -> None:
            polysocket.getSession().send("ping 0")

        def on_message_hook(self, message: object) -> None:
            if isinstance(message, str) and message.startswith("ping "):
                n = int(message.split()[1])
                if n < 9:
                    polysocket.getSession().send(f"ping {n + 1}")

    recorder = Replier()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    assert recorder.wait_messages(10) == [f"ping {n}" for n in range(10)]
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


def test_many_large_messages_none_dropped(engine: str, peer: Peer) -> None:
    """SPEC 2.6: send blocks under backpressure but never drops a message."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    count, size = 200, 64 * 1024
    for i in range(count):
        client.send(f"{i:08d}".encode() + b"." * (size - 8))
    got = recorder.wait_messages(count, timeout=30)
    assert len(got) == count, f"{len(got)} of {count} messages came back"
    assert [int(m[:8]) for m in got] == list(range(count))
    assert all(len(m) == size for m in got)
    client.close()
    assert recorder.wait_closed()
    recorder.assert_well_formed()


def test_close_flushes_what_was_sent(engine: str, peer: Peer) -> None:
    """SPEC 2.7: close() right after send() still delivers every message to the peer."""
    recorder = Recorder()
    client = polysocket.createWebsocket(peer.uri, recorder, engine)
    for i in range(500):
        client.send(f"flush {i}")
    client.close(4002, "flushed")
    assert recorder.wait_closed()
    seen = peer.last_close()
    assert seen == {"code": 4002, "reason": "flushed", "messages": 500}, seen
    recorder.assert_well_formed()
