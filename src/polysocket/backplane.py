"""The backplane contract: what a broker plugin implements, and nothing more.

A cluster is several polysocket servers (worker processes, hosts) serving the same registry.
``broadcast``, ``sendTo`` and ``getSessions`` reach every node of it through a backplane: a
real broker (Redis, NATS...) that moves bytes between nodes on named channels. Like an
engine, a backplane moves bytes and owns no behaviour: what a message means, who delivers it
to which session, presence and its expiry, what happens while the broker is down and how
often to try again, are the core's (:mod:`polysocket.cluster`), once for every broker.

A backplane plugin module is found through the ``polysocket.backplanes`` entry-point group and
implements :func:`~polysocket.hookspecs.polysocket_register_backplanes`::

    from polysocket import hookimpl

    @hookimpl
    def polysocket_register_backplanes(register):
        register(MyBackplane())

The backplane serving a URL is the one whose :attr:`Backplane.schemes` has the URL's scheme
(``redis://127.0.0.1:6379/0`` -> ``redis``). Rules every :class:`BackplaneLink` follows:

- ``publish(channel, data)`` hands ``data`` to the broker for every subscriber of
  ``channel`` in the cluster. The core calls it from one task at a time; what one link
  publishes reaches each subscriber in publish order (both brokers here keep the order of
  one connection). A subscriber may get the node's own messages back: the core skips them.
  ``publish_many(messages)`` publishes several in order; the default calls ``publish`` for
  each, and a link may override it to send them in one round trip (Redis: a pipeline).
- ``messages()`` yields ``(channel, data)`` for the subscribed channels, in the broker's
  order, from the moment ``subscribe()`` returned. Delivery is at most once: a broker that
  drops messages while a node is away (Redis pub/sub, NATS core) is what the contract expects.
- When the broker cannot be reached or the link is lost, ``connect``, ``subscribe`` and
  ``publish`` raise :class:`~polysocket.errors.BackplaneError` (within ``timeout`` for
  ``connect``) and ``messages()`` ends by raising it. The link is dead then: the core closes
  it, opens another one with backoff and subscribes again. A link never retries on its own,
  so that there is one reconnection policy, the core's.
- ``aclose()`` releases everything the link holds; it may be called at any time, more than
  once, and never raises.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from .errors import BackplaneError

__all__ = [
    "BACKPLANE_VARIABLE",
    "DEFAULT_BACKPLANE",
    "Backplane",
    "BackplaneError",
    "BackplaneLink",
    "Delivery",
    "backplane_url",
    "is_single_process",
]

#: One received message: ``(channel, data)``.
Delivery = tuple[str, bytes]
#: The variable naming the backplane when ``backplane=`` (``--backplane``) is not given.
BACKPLANE_VARIABLE = "POLYSOCKET_BACKPLANE"
#: One process, no broker: what a server shares without a backplane.
DEFAULT_BACKPLANE = "memory://"


def backplane_url(given: str | None = None) -> str:
    """The backplane URL a server uses: ``given`` (``backplane=``, ``--backplane``), else
    ``$POLYSOCKET_BACKPLANE``, else :data:`DEFAULT_BACKPLANE`."""
    return given or os.environ.get(BACKPLANE_VARIABLE) or DEFAULT_BACKPLANE


def is_single_process(url: str) -> bool:
    """Whether the backplane at ``url`` links nothing beyond one process (``memory://``)."""
    return url.partition("://")[0].lower() == "memory"


class BackplaneLink:
    """One connection to a broker, for one node. Subclass it and implement every method."""

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Receive the messages published to ``channels`` from now on, through
        :meth:`messages`; return once the broker has registered the subscription."""
        raise NotImplementedError

    async def publish(self, channel: str, data: bytes) -> None:
        """Hand ``data`` to the broker for ``channel``; return once it is on its way, in
        order after everything published through this link before."""
        raise NotImplementedError

    async def publish_many(self, messages: Sequence[Delivery]) -> None:
        """Publish ``(channel, data)`` pairs in order, as :meth:`publish` one after the
        other (this default). Override it where the broker takes a batch in one round trip;
        the core calls it with what waited in its queue."""
        for channel, data in messages:
            await self.publish(channel, data)

    def messages(self) -> AsyncIterator[Delivery]:
        """The messages of the subscribed channels, in the broker's order; called once.
        Ends by raising :class:`BackplaneError` when the link is lost, or returns after
        :meth:`aclose`."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the link; idempotent, never raises."""
        raise NotImplementedError


class Backplane:
    """A broker plugin. Subclass it, fill in the class attributes, implement :meth:`connect`.
    Import the client library inside it, so that a backplane whose library is missing still
    loads and can say so."""

    #: The name ``polysocket backplanes`` shows.
    name: ClassVar[str]
    #: The URL schemes it serves (``{"redis", "rediss"}``).
    schemes: ClassVar[frozenset[str]]
    #: Import name of the client library (checked by :meth:`is_available`); ``None``: none.
    library: ClassVar[str | None] = None
    #: What to ``pip install`` when the library is missing.
    install_hint: ClassVar[str] = ""

    def is_available(self) -> bool:
        if self.library is None or sys.modules.get(self.library) is not None:
            return True
        return importlib.util.find_spec(self.library) is not None

    def library_version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        if self.library is None:
            return None
        try:
            return version(self.library)
        except PackageNotFoundError:
            return None

    async def connect(self, url: str, *, timeout: float) -> BackplaneLink:
        """Open a link to the broker at ``url``; raise :class:`BackplaneError` (saying
        which broker, never its password) when it cannot be reached within ``timeout``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<backplane {self.name!r}>"
