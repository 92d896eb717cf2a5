"""What is particular to the NATS backplane: its URLs, its subjects, its bounded inbox, its
server list and TLS. The contract itself is tested by the shared link suite
(``pytest --pyargs polysocket_conformance.backplane_link_suite``, see noxfile.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from polysocket.errors import BackplaneError
from polysocket.plugins import registry
from polysocket_conformance.backplane_link_suite import collect, run
from polysocket_conformance.cluster_suite.support import Broker, free_port

from polysocket_nats import NatsBackplane, NatsLink, channel_of, parse_url, subject_of
from polysocket_nats._parts import HEADER_ROOM, Reassembly, split

#: Debian's nats-server package puts it in /usr/sbin, not on a non-root user's PATH.
NATS_SERVER_PROGRAM = shutil.which("nats-server", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
#: A private nats-server per module, on a free port.
NATS_SERVER = f"{NATS_SERVER_PROGRAM or 'nats-server'} -a 127.0.0.1 -p {{port}}"


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    logs = tmp_path_factory.mktemp("nats")
    with Broker(NATS_SERVER, "nats://127.0.0.1:{port}", logs) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: Broker) -> str:
    return f"nats://127.0.0.1:{nats_server.port}"


# -- URLs ----------------------------------------------------------------------------------


def test_url_with_several_servers_and_credentials() -> None:
    parsed = parse_url("nats://alice:p%40ss@h1:4223, h2 ,[::1]:5000")
    assert parsed.servers == ("nats://h1:4223", "nats://h2:4222", "nats://[::1]:5000")
    assert (parsed.user, parsed.password, parsed.token) == ("alice", "p@ss", None)
    assert parsed.shown == "nats://alice@h1:4223,h2:4222,[::1]:5000"
    assert "p@ss" not in repr(parsed)


def test_url_with_a_token_and_tls() -> None:
    parsed = parse_url("TLS://s3cr3t-token@nats.example:4443/")
    assert parsed.scheme == "tls"
    assert parsed.servers == ("tls://nats.example:4443",)
    assert (parsed.user, parsed.password, parsed.token) == (None, None, "s3cr3t-token")
    assert "s3cr3t-token" not in parsed.shown
    assert "s3cr3t-token" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://u:hunter22@h:6379", "is not a NATS URL"),
        ("nats://u:hunter22@h:4222/chat", "no path, query or fragment"),
        ("nats://u:hunter22@h:4222?x=1", "no path, query or fragment"),
        ("nats://u:hunter22@h:http", "not a number from 1 to 65535"),
        ("nats://u:hunter22@h:70000", "not a number from 1 to 65535"),
        ("nats://u:hunter22@h1,,h2", "an empty host"),
        ("nats://u:hunter22@[::1", "is not [ipv6]:port"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(BackplaneError, match=complaint.replace("[", r"\[")) as raised:
        parse_url(url)
    assert "hunter22" not in str(raised.value)


def test_the_registry_picks_it_for_both_schemes() -> None:
    for url in ("nats://127.0.0.1:4222", "tls://127.0.0.1:4222"):
        assert isinstance(registry.backplane(url), NatsBackplane)
    status = {row.name: row for row in registry.backplane_statuses()}["nats"]
    assert status.status == "available"
    assert status.version and status.version[0].isdigit()


# -- subjects ------------------------------------------------------------------------------


@given(st.text(min_size=1))
def test_subjects_are_one_literal_token_and_map_back(name: str) -> None:
    subject = subject_of(name)
    assert channel_of(subject) == name
    assert subject.isascii() and subject.isprintable()
    assert not set(subject) & set(" \t\r\n.*>")


def test_readable_channel_names_stay_readable() -> None:
    assert subject_of("chat:node:host/123/ab12") == "chat:node:host/123/ab12"
    assert subject_of("a.b c*>%") == "a%2Eb%20c%2A%3E%25"


def test_an_empty_channel_is_refused() -> None:
    with pytest.raises(BackplaneError, match="cannot be empty"):
        subject_of("")


# -- the inbox bound -----------------------------------------------------------------------


def test_a_reader_that_falls_behind_loses_the_excess_and_is_told_once(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    backplane = NatsBackplane(inbox_messages=100)

    async def main() -> None:
        slow = await backplane.connect(nats_url, timeout=3)
        publisher = await backplane.connect(nats_url, timeout=3)
        assert isinstance(slow, NatsLink)
        try:
            await slow.subscribe(["flood"])
            for i in range(1000):
                await publisher.publish("flood", b"%d" % i)
            await publisher.publish("flood", b"marker")
            await _until(
                lambda: slow.dropped >= 901,
                state=lambda: (slow.dropped, len(slow._inbox), slow._lost),
            )
            got = await collect(slow, 100)
            # The first 100 were kept, in order; the rest (and the marker) were dropped.
            assert [data for _, data in got] == [b"%d" % i for i in range(100)]
            assert slow.dropped == 901
            # Caught up: the link delivers again.
            await publisher.publish("flood", b"again")
            assert await collect(slow, 1) == [("flood", b"again")]
        finally:
            await slow.aclose()
            await publisher.aclose()

    with caplog.at_level(logging.WARNING, logger="polysocket.backplanes.nats"):
        run(main())
    warnings = [r for r in caplog.records if "messages are dropped" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_the_inbox_is_bounded_in_bytes_too(nats_url: str) -> None:
    backplane = NatsBackplane(inbox_bytes=10_000)

    async def main() -> None:
        slow = await backplane.connect(nats_url, timeout=3)
        publisher = await backplane.connect(nats_url, timeout=3)
        assert isinstance(slow, NatsLink)
        try:
            await slow.subscribe(["big"])
            for _ in range(30):
                await publisher.publish("big", b"x" * 1000)
            await _until(
                lambda: slow.dropped >= 20,
                state=lambda: (slow.dropped, len(slow._inbox), slow._inbox_bytes, slow._lost),
            )
            assert len(await collect(slow, 30, limit=0.5)) == 10  # 10 * 1000 <= 10_000
            assert slow.dropped == 20
        finally:
            await slow.aclose()
            await publisher.aclose()

    run(main())


# -- servers -------------------------------------------------------------------------------


def test_the_next_server_is_tried_when_one_is_down(nats_server: Broker) -> None:
    dead = free_port()
    url = f"nats://127.0.0.1:{dead},127.0.0.1:{nats_server.port}"

    async def main() -> None:
        link = await NatsBackplane().connect(url, timeout=3)
        assert isinstance(link, NatsLink)
        assert link.server == f"127.0.0.1:{nats_server.port}"
        await link.aclose()

    run(main())


def test_every_server_down_names_each(nats_server: Broker) -> None:
    first, second = free_port(), free_port()
    url = f"nats://u:hunter22@127.0.0.1:{first},127.0.0.1:{second}"

    async def main() -> None:
        with pytest.raises(BackplaneError) as raised:
            await NatsBackplane().connect(url, timeout=3)
        text = str(raised.value)
        assert f"127.0.0.1:{first}: " in text and f"127.0.0.1:{second}: " in text, text
        assert "hunter22" not in text
        assert "nats-server" in text  # what to check

    run(main())


def test_nats_reconnection_is_off(nats_url: str) -> None:
    """The core reconnects: nats-py must not do it behind its back (the link would stay
    "up" while messages are lost)."""

    async def main() -> None:
        link = await NatsBackplane().connect(nats_url, timeout=3)
        assert isinstance(link, NatsLink)
        client = link._client
        assert client is not None
        assert client.options["allow_reconnect"] is False
        await link.aclose()
        assert client.is_closed

    run(main())


# -- TLS -----------------------------------------------------------------------------------


def test_tls_url_refuses_a_plaintext_server(nats_server: Broker) -> None:
    async def main() -> None:
        with pytest.raises(BackplaneError, match="does not offer TLS"):
            await NatsBackplane().connect(f"tls://127.0.0.1:{nats_server.port}", timeout=3)

    run(main())


def test_tls_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test CA")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    # The link trusts the system's store, which OpenSSL lets SSL_CERT_FILE replace.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    command = f"{NATS_SERVER} --tls --tlscert {cert} --tlskey {key}"
    with Broker(command, "tls://127.0.0.1:{port}", tmp_path) as server:
        url = f"tls://127.0.0.1:{server.port}"

        async def main() -> None:
            subscriber = await NatsBackplane().connect(url, timeout=3)
            publisher = await NatsBackplane().connect(url, timeout=3)
            try:
                await subscriber.subscribe(["secret"])
                await publisher.publish("secret", b"over TLS")
                assert await collect(subscriber, 1) == [("secret", b"over TLS")]
            finally:
                await subscriber.aclose()
                await publisher.aclose()

        run(main())

    monkeypatch.delenv("SSL_CERT_FILE")


async def _until(condition: object, limit: float = 10.0, state: object = None) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            shown = state() if callable(state) else ""
            raise AssertionError(f"not within {limit} s {shown}")
        await asyncio.sleep(0.01)


# -- subscribe ------------------------------------------------------------------------------


def test_subscribe_returns_after_the_server_answered_a_ping_sent_after_the_sub(
    nats_server: Broker,
) -> None:
    """subscribe() returns once the server has the subscription: the PING whose PONG it
    waits for must follow the SUB on the wire. nats-py's flush() writes its PING ahead of
    commands still in its buffer; a relay between link and server records what the link
    sent."""

    async def main() -> None:
        sent = bytearray()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", nats_server.port
            )

            async def pump(
                source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bool
            ) -> None:
                while data := await source.read(65536):
                    if record:
                        sent.extend(data)
                    sink.write(data)
                    await sink.drain()
                sink.close()

            await asyncio.gather(
                pump(reader, upstream_writer, True),
                pump(upstream_reader, writer, False),
                return_exceptions=True,
            )

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        link = await NatsBackplane().connect(f"nats://127.0.0.1:{port}", timeout=3)
        try:
            before = len(sent)
            await link.subscribe(["ordered"])
            after = bytes(sent[before:])
            assert b"SUB ordered " in after, after
            assert after.index(b"SUB ordered ") < after.rindex(b"PING\r\n"), after
        finally:
            await link.aclose()
            proxy.close()

    run(main())


def test_a_server_that_stops_answering_ends_the_link(tmp_path: Path) -> None:
    """A server that is there but silent (SIGSTOP here; a host switched off, a cut cable)
    closes no socket: the link's PINGs go unanswered and it ends within
    ping_interval * (max_outstanding_pings + 1) seconds, raising BackplaneError."""
    with Broker(NATS_SERVER, "nats://127.0.0.1:{port}", tmp_path) as server:
        backplane = NatsBackplane(ping_interval=1, max_outstanding_pings=1)

        async def main() -> None:
            link = await backplane.connect(server.url, timeout=3)
            try:
                await link.subscribe(["silence"])
                assert server.process is not None
                os.kill(server.process.pid, signal.SIGSTOP)
                began = loop_time()
                try:
                    with pytest.raises(BackplaneError, match="lost the connection") as raised:
                        await asyncio.wait_for(collect_until_end(link), 10)
                    assert loop_time() - began < 4.0, "the silence went unnoticed too long"
                    assert str(server.port) in str(raised.value)
                finally:
                    os.kill(server.process.pid, signal.SIGCONT)
            finally:
                await link.aclose()

        run(main())


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def collect_until_end(link: object) -> None:
    assert isinstance(link, NatsLink)
    async for _ in link.messages():
        pass


# -- messages over max_payload -------------------------------------------------------------


def test_messages_over_max_payload_go_in_parts(tmp_path: Path) -> None:
    """A server with max_payload 4096: two links each publish messages of 100,000 bytes
    between small ones on one channel; the subscriber gets every message whole, each link's
    in its order, and the small ones as they were (no header)."""
    config = tmp_path / "nats.conf"
    config.write_text("max_payload: 4096\n")
    command = f"{NATS_SERVER} -c {config}"
    with Broker(command, "nats://127.0.0.1:{port}", tmp_path) as server:

        async def main() -> None:
            subscriber = await NatsBackplane().connect(server.url, timeout=3)
            first = await NatsBackplane().connect(server.url, timeout=3)
            second = await NatsBackplane().connect(server.url, timeout=3)
            assert isinstance(subscriber, NatsLink)
            try:
                await subscriber.subscribe(["big"])
                sent: dict[bytes, list[bytes]] = {b"1": [], b"2": []}

                async def publish(link: object, mark: bytes) -> None:
                    assert isinstance(link, NatsLink)
                    for i in range(20):
                        size = 100_000 if i % 3 == 0 else 10
                        data = mark + os.urandom(size)
                        sent[mark].append(data)
                        await link.publish("big", data)
                        await asyncio.sleep(0)  # let the other link's parts come between

                reader = asyncio.create_task(collect(subscriber, 40))
                await asyncio.gather(publish(first, b"1"), publish(second, b"2"))
                got = await reader
                assert len(got) == 40, f"{len(got)} of 40 messages"
                for mark, messages in sent.items():
                    assert [d for _, d in got if d[:1] == mark] == messages
                assert subscriber.lost_parts == 0
            finally:
                for link in (subscriber, first, second):
                    await link.aclose()

        run(main())


def test_a_message_missing_a_part_is_given_up_and_the_next_one_arrives() -> None:
    parts = split(b"abcdefghij" * 100, HEADER_ROOM + 100, "tok", 1)
    assert len(parts) == 10
    whole = Reassembly(max_bytes=10_000)
    for data, header in parts[:4] + parts[5:]:  # the publisher lost part 4
        assert whole.add("c", header, data) is None
    assert whole.lost == 1
    again = split(b"0123456789" * 30, HEADER_ROOM + 100, "tok", 2)
    results = [whole.add("c", header, data) for data, header in again]
    assert results[-1] == b"0123456789" * 30 and results[:-1] == [None] * (len(again) - 1)
    assert whole.lost == 1


def test_parts_held_are_bounded_in_bytes() -> None:
    whole = Reassembly(max_bytes=1000)
    for token in ("a", "b", "c"):  # three publishers, each stopped after 2 of 10 parts
        for data, header in split(b"x" * 4000, HEADER_ROOM + 400, token, 1)[:2]:
            whole.add("c", header, data)
    assert whole.lost == 2  # the two oldest were given up to stay within 1000 bytes
    assert whole.add("c", "not a part header", b"") is None
    assert whole.lost == 3
