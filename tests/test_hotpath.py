"""The per-message helpers: coalesced wake-ups, lazy flags, a context per async message."""

from __future__ import annotations

import asyncio
import threading

from polysocket.hotpath import Flag, LoopWakeups


def test_wake_ups_from_threads_coalesce_into_one_self_pipe_write():
    async def scenario() -> tuple[int, int, bool]:
        loop = asyncio.get_running_loop()
        wakeups = LoopWakeups(loop)
        calls = 0
        real = loop.call_soon_threadsafe

        def counting(*args: object) -> object:
            nonlocal calls
            calls += 1
            return real(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        ran: list[bool] = []
        loop_thread = threading.get_ident()
        all_ran = asyncio.Event()

        def callback() -> None:
            ran.append(threading.get_ident() == loop_thread)
            if len(ran) == 400:
                all_ran.set()

        def many() -> None:
            for _ in range(100):
                wakeups.add(callback)

        threads = [threading.Thread(target=many) for _ in range(4)]
        # the loop is held while the threads add: they share the wake-ups already scheduled
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        await asyncio.wait_for(all_ran.wait(), 5)
        return len(ran), calls, all(ran)

    ran, calls, on_loop = asyncio.run(scenario())
    assert ran == 400
    assert calls == 1, f"{calls} self-pipe wake-ups for 400 callbacks added while the loop was busy"
    assert on_loop


def test_flag_wakes_a_waiting_thread_and_stays_set():
    flag = Flag()
    assert not flag.is_set()
    assert not flag.wait(0.01)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(flag.wait(5)))
    waiter.start()
    flag.set()
    waiter.join(5)
    assert woke == [True]
    assert flag.is_set() and flag.wait(0)


def test_a_task_started_by_an_async_callback_keeps_its_own_message():
    """Async callbacks get a context per message: a task one starts reads its message even
    after later messages of the same burst were handled."""
    import polysocket
    from polysocket.testing import MemoryEngine, install

    async def burst(end):  # type: ignore[no-untyped-def]
        await end.receive()
        for text in ("a", "b", "c"):
            end._out.queue.put_nowait(text)  # one burst, no yield between messages
        async for _ in end:
            pass

    seen: list[object] = []
    done = threading.Event()

    class Handler:
        async def onMessage(self, message: str) -> None:
            async def later() -> None:
                await asyncio.sleep(0.05)  # the next messages are handled meanwhile
                seen.append((message, polysocket.getMessage()))
                if len(seen) == 3:
                    done.set()

            asyncio.get_running_loop().create_task(later())

    with install(MemoryEngine(burst)):
        client = polysocket.createWebsocket("ws://memory.test/", Handler(), engine="memory")
        try:
            client.send("go")
            assert done.wait(5)
        finally:
            client.close()
    assert sorted(seen) == [("a", "a"), ("b", "b"), ("c", "c")]
