"""The mutants' own machinery, without a network: registration, and the ServerApp proxy."""

from __future__ import annotations

import asyncio

import pytest
from polysocket.plugins import registry
from polysocket.transport import Accept, HttpRequest, HttpResponse, Message, Transport

from polysocket_mutants import AppProxy, Listening, MutantEngine, base_engine
from polysocket_mutants.__main__ import problems
from polysocket_mutants.mutants import (
    ENGINES,
    MUTANTS,
    CloseFrameAlways1000,
    Control,
    RemoteAddressIsServer,
    ServerSelectsNoSubprotocol,
    SubprotocolNone,
)

REQUEST = HttpRequest(
    method="GET",
    path="/websockets/v4/service/echo",
    query="",
    headers={"host": "127.0.0.1"},
    remote_address=("127.0.0.1", 50000),
    upgrade=True,
    subprotocols=("chat",),
)


class RouteApp:
    """A core that accepts every request with the subprotocol ``chat``."""

    def __init__(self) -> None:
        self.seen: list[HttpRequest] = []

    def route(self, request: HttpRequest) -> HttpResponse | Accept:
        self.seen.append(request)
        return Accept("chat")

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        self.seen.append(request)


def test_every_mutant_is_registered_through_its_entry_point() -> None:
    assert problems() == []
    for mutant in ENGINES:
        engine = registry.get(mutant.name)
        assert type(engine) is mutant
        assert engine.capabilities == base_engine().capabilities


def test_every_mutant_names_its_bug() -> None:
    names = [mutant.name for mutant in MUTANTS]
    assert len(set(names)) == len(names)
    for mutant in MUTANTS:
        assert mutant.name.startswith("mutant-")
        assert len(mutant.bug()) > 20, mutant


@pytest.mark.parametrize("mutant", [RemoteAddressIsServer, ServerSelectsNoSubprotocol])
def test_route_proxy_passes_the_request_and_decision_through_the_mutant(
    mutant: type[MutantEngine],
) -> None:
    app = RouteApp()
    proxy = AppProxy(app, mutant(base_engine()), Listening("127.0.0.1", 8080))
    decision = proxy.route(REQUEST)
    if mutant is RemoteAddressIsServer:
        assert decision == Accept("chat")
        assert app.seen[0].remote_address == ("127.0.0.1", 8080)
    else:
        assert decision == Accept(None)
        assert app.seen[0] == REQUEST


class FakeTransport:
    """An engine's transport that records the close frame it was asked to send."""

    def __init__(self) -> None:
        self.subprotocol: str | None = "chat"
        self.closed: tuple[int, str] | None = None

    async def send(self, message: Message) -> None:
        pass

    async def receive(self) -> Message:
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        pass


@pytest.mark.parametrize(
    ("mutant", "subprotocol", "closed"),
    [
        (Control, "chat", (4000, "bye")),
        (SubprotocolNone, None, (4000, "bye")),
        (CloseFrameAlways1000, "chat", (1000, "")),
    ],
)
def test_transport_proxy_subprotocol_and_close(
    mutant: type[MutantEngine], subprotocol: str | None, closed: tuple[int, str]
) -> None:
    inner = FakeTransport()
    transport = mutant(base_engine()).transport(inner, "client")
    assert isinstance(transport, Transport)
    assert transport.subprotocol == subprotocol
    asyncio.run(transport.close(4000, "bye"))
    assert inner.closed == closed
