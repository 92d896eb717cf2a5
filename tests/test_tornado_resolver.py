"""The tornado engine's client answers an IP address itself, without asyncio's thread pool."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

pytest.importorskip("tornado")

from polysocket_engines.tornado._transport import LiteralResolver


def _resolve(host: str, family: socket.AddressFamily = socket.AF_UNSPEC) -> tuple[Any, int]:
    """What the resolver answers, and how many getaddrinfo calls the loop made for it."""

    async def main() -> tuple[Any, int]:
        loop = asyncio.get_running_loop()
        calls = 0
        real = loop.getaddrinfo

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await real(*args, **kwargs)

        loop.getaddrinfo = counted  # type: ignore[method-assign]
        return await LiteralResolver().resolve(host, 8080, family), calls

    return asyncio.run(main())


def test_an_ipv4_address_is_its_own_answer() -> None:
    assert _resolve("127.0.0.1") == ([(socket.AF_INET, ("127.0.0.1", 8080))], 0)
    assert _resolve("127.0.0.1", socket.AF_INET)[1] == 0


def test_an_ipv6_address_is_its_own_answer() -> None:
    assert _resolve("::1") == ([(socket.AF_INET6, ("::1", 8080, 0, 0))], 0)


def test_names_and_mismatched_families_still_go_to_getaddrinfo() -> None:
    answer, calls = _resolve("localhost")
    assert calls == 1 and answer and all(port_of(a) == 8080 for _, a in answer)
    with pytest.raises(socket.gaierror):  # getaddrinfo's own error, as before
        _resolve("::1", socket.AF_INET)


def port_of(address: Any) -> int:
    return int(address[1])
