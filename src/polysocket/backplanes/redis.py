"""The ``redis`` backplane: Redis pub/sub through ``redis.asyncio`` (``redis://``, ``rediss://``).

A link holds two connections to the broker: one that publishes (the core publishes from one
task and awaits each reply, a batch as one pipeline, so what a node publishes reaches Redis in
order) and one subscribed to the node's channels. Redis pub/sub
delivers at most once: a node that is away misses what was published meanwhile, which is what
the contract expects (:mod:`polysocket.backplane`). Pub/sub channels are global to a Redis
server, whatever the database number in the URL: clusters sharing a broker are kept apart by
their channel prefix (the cluster name), not by the database.

Bounds: a subscriber that reads too slowly is the broker's to cut off (Redis's
``client-output-buffer-limit pubsub``, 32 MiB by default): the link then ends with
:class:`~polysocket.errors.BackplaneError` like any lost connection, and the node reconnects.

The client library retries nothing here (``Retry(NoBackoff(), 0)``): a lost connection ends
the link with :class:`~polysocket.errors.BackplaneError`, and the core reconnects with its own
backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..backplane import Backplane, BackplaneLink, Delivery
from ..errors import BackplaneError
from ..hookspecs import hookimpl

#: Seconds after which the subscriber connection PINGs the broker before its next read. The
#: read itself blocks with no timeout (a timeout per read halves the messages a node takes per
#: second): a broker gone silent is noticed by the publishing connection, which the core uses
#: at least every heartbeat and which fails after ``timeout`` without an answer.
HEALTH_CHECK_INTERVAL = 5


def broker_name(url: str) -> str:
    """``host:port`` of a Redis URL, for messages (never the user or password)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname or 'localhost'}:{port or 6379}"


class RedisBackplane(Backplane):
    """``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS): a Redis
    server's pub/sub. Needs the ``redis`` library (``pip install polysocket[redis]``)."""

    name = "redis"
    schemes = frozenset({"redis", "rediss"})
    library = "redis"
    install_hint = "polysocket[redis]"

    async def connect(self, url: str, *, timeout: float) -> BackplaneLink:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        where = broker_name(url)

        def client(**extra: Any) -> Any:
            return aioredis.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),
                **extra,
            )

        try:
            publisher = client()  # used by one task at a time: the pool keeps one connection
            subscriber = client(health_check_interval=HEALTH_CHECK_INTERVAL)
        except ValueError as exc:  # a malformed URL: say so without repeating it
            raise BackplaneError(f"redis backplane: bad URL for {where}: {exc}") from None
        link = _RedisLink(url, where, publisher, subscriber, timeout)
        try:
            async with asyncio.timeout(timeout):
                await publisher.ping()
        except Exception as exc:
            await link.aclose()
            raise link.error("cannot connect", exc) from None
        return link


class _RedisLink(BackplaneLink):
    def __init__(
        self, url: str, where: str, publisher: Any, subscriber: Any, timeout: float
    ) -> None:
        self._where = where
        self._publisher = publisher
        self._subscriber = subscriber
        self._pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
        self._timeout = timeout
        self._password: str | None = urlsplit(url).password
        self._closed = False

    def error(self, what: str, exc: BaseException) -> BackplaneError:
        """The broker failure ``exc`` as a BackplaneError that names the broker, with the
        library's reason (the password taken out should the library ever quote it)."""
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self._timeout:g} s"
        else:
            reason = f"{type(exc).__name__}: {exc}"
            if self._password:
                reason = reason.replace(self._password, "***")
        return BackplaneError(f"redis backplane at {self._where}: {what} ({reason})")

    async def subscribe(self, channels: Sequence[str]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._pubsub.subscribe(*channels)
                # registered once the broker confirmed each channel (redis-py sends each
                # name once, however often it is given)
                confirmed = 0
                while confirmed < len(set(channels)):
                    reply = await self._pubsub.parse_response(block=False, timeout=self._timeout)
                    if reply is not None and bytes(reply[0]) == b"subscribe":
                        confirmed += 1
        except Exception as exc:
            raise self.error("cannot subscribe", exc) from None

    async def publish(self, channel: str, data: bytes) -> None:
        if self._closed:
            raise BackplaneError(f"redis backplane at {self._where}: the link is closed")
        try:
            async with asyncio.timeout(self._timeout):
                await self._publisher.publish(channel, data)
        except Exception as exc:
            raise self.error("publish failed, the broker is unreachable", exc) from None

    async def publish_many(self, messages: Sequence[Delivery]) -> None:
        """One round trip for the batch: a pipeline (no transaction) of PUBLISH commands,
        in order."""
        if self._closed:
            raise BackplaneError(f"redis backplane at {self._where}: the link is closed")
        pipeline = self._publisher.pipeline(transaction=False)
        for channel, data in messages:
            pipeline.publish(channel, data)
        try:
            async with asyncio.timeout(self._timeout):
                await pipeline.execute()
        except Exception as exc:
            raise self.error("publish failed, the broker is unreachable", exc) from None
        finally:
            with contextlib.suppress(Exception):
                await pipeline.reset()

    async def messages(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=None
                )
            except Exception as exc:
                if self._closed:
                    return
                raise self.error("lost the connection to the broker", exc) from None
            if message is not None and message.get("type") == "message":
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                yield channel, bytes(message["data"])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for close in (self._pubsub.aclose, self._publisher.aclose, self._subscriber.aclose):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await close()


@hookimpl
def polysocket_register_backplanes(register: Callable[[Backplane], None]) -> None:
    register(RedisBackplane())
