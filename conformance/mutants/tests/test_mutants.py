"""The mutants' own machinery, without a network: registration, and the ServerApp proxy
for a core whose ``route`` is async (today) or a plain method (soon)."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from polysocket.plugins import registry
from polysocket.transport import Accept, HttpRequest, HttpResponse, Transport

from polysocket_mutants import Listening, MutantEngine, _proxy_app, base_engine
from polysocket_mutants.__main__ import problems
from polysocket_mutants.mutants import (
    MUTANTS,
    Control,
    RemoteAddressIsServer,
    ServerSelectsNoSubprotocol,
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


class AsyncRouteApp:
    def __init__(self) -> None:
        self.seen: list[HttpRequest] = []

    async def route(self, request: HttpRequest) -> HttpResponse | Accept:
        self.seen.append(request)
        return Accept("chat")

    async def session(self, request: HttpRequest, transport: Transport) -> None:
        self.seen.append(request)


class SyncRouteApp(AsyncRouteApp):
    def route(self, request: HttpRequest) -> HttpResponse | Accept:  # type: ignore[override]
        self.seen.append(request)
        return Accept("chat")


def test_every_mutant_is_registered_through_its_entry_point() -> None:
    assert problems() == []
    for mutant in (Control, *MUTANTS):
        engine = registry.get(mutant.name)
        assert type(engine) is mutant
        assert engine.capabilities == base_engine().capabilities


def test_every_mutant_names_its_bug() -> None:
    names = [mutant.name for mutant in MUTANTS]
    assert len(set(names)) == len(names)
    for mutant in MUTANTS:
        assert mutant.name.startswith("mutant-")
        assert len(mutant.bug()) > 20, mutant


@pytest.mark.parametrize("app_kind", [AsyncRouteApp, SyncRouteApp])
@pytest.mark.parametrize("mutant", [RemoteAddressIsServer, ServerSelectsNoSubprotocol])
def test_route_proxy_matches_the_core_route(
    app_kind: type[AsyncRouteApp], mutant: type[MutantEngine]
) -> None:
    app = app_kind()
    proxy = _proxy_app(app, mutant(base_engine()), Listening("127.0.0.1", 8080))
    assert inspect.iscoroutinefunction(proxy.route) is inspect.iscoroutinefunction(app.route)

    async def route() -> HttpResponse | Accept:
        decided = proxy.route(REQUEST)
        return await decided if inspect.isawaitable(decided) else decided

    decision = asyncio.run(route())
    if mutant is RemoteAddressIsServer:
        assert decision == Accept("chat")
        assert app.seen[0].remote_address == ("127.0.0.1", 8080)
    else:
        assert decision == Accept(None)
        assert app.seen[0] == REQUEST
