"""The backplane link suite: one backplane's links against the contract of
:mod:`polysocket.backplane`, for any broker, with the cluster suite's options::

    pytest --pyargs polysocket_conformance.backplane_link_suite \\
        --polysocket-backplane='nats://user:pw@127.0.0.1:{port}' \\
        --polysocket-broker-command='nats-server -a 127.0.0.1 -p {port} --user user --pass pw'

``{port}`` is a free port picked per broker: the suite starts its own brokers (one per run
of the module, one more for the test that kills its broker). Without
``--polysocket-broker-command`` the URL must name a running broker (no ``{port}``), and the
tests that must stop or miss a broker skip; without ``--polysocket-backplane`` it tests
``memory://``. A password in the URL is checked never to show in an error.

It is not collected by a plain ``pytest --pyargs polysocket_conformance`` (the engine suite):
name it. Every test uses channel names of its own, so it can share a broker with others.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import pytest

from polysocket.backplane import Backplane, BackplaneLink, Delivery
from polysocket.errors import BackplaneError
from polysocket.plugins import registry

from .cluster_suite.support import Broker, free_port

T = TypeVar("T")

#: How long connect() may take on a broker that is up, or to give up on one that is not.
CONNECT_TIMEOUT = 3.0
#: How long a test waits for something that should happen promptly.
WAIT = 15.0
#: Messages in the order tests.
ORDER_COUNT = 10_000
#: How far past its ``timeout`` connect() may return (scheduling, closing what it opened).
TIMEOUT_SLACK = 1.5

_PASSWORD = re.compile(r"://[^/@]*?:([^/@]+)@")


def run(coroutine: Coroutine[Any, Any, T], limit: float = 60.0) -> T:
    """Run one test's coroutine on a fresh event loop, within ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, limit))


def _template(config: pytest.Config) -> str:
    return str(config.getoption("polysocket_backplane") or "memory://")


def _broker_command(config: pytest.Config) -> str | None:
    command = config.getoption("polysocket_broker_command", None)
    return str(command) if command else None


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backplane-link")


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest, logs: Path) -> Iterator[Broker | None]:
    """The module's private broker, when a broker command is given; else ``None`` (the URL
    names a running broker, or ``memory://``)."""
    command = _broker_command(request.config)
    template = _template(request.config)
    if command is None:
        if "{port}" in template:
            raise pytest.UsageError(
                f"--polysocket-backplane={template!r} has {{port}}: give the"
                " --polysocket-broker-command that starts a broker on it"
            )
        yield None
        return
    with Broker(command, template, logs) as started:
        yield started


def url_for(config: pytest.Config, port: int | None) -> str:
    template = _template(config)
    return template.format(port=port) if port is not None else template


@pytest.fixture
def url(request: pytest.FixtureRequest, broker: Broker | None) -> str:
    return url_for(request.config, broker.port if broker is not None else None)


@pytest.fixture
def backplane(url: str) -> Backplane:
    return registry.backplane(url)


def needs_broker_command(config: pytest.Config) -> str:
    command = _broker_command(config)
    if command is None or "{port}" not in _template(config):
        pytest.skip(
            "needs a broker of its own to stop or to miss: --polysocket-broker-command and"
            " a --polysocket-backplane with {port}"
        )
    return command


def channel(name: str = "") -> str:
    """A channel name no other test (nor another run on a shared broker) uses."""
    return f"linksuite-{secrets.token_hex(4)}:{name}"


def payloads(count: int) -> list[bytes]:
    """Text-like and arbitrary bytes in turn: protocol-looking lines, NULs, every byte value,
    invalid UTF-8, an empty message."""
    kinds: list[Callable[[int], bytes]] = [
        lambda i: b"message %d" % i,
        lambda i: bytes(range(256))[i % 256 :] + bytes(range(i % 256)),
        lambda i: b"PUB x 5\r\nhello\r\n%d" % i,
        lambda i: b"\x00\xff\xfe" * (i % 7) + i.to_bytes(4, "big"),
        lambda i: "é€😀 %d".encode() % i if i % 11 else b"",
        lambda i: b"\xc3\x28" + secrets.token_bytes(i % 50),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


async def connect(backplane: Backplane, url: str) -> BackplaneLink:
    return await backplane.connect(url, timeout=CONNECT_TIMEOUT)


async def collect(link: BackplaneLink, count: int, limit: float = WAIT) -> list[Delivery]:
    """The first ``count`` deliveries of ``link`` (fewer if ``limit`` seconds pass first)."""
    got: list[Delivery] = []

    async def read() -> None:
        async for delivery in link.messages():
            got.append(delivery)
            if len(got) >= count:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), limit)
    return got


async def closing(*links: BackplaneLink) -> None:
    for link in links:
        await link.aclose()


def _ends_within(seconds: float) -> Callable[[Awaitable[T]], Awaitable[T]]:
    async def bounded(awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, seconds)

    return bounded


# -- finding the backplane ---------------------------------------------------------------


def test_found_through_its_entry_point(url: str, backplane: Backplane) -> None:
    scheme = url.partition("://")[0].lower()
    assert scheme in backplane.schemes
    module = type(backplane).__module__
    providers = [
        ep for ep in entry_points(group="polysocket.backplanes") if ep.name == backplane.name
    ]
    assert providers, f"no polysocket.backplanes entry point named {backplane.name!r}"
    assert any(module == ep.module or module.startswith(ep.module + ".") for ep in providers), (
        f"{type(backplane).__qualname__} ({module}) is not from the entry point"
        f" {providers[0].value!r}"
    )
    assert backplane.is_available()


# -- publish and subscribe ---------------------------------------------------------------


def test_round_trip(url: str, backplane: Backplane) -> None:
    async def main() -> None:
        subscriber = await connect(backplane, url)
        publisher = await connect(backplane, url)
        try:
            room = channel("room")
            await subscriber.subscribe([room])
            # subscribe() returned: the broker has the subscription, no sleep needed.
            await publisher.publish(room, b"hello")
            assert await collect(subscriber, 1) == [(room, b"hello")]
        finally:
            await closing(subscriber, publisher)

    run(main())


def test_order_of_many_messages_to_two_subscribers(url: str, backplane: Backplane) -> None:
    async def main() -> None:
        first = await connect(backplane, url)
        second = await connect(backplane, url)
        publisher = await connect(backplane, url)
        try:
            room = channel("order")
            await first.subscribe([room])
            await second.subscribe([room])
            sent = payloads(ORDER_COUNT)
            readers = [
                asyncio.create_task(collect(link, ORDER_COUNT, limit=45))
                for link in (first, second)
            ]
            for data in sent:
                await publisher.publish(room, data)
            for reader in readers:
                got = await reader
                assert len(got) == len(sent), f"{len(got)} of {len(sent)} messages arrived"
                assert [c for c, _ in got] == [room] * len(sent)
                wrong = next((i for i, (_, d) in enumerate(got) if d != sent[i]), None)
                assert wrong is None, f"message {wrong} differs: {got[wrong][1]!r}"
        finally:
            await closing(first, second, publisher)

    run(main(), limit=90)


def test_order_across_channels(url: str, backplane: Backplane) -> None:
    """What one link publishes on several channels reaches a subscriber of all of them in
    publish order (the cluster orders a node's snapshot after its earlier events so)."""

    async def main() -> None:
        subscriber = await connect(backplane, url)
        publisher = await connect(backplane, url)
        try:
            rooms = [channel("a"), channel("b"), channel("c")]
            await subscriber.subscribe(rooms)
            sent = [(rooms[(i * 7 // 3) % 3], b"%d" % i) for i in range(3000)]
            reader = asyncio.create_task(collect(subscriber, len(sent)))
            for room, data in sent:
                await publisher.publish(room, data)
            got = await reader
            assert len(got) == len(sent), f"{len(got)} of {len(sent)} messages arrived"
            wrong = next((i for i, pair in enumerate(got) if pair != sent[i]), None)
            assert wrong is None, f"delivery {wrong} is {got[wrong]}, sent {sent[wrong]}"
        finally:
            await closing(subscriber, publisher)

    run(main())


#: Bigger than NATS's default max_payload (1 MiB); polysocket messages may be up to 16 MiB.
LARGE_MESSAGE = 3 * 1024 * 1024


def test_a_large_message_arrives_whole_and_in_order(url: str, backplane: Backplane) -> None:
    async def main() -> None:
        subscriber = await connect(backplane, url)
        publisher = await connect(backplane, url)
        try:
            room = channel("large")
            await subscriber.subscribe([room])
            large = secrets.token_bytes(LARGE_MESSAGE)
            sent = [b"before", large, b"after"]
            for data in sent:
                await publisher.publish(room, data)
            got = await collect(subscriber, len(sent))
            assert [len(d) for _, d in got] == [len(d) for d in sent]
            assert [d for _, d in got] == sent
        finally:
            await closing(subscriber, publisher)

    run(main())


def test_publish_many_keeps_the_order(url: str, backplane: Backplane) -> None:
    """``publish_many`` (batches, as the core hands them over) is in order within a batch,
    across batches and with ``publish`` between them, on several channels."""

    async def main() -> None:
        subscriber = await connect(backplane, url)
        publisher = await connect(backplane, url)
        try:
            rooms = [channel("x"), channel("y")]
            await subscriber.subscribe(rooms)
            sent = [(rooms[i % 3 % 2], data) for i, data in enumerate(payloads(1500))]
            reader = asyncio.create_task(collect(subscriber, len(sent)))
            for start in range(0, len(sent), 500):
                await publisher.publish_many(sent[start : start + 499])
                await publisher.publish(*sent[start + 499])
            got = await reader
            assert len(got) == len(sent), f"{len(got)} of {len(sent)} messages arrived"
            wrong = next((i for i, pair in enumerate(got) if pair != sent[i]), None)
            assert wrong is None, f"delivery {wrong} is {got[wrong]!r}, sent {sent[wrong]!r}"
        finally:
            await closing(subscriber, publisher)

    run(main())


def test_channel_names_are_literal(url: str, backplane: Backplane) -> None:
    """Any channel name works and means only itself: spaces, dots, the wildcards of NATS
    subjects and Redis patterns, percent signs, Unicode."""

    async def main() -> None:
        subscriber = await connect(backplane, url)
        publisher = await connect(backplane, url)
        try:
            base = channel()
            names = [
                f"{base}room 1",
                f"{base}a.b",
                f"{base}a.*",
                f"{base}a.>",
                f"{base}a?",
                f"{base}[ab]",
                f"{base}%2E",
                f"{base}.",
                f"{base}ünï/cödé",
            ]
            # Subscribed to the wildcard-looking names only: "a.b", "a?"... must not match.
            listened = [n for n in names if n[len(base) :] in {"a.*", "a.>", "[ab]", "%2E"}]
            await subscriber.subscribe(listened)
            for name in names:
                await publisher.publish(name, name.encode())
            got = await collect(subscriber, len(listened) + 1, limit=2.0)
            assert got == [(n, n.encode()) for n in names if n in listened]
        finally:
            await closing(subscriber, publisher)

    run(main())


def test_subscribing_twice_delivers_once(url: str, backplane: Backplane) -> None:
    async def main() -> None:
        subscriber = await connect(backplane, url)
        publisher = await connect(backplane, url)
        try:
            room = channel("twice")
            await subscriber.subscribe([room, room])
            await subscriber.subscribe([room])
            await publisher.publish(room, b"once")
            await publisher.publish(room, b"end")
            got = await collect(subscriber, 3, limit=1.0)
            assert got == [(room, b"once"), (room, b"end")]
        finally:
            await closing(subscriber, publisher)

    run(main())


# -- closing -----------------------------------------------------------------------------


def test_aclose_ends_messages_and_is_idempotent(url: str, backplane: Backplane) -> None:
    async def main() -> None:
        link = await connect(backplane, url)
        await link.subscribe([channel("closing")])
        reader = asyncio.create_task(collect(link, 1, limit=WAIT))
        await asyncio.sleep(0.05)
        await link.aclose()
        assert await _ends_within(5.0)(reader) == []  # returned, did not raise
        await link.aclose()
        await link.aclose()
        with pytest.raises(BackplaneError):
            await link.publish(channel("closed"), b"x")

    run(main())


def test_aclose_before_anything(url: str, backplane: Backplane) -> None:
    async def main() -> None:
        link = await connect(backplane, url)
        await link.aclose()
        await link.aclose()

    run(main())


# -- failures ----------------------------------------------------------------------------


def test_unreachable_broker_fails_within_the_timeout(request: pytest.FixtureRequest) -> None:
    needs_broker_command(request.config)
    port = free_port()
    dead = url_for(request.config, port)
    backplane = registry.backplane(dead)

    async def main() -> None:
        began = time.monotonic()
        with pytest.raises(BackplaneError) as raised:
            await backplane.connect(dead, timeout=2.0)
        took = time.monotonic() - began
        assert took < 2.0 + TIMEOUT_SLACK, f"connect gave up after {took:.1f} s, not 2 s"
        text = str(raised.value)
        assert str(port) in text, f"the error does not name the broker: {text}"
        _assert_no_password(text, dead)

    run(main())


def test_wrong_password_is_refused_without_showing_it(
    request: pytest.FixtureRequest, broker: Broker | None
) -> None:
    template = _template(request.config)
    found = _PASSWORD.search(template)
    if found is None:
        pytest.skip("the --polysocket-backplane URL has no password to get wrong")
    if broker is None:
        pytest.skip("needs a private broker (--polysocket-broker-command)")
    wrong_password = "wrong-" + secrets.token_hex(6)
    good = url_for(request.config, broker.port)
    bad = good.replace(f":{found[1]}@", f":{wrong_password}@", 1)
    backplane = registry.backplane(bad)

    async def main() -> None:
        with pytest.raises(BackplaneError) as raised:
            link = await backplane.connect(bad, timeout=CONNECT_TIMEOUT)
            # A broker that checks the password on the first command, not on connecting:
            try:
                await link.subscribe([channel("auth")])
                await link.publish(channel("auth"), b"x")
            finally:
                await link.aclose()
        _assert_no_password(str(raised.value), bad)
        assert str(broker.port) in str(raised.value), str(raised.value)

    run(main())


def test_broker_killed_ends_messages_and_publish(
    request: pytest.FixtureRequest, logs: Path
) -> None:
    command = needs_broker_command(request.config)
    with Broker(command, _template(request.config), logs) as private:
        url = private.url
        backplane = registry.backplane(url)

        async def main() -> None:
            subscriber = await connect(backplane, url)
            publisher = await connect(backplane, url)
            try:
                room = channel("doomed")
                await subscriber.subscribe([room])
                await publisher.publish(room, b"before")
                received: list[Delivery] = []

                async def read() -> None:
                    async for delivery in subscriber.messages():
                        received.append(delivery)

                reader = asyncio.create_task(read())
                await _until(lambda: bool(received))
                private.kill()
                killed = time.monotonic()
                with pytest.raises(BackplaneError) as raised:
                    await _ends_within(WAIT)(reader)
                noticed = time.monotonic() - killed
                assert received == [(room, b"before")]
                _assert_no_password(str(raised.value), url)
                # The publisher's link is dead too: publish raises once that is noticed.
                with pytest.raises(BackplaneError):
                    deadline = time.monotonic() + WAIT
                    while time.monotonic() < deadline:
                        await publisher.publish(room, b"after")
                        await asyncio.sleep(0.05)
                # A killed broker's sockets are closed by its kernel: noticed at once.
                assert noticed < 5.0, f"the loss was noticed after {noticed:.1f} s"
            finally:
                await closing(subscriber, publisher)

        run(main())


async def _until(condition: Callable[[], bool], limit: float = WAIT) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit} s")
        await asyncio.sleep(0.01)


def _assert_no_password(text: str, url: str) -> None:
    found = _PASSWORD.search(url)
    if found is not None:
        assert found[1] not in text, f"the password is in the error: {text}"
