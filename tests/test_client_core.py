"""The client lifecycle of SPEC section 2, checked against the in-memory engine."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import polysocket
from polysocket import ConnectError, ConnectionClosedError, UnsupportedOptionError
from polysocket.runtime import background
from polysocket.testing import MemoryEngine, install

URI = "ws://memory.test/"


def open_client(handler, **options):
    return polysocket.createWebsocket(URI, handler, engine="memory", **options)


def test_lifecycle_order_and_context(memory, recorder):
    seen = {}

    class Handler(type(recorder)):
        def onOpen(self):
            seen["open"] = (
                polysocket.isOnOpen(),
                polysocket.getSession() is not None,
                [c["id"] for c in polysocket.getClients()],
            )
            super().onOpen()

        def onMessage(self, message):
            seen["message"] = (polysocket.getMessage(), polysocket.isOnMessage())
            super().onMessage(message)

        def onClose(self):
            seen["close"] = (polysocket.isOnClose(), [c["id"] for c in polysocket.getClients()])
            super().onClose()

    handler = Handler()
    client = open_client(handler)
    client.send("hello")
    handler.wait_messages(1)
    client.close()
    assert handler.closed.wait(5)
    assert handler.methods == ["onopen", "onmessage", "onclose"]
    assert seen["open"] == (True, True, [client.id])
    assert seen["message"] == ("hello", True)
    assert seen["close"] == (True, [])
    assert handler.calls[-1] == ("onclose", (1000, ""))
    assert polysocket.getMethod() is None and polysocket.getMessage() is None
    assert not polysocket.isOnOpen()


def test_plain_callbacks_run_on_handler_threads_async_ones_on_the_loop(memory, recorder):
    threads = []

    class AsyncHandler:
        async def onOpen(self):
            threads.append(background.in_loop_thread())

        async def onMessage(self, message):
            threads.append((message, background.in_loop_thread()))

    client_a = open_client(recorder)
    client_b = open_client(AsyncHandler())
    client_b.send("x")
    deadline = time.monotonic() + 5
    while len(threads) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    client_a.close()
    client_b.close()
    assert threads == [True, ("x", True)]
    assert all(name.startswith("polysocket-handler") for name in recorder.threads)


def test_callback_exception_goes_to_on_error_and_connection_stays_open(memory, recorder):
    class Failing(type(recorder)):
        def onMessage(self, message):
            super().onMessage(message)
            if message == "boom":
                raise ValueError("bad message")

    handler = Failing()
    client = open_client(handler)
    client.send("boom")
    client.send("after")
    handler.wait_messages(2)
    client.close()
    assert handler.methods[:4] == ["onopen", "onmessage", "onerror", "onmessage"]
    error = handler.errors[0]
    assert isinstance(error, str) and "ValueError: bad message" in error
    assert isinstance(error.exception, ValueError)
    assert ("Error: " + error).startswith("Error: ValueError")


def test_peer_close_code_and_lost_connection(memory, recorder):
    client = open_client(recorder)
    client.send("close-4000")
    assert recorder.closed.wait(5)
    assert recorder.calls[-1] == ("onclose", (4000, "bye"))
    assert client.close_code == 4000
    assert polysocket.getClients() == []

    lost = type(recorder)()
    client = open_client(lost)
    client.send("drop")
    assert lost.closed.wait(5)
    assert lost.calls[-1] == ("onclose", (1006, ""))
    assert lost.methods.count("onclose") == 1


def test_oversized_message_reports_error_then_1009(recorder):
    async def big(end):
        await end.send(b"x" * 2048)
        async for _ in end:
            pass

    with install(MemoryEngine(big)):
        open_client(recorder, max_size=1024)
        assert recorder.closed.wait(5)
    assert recorder.methods == ["onopen", "onerror", "onclose"]
    assert "max_size=1024" in recorder.errors[0]
    assert recorder.calls[-1][1][0] == 1009


def test_refused_handshake_registers_nothing(recorder):
    with install(MemoryEngine(None, refuse=403)), pytest.raises(ConnectError) as info:
        open_client(recorder)
    assert info.value.status == 403
    assert recorder.calls == [] and polysocket.getClients() == []


def test_options_are_checked_before_connecting(recorder):
    bare = MemoryEngine(None, capabilities=frozenset({"client"}))
    with install(bare):
        with pytest.raises(UnsupportedOptionError, match="headers"):
            open_client(recorder, headers={"X": "1"})
        with pytest.raises(UnsupportedOptionError, match="unknown option"):
            open_client(recorder, compresion="deflate")
        with pytest.raises(TypeError, match="max_size"):
            open_client(recorder, max_size=-1)
        with pytest.raises(TypeError, match="subprotocols"):
            open_client(recorder, subprotocols="chat")
        with pytest.raises(ConnectError, match="ws://"):
            polysocket.createWebsocket("http://x/", recorder, engine="memory")
        with pytest.raises(UnsupportedOptionError, match="'tls'"):
            polysocket.createWebsocket("wss://x/", recorder, engine="memory")
        for option, value in [("compression", "deflate"), ("ping_interval", 1.0)]:
            with pytest.raises(UnsupportedOptionError, match=option):
                open_client(recorder, **{option: value})
        with pytest.raises(UnsupportedOptionError, match="'deflate'"):
            open_client(recorder, compression="gzip")
        with pytest.raises(TypeError, match="ping_timeout"):
            open_client(recorder, ping_timeout=0)
        with pytest.raises(TypeError, match="SSLContext"):
            open_client(recorder, ssl=True)
    assert bare.peers == [] and recorder.calls == []


def test_send_rules(memory, recorder):
    client = open_client(recorder)
    with pytest.raises(TypeError, match="not int"):
        client.send(123)
    client.send(bytearray(b"ab"))
    client.send(memoryview(b"cd"))
    assert recorder.wait_messages(2) == [b"ab", b"cd"]
    with pytest.raises(ValueError, match="close code"):
        client.close(1006)
    client.close()
    client.close()
    with pytest.raises(ConnectionClosedError):
        client.send("late")
    assert recorder.methods.count("onclose") == 1


def test_close_from_inside_on_message(memory, recorder):
    class Closing(type(recorder)):
        def onMessage(self, message):
            polysocket.getSession().close(4002, "from callback")
            super().onMessage(message)

    handler = Closing()
    client = open_client(handler)
    client.send("x")
    assert handler.closed.wait(5)
    assert handler.calls[-1] == ("onclose", (4002, "from callback"))
    assert client.closed


def test_one_wake_up_per_burst_of_received_messages(recorder, monkeypatch):
    from polysocket import dispatch

    async def burst(end):
        await end.receive()
        for i in range(2000):
            end._out.queue.put_nowait(str(i))  # one burst, no yield between messages
        async for _ in end:
            pass

    submits = []
    real_submit = dispatch.handler_threads.submit
    monkeypatch.setattr(
        dispatch.handler_threads, "submit", lambda task: (submits.append(1), real_submit(task))
    )
    with install(MemoryEngine(burst)):
        client = open_client(recorder)
        recorder.opened.wait(5)
        submits.clear()
        client.send("go")
        assert recorder.wait_messages(2000) == [str(i) for i in range(2000)]
        client.close()
    assert len(submits) < 50, f"{len(submits)} wake-ups for 2000 messages"


def test_one_wake_up_per_burst_of_sent_messages(recorder, monkeypatch):
    got = []

    async def sink(end):
        async for message in end:
            got.append(message)

    with install(MemoryEngine(sink)):
        client = open_client(recorder)
        loop = background.loop
        wakes = []
        real = loop.call_soon_threadsafe
        monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a: (wakes.append(1), real(*a)))
        blocked = threading.Event()
        real(lambda: (blocked.set(), time.sleep(0.3)))  # hold the loop while we send
        blocked.wait(5)
        for i in range(1000):
            client.send(str(i))
        monkeypatch.undo()
        client.close()
    assert got == [str(i) for i in range(1000)]
    assert len(wakes) <= 2, f"{len(wakes)} wake-ups for 1000 sends"


def test_send_blocks_while_the_peer_is_slow(recorder):
    gate = asyncio.Event()
    got = []

    class GatedEngine(MemoryEngine):
        async def connect(self, uri, options):
            transport = await super().connect(uri, options)
            send = transport.send

            async def slow_send(message):
                await gate.wait()
                await send(message)

            transport.send = slow_send
            return transport

    async def sink(end):
        async for message in end:
            got.append(message)

    with install(GatedEngine(sink)):
        client = open_client(recorder, write_limit=1000)
        done = threading.Event()

        def sender():
            for _ in range(50):
                client.send("x" * 100)
            done.set()

        threading.Thread(target=sender, daemon=True).start()
        assert not done.wait(0.5), "send() did not block while the peer was not reading"
        background.loop.call_soon_threadsafe(gate.set)
        assert done.wait(5)
        client.close()
    assert len(got) == 50


def test_sync_api_inside_a_running_event_loop(memory, recorder):
    async def main():
        client = open_client(recorder)
        client.send("from a coroutine")
        client.close()
        return client

    client = asyncio.run(main())
    assert recorder.closed.wait(5)
    assert ("onmessage", "from a coroutine") in recorder.calls
    assert client.close_code == 1000


def test_blocking_call_from_an_async_callback_is_a_clear_error(memory, recorder):
    errors = []

    class Nested:
        async def onOpen(self):
            try:
                polysocket.createWebsocket(URI, recorder, engine="memory")
            except polysocket.WebsocketError as exc:
                errors.append(str(exc))

    client = open_client(Nested())
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    client.close()
    assert errors and "asyncio API" in errors[0]


def test_context_is_private_to_each_callback(memory):
    mismatches = []
    done = threading.Barrier(3, timeout=10)

    class Slow:
        def onMessage(self, message):
            time.sleep(0.05)
            if polysocket.getMessage() != message:
                mismatches.append((message, polysocket.getMessage()))
            if message.endswith("last"):
                done.wait()

    clients = [open_client(Slow()) for _ in range(2)]
    for index, client in enumerate(clients):
        for i in range(5):
            client.send(f"{index}-{i}")
        client.send(f"{index}-last")
    done.wait()
    for client in clients:
        client.close()
    assert mismatches == []


def test_registry_lookups(memory, recorder):
    first = open_client(recorder)
    second = open_client(recorder)
    assert [c["id"] for c in polysocket.getClients()] == [first.id, second.id]
    assert polysocket.getClient(second.id) is second
    assert polysocket.getClientByHandler(recorder) is first
    assert polysocket.getClients()[0]["engine"] == "memory"
    first.close()
    assert polysocket.getClientByHandler(recorder) is second
    second.close()
    assert polysocket.getClient(second.id) is None


def test_open_clients_are_closed_with_1001_at_interpreter_exit():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import polysocket
        from polysocket.testing import MemoryEngine, install

        async def silent(end):
            async for _ in end:
                pass

        class Handler:
            def onClose(self):
                print("onClose", polysocket.getCloseCode(), flush=True)

        installed = install(MemoryEngine(silent))
        installed.__enter__()
        polysocket.createWebsocket("ws://memory.test/", Handler(), engine="memory")
        print("exiting", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["exiting", "onClose", "1001"]
