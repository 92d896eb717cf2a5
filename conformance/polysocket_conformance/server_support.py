"""Support for the server half of the suite: a registry folder and a server on a thread.

Handlers in the registry folder report every callback to :data:`events`, so a test can see
what the server side did without reaching into the server.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polysocket

from .support import WAIT

SERVICE = "/websockets/v4/service/"

T = TypeVar("T")


@dataclass(frozen=True)
class ServerEvent:
    name: str
    endpoint: str
    session_id: str
    payload: Any
    close_code: int | None
    close_reason: str | None
    remote_address: Any
    request_headers: dict[str, str]
    #: ``getSession().principal``: who the authenticator said opened the session.
    principal: Any = None


class ServerEvents:
    """Every server callback of the handlers below, in order, across sessions."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[ServerEvent] = []
        #: Sessions seen before the last clear(): a callback of theirs that runs late (an
        #: onClose after the previous test's server stopped) is not this test's event.
        self._stale: set[str] = set()

    def record(self, name: str, payload: Any = None) -> None:
        session = polysocket.getSession()
        if session.id in self._stale:
            return
        event = ServerEvent(
            name,
            session.endpoint,
            session.id,
            payload,
            polysocket.getCloseCode(),
            polysocket.getCloseReason(),
            session.remote_address,
            dict(session.request_headers),
            getattr(session, "principal", None),
        )
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._stale.update(event.session_id for event in self.items)
            self.items.clear()

    def wait(self, name: str, endpoint: str | None = None, timeout: float = WAIT) -> ServerEvent:
        def found() -> ServerEvent | None:
            for event in self.items:
                if event.name == name and endpoint in (None, event.endpoint):
                    return event
            return None

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            event = found()
        assert event is not None, f"no server {name} on {endpoint or 'any endpoint'}: {self.items}"
        return event

    def payloads(self, name: str, count: int, timeout: float = WAIT) -> list[Any]:
        """The payloads of the first `count` events called `name`, waiting for them: a callback
        records its event after its side effects, which a peer may see first."""

        def named() -> list[Any]:
            return [e.payload for e in self.items if e.name == name]

        with self._cond:
            self._cond.wait_for(lambda: len(named()) >= count, timeout)
            return named()

    def of(self, session_id: str) -> list[str]:
        with self._cond:
            return [e.name for e in self.items if e.session_id == session_id]


events = ServerEvents()

RECORDING_HANDLER = """
from polysocket_conformance.server_support import events

def onOpen():
    events.record("onopen")

def onMessage(message):
    events.record("onmessage", message)
    if message.startswith("close:") if isinstance(message, str) else False:
        _, code, reason = message.split(":", 2)
        polysocket.getSession().close(int(code), reason)
        return None
    return message

def onError(error):
    events.record("onerror", error)

def onClose():
    events.record("onclose")
"""

CHAT_HANDLER = """
def onMessage(message):
    polysocket.broadcast(polysocket.getSession().endpoint, message)
"""

#: Its own messages and broadcasts, interleaved: each must arrive in the order it was made.
INTERLEAVING_HANDLER = """
def onMessage(message):
    session = polysocket.getSession()
    for i in range(int(message)):
        session.send(f"own {i}")
        polysocket.broadcast(session.endpoint, f"all {i}")
"""

FAILING_HANDLER = """
from polysocket_conformance.server_support import events

def onOpen():
    events.record("onopen")
    raise RuntimeError("onOpen fails on purpose")

def onMessage(message):
    events.record("onmessage", message)
    raise RuntimeError("onMessage fails on purpose")

def onError(error):
    events.record("onerror", error)
    raise RuntimeError("onError fails on purpose")

def onClose():
    events.record("onclose")
    raise RuntimeError("onClose fails on purpose")
"""


def write_registry(root: Path) -> Path:
    """The registry the server tests serve: an echo, a chat, one that interleaves sends and
    broadcasts, and a handler that always fails."""
    handlers = {
        "echo": RECORDING_HANDLER,
        "chat": CHAT_HANDLER,
        "interleaving": INTERLEAVING_HANDLER,
        "failing": FAILING_HANDLER,
    }
    for name, source in handlers.items():
        path = root / "my-project" / f"{name}-handler.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("import polysocket\n" + textwrap.dedent(source))
        add_descriptor(root, f"{name}.websocket", f"my-project/{name}-handler", name)
    return root


def add_descriptor(root: Path, file: str, handler: str, endpoint: str) -> Path:
    path = root / file
    path.write_text(
        json.dumps({"handler": handler, "endpoint": endpoint, "description": f"{endpoint} test"})
    )
    return path


class ServerThread:
    """``polysocket.serve`` on an event loop of its own thread, for synchronous tests."""

    def __init__(self, root: Path, engine: str, **options: Any) -> None:
        self.root = root
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self._run(self._start(engine, options))

    async def _start(self, engine: str, options: dict[str, Any]) -> polysocket.EndpointServer:
        return await polysocket.serve(self.root, port=0, engine=engine, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT * 2)

    @property
    def port(self) -> int:
        return self.server.port

    def uri(self, endpoint: str) -> str:
        return f"ws://127.0.0.1:{self.port}{SERVICE}{endpoint}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        try:
            self._run(self.server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            self._loop.close()
