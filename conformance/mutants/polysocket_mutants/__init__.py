"""Mutant engines: polysocket's aiohttp engine with exactly one planted bug each.

A check of the conformance suite itself: run against a mutant, the suite must fail. Each
mutant (see :mod:`polysocket_mutants.mutants`) is the real aiohttp engine, found through its
``polysocket.engines`` entry point like any plugin, wrapped so that one thing goes wrong.
The bug is planted through the engine contract only (:mod:`polysocket.transport`): the
options handed to ``Engine.connect``/``serve``, the ``Transport`` they return, the
``ServerApp`` the engine is handed and the ``HttpRequest`` values it passes to it. Nothing
here knows how the aiohttp engine works inside.

``python -m polysocket_mutants`` lists the installed mutants as JSON (``nox -s mutants``
runs the suite against each).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import weakref
from collections import deque
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, TypeVar

import pluggy
from polysocket import hookimpl, hookspecs
from polysocket.transport import (
    Accept,
    ClientOptions,
    Engine,
    HttpRequest,
    HttpResponse,
    Message,
    Server,
    ServerApp,
    ServerOptions,
    Transport,
)

__all__ = [
    "BASE_ENGINE",
    "PREFIX",
    "AppProxy",
    "Decision",
    "Listening",
    "LookaheadTransport",
    "MutantEngine",
    "MutantPlugin",
    "Options",
    "Side",
    "TransportProxy",
    "base_engine",
]

#: The engine every mutant wraps.
BASE_ENGINE = "aiohttp"
#: Every mutant's engine name starts with it.
PREFIX = "mutant-"

Side = Literal["client", "server"]
Decision = HttpResponse | Accept
Options = TypeVar("Options", ClientOptions, ServerOptions)


@functools.cache
def base_engine(name: str = BASE_ENGINE) -> Engine:
    """The engine ``name`` as its own entry point registers it (a fresh instance).

    Not through ``polysocket.plugins.registry``: mutants are registered while the registry
    loads its entry points, and asking it for an engine then would wait for itself.
    """
    found = entry_points(group=hookspecs.ENTRY_POINT_GROUP, name=name)
    if not found:
        raise LookupError(f"no {hookspecs.ENTRY_POINT_GROUP!r} entry point named {name!r}")
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(next(iter(found)).load(), name=name)
    engines: list[Engine] = []
    manager.hook.polysocket_register_engines(register=engines.append)
    for engine in engines:
        if engine.name == name:
            return engine
    raise LookupError(f"the {name!r} entry point registers no engine named {name!r}")


class TransportProxy:
    """A transport that passes everything on to the engine's own (``inner``).

    ``subprotocol`` is the inner transport's, copied when the proxy is made: an engine
    hands over a transport with the handshake complete, its subprotocol settled.
    """

    subprotocol: str | None

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.subprotocol = inner.subprotocol

    async def send(self, message: Message) -> None:
        await self.inner.send(message)

    async def receive(self) -> Message:
        return await self.inner.receive()

    async def close(self, code: int, reason: str) -> None:
        await self.inner.close(code, reason)

    def abort(self) -> None:
        self.inner.abort()

    def __getattr__(self, name: str) -> Any:
        # whatever the contract grows meanwhile goes to the real transport untouched
        return getattr(self.inner, name)


class LookaheadTransport(TransportProxy):
    """A proxy that can look at what comes after a message before returning it.

    One task (:meth:`_read_ahead`) is the only caller of the engine's ``receive()``: it
    stays at most one event ahead of the reader, so a mutant can wait a moment
    (:attr:`WINDOW`) for the event after a message. From ``close()`` on it reads back to
    back until the end, so the engine always sees a pending ``receive()`` during the
    closing handshake; what arrives then goes to the reader, or is dropped when there is
    none (what the contract asks of the engine itself).
    """

    #: How long to wait for the event after a message: "it came in the same read".
    WINDOW = 0.02

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        #: Messages read ahead, then the exception that ended the connection (it stays).
        self._landed: deque[Message | Exception] = deque()
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self._pump: asyncio.Future[None] | None = None
        self._reading = False
        self._closing = False

    def _start(self) -> None:
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._read_ahead())

    async def _read_ahead(self) -> None:
        while True:
            while self._landed and not self._closing:
                self._taken.clear()
                await self._taken.wait()
            try:
                message = await self.inner.receive()
            except Exception as end:  # TransportClosed (or an engine bug): the end either way
                self._land(end)
                return
            if not self._closing or self._reading:
                self._land(message)

    def _land(self, event: Message | Exception) -> None:
        self._landed.append(event)
        self._arrived.set()

    async def _wait(self, timeout: float | None) -> bool:
        self._start()
        while not self._landed:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                return False
        return True

    async def take(self) -> Message:
        """The next message; raises the exception that ended the connection."""
        await self._wait(None)
        event = self._landed[0]
        if isinstance(event, Exception):
            raise event  # and again at every call, like the engine
        self.consume()
        return event

    async def peek(self) -> Message | Exception | None:
        """What comes after the last message taken (a message, or the exception that ends
        the connection), if it arrives within :attr:`WINDOW`."""
        return self._landed[0] if await self._wait(self.WINDOW) else None

    def consume(self) -> None:
        """Drop the next message (taken, or used by a mutant after :meth:`peek`)."""
        self._landed.popleft()
        self._taken.set()

    async def receive(self) -> Message:
        self._reading = True
        try:
            return await self.lookahead()
        finally:
            self._reading = False

    async def lookahead(self) -> Message:
        """The mutant's ``receive()``, with :meth:`take`, :meth:`peek` and :meth:`consume`."""
        return await self.take()

    async def close(self, code: int, reason: str) -> None:
        self._closing = True
        self._taken.set()
        self._start()
        await asyncio.sleep(0)  # the read-ahead enters receive(): the engine sees a reader
        await self.inner.close(code, reason)

    def abort(self) -> None:
        self._closing = True
        self._taken.set()  # a read-ahead waiting for the reader goes on to the end
        self.inner.abort()


@dataclasses.dataclass
class Listening:
    """The address a server listens on: ``host`` as given to ``serve``, the bound port."""

    host: str
    port: int


class AppProxy:
    """The ``ServerApp`` handed to the real engine: the mutant sees every request, every
    decision and every server-side transport on its way to the core."""

    def __init__(self, app: ServerApp, mutant: MutantEngine, listening: Listening) -> None:
        self._app = app
        self._mutant = mutant
        self._listening = listening
        #: The request route() got, by the engine's: session() must get that very object.
        self._given: dict[int, HttpRequest] = {}

    def _request(self, request: HttpRequest) -> HttpRequest:
        given = self._given.get(id(request))
        if given is None:
            given = self._given[id(request)] = self._mutant.request(request, self._listening)
            weakref.finalize(request, self._given.pop, id(request), None)
        return given

    def route(self, request: HttpRequest) -> Decision:
        return self._mutant.decision(self._app.route(self._request(request)))

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        await self._app.session(self._request(request), self._mutant.transport(transport, "server"))


class MutantEngine(Engine):
    """The base engine, passed through; a mutant overrides one of the hooks below.

    The class docstring of a mutant says its bug (its first paragraph is the summary).
    """

    name: ClassVar[str]
    #: Conformance test modules (``test_server``...) most likely to kill the mutant: run first.
    first: ClassVar[tuple[str, ...]] = ()
    #: The entry-point object of this mutant (set for every subclass).
    plugin: ClassVar[MutantPlugin]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.plugin = MutantPlugin(cls)

    def __init__(self, base: Engine) -> None:
        self.base = base
        self.library = base.library  # type: ignore[misc]
        self.install_hint = base.install_hint  # type: ignore[misc]
        self.capabilities = base.capabilities  # type: ignore[misc]

    @classmethod
    def bug(cls) -> str:
        """The first paragraph of the docstring, on one line."""
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n")[0].split())

    def is_available(self) -> bool:
        return self.base.is_available()

    def library_version(self) -> str | None:
        return self.base.library_version()

    # -- the hooks: identity here --------------------------------------------------------

    def options(self, options: Options) -> Options:
        """The options the base engine gets (client and server)."""
        return options

    def transport(self, transport: Transport, side: Side) -> Transport:
        """The transport the core gets (client: from ``connect``; server: in ``session``)."""
        return transport

    def request(self, request: HttpRequest, listening: Listening) -> HttpRequest:
        """The request the core gets, in ``route`` and in ``session``."""
        return request

    def decision(self, decision: Decision) -> Decision:
        """The core's answer to a request, as the base engine gets it."""
        return decision

    # -- the contract ----------------------------------------------------------------------

    async def connect(self, uri: str, options: ClientOptions) -> Transport:
        transport = await self.base.connect(uri, self.options(options))
        return self.transport(transport, "client")

    async def serve(self, host: str, port: int, app: ServerApp, options: ServerOptions) -> Server:
        listening = Listening(host, port)
        server = await self.base.serve(
            host, port, AppProxy(app, self, listening), self.options(options)
        )
        listening.port = server.port
        return server


class MutantPlugin:
    """The pluggy plugin behind one mutant's entry point: registers that mutant."""

    def __init__(self, mutant: type[MutantEngine]) -> None:
        self.mutant = mutant

    @hookimpl
    def polysocket_register_engines(self, register: Callable[[Engine], None]) -> None:
        register(self.mutant(base_engine()))
