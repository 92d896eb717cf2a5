"""The sessions a server engine runs, so that closing the server can end what is left."""

from __future__ import annotations

import asyncio

from ..transport import HttpRequest, ServerApp, Transport

__all__ = ["SessionTracker"]


class SessionTracker:
    """Runs ``app.session()`` for each accepted connection: :meth:`start` as a task of its
    own, for engines whose library runs no task per connection (tornado's handler returns
    from ``open()``, picows calls back from its protocol); :meth:`run` in the library's own
    task per connection (websockets' handler), which saves an idle session a task. ``close()``
    drops every connection still open, waits for the sessions to return and cancels the
    stragglers.
    """

    def __init__(self, app: ServerApp) -> None:
        self._app = app
        self._sessions: dict[asyncio.Task[None], Transport] = {}

    def start(self, request: HttpRequest, transport: Transport) -> None:
        task = asyncio.ensure_future(self._app.session(request, transport))
        self._sessions[task] = transport
        task.add_done_callback(self._sessions.pop)

    async def run(self, request: HttpRequest, transport: Transport) -> None:
        """Run the session in the calling task, until it returns (the connection closed)."""
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = transport
        try:
            await self._app.session(request, transport)
        finally:
            del self._sessions[task]

    def __len__(self) -> int:
        return len(self._sessions)

    async def close(self, timeout: float) -> None:
        """Abort the connections left (the core closed its sessions before) and wait for
        their sessions, ``timeout`` seconds at most."""
        for transport in list(self._sessions.values()):
            transport.abort()
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=timeout)
            for task in pending:
                task.cancel()
