"""The server: a ``uvicorn.Server`` running :class:`polysocket.asgi.AsgiApp` on the sockets
of ``enginekit.bind_sockets``, in the caller's loop, with no signal handlers of its own (the
caller stops it with :meth:`UvicornServer.close`)."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from polysocket.asgi import AsgiApp
from polysocket.enginekit import bind_sockets
from polysocket.transport import ServerApp, ServerOptions

_log = logging.getLogger("polysocket.engines.uvicorn")

#: uvicorn's WebSocket protocol: websockets' sans-I/O one, which reads no more of the socket
#: while a received message waits for the application (uvicorn >= 0.35).
WS_PROTOCOL = "websockets-sansio"


class UvicornServer:
    def __init__(self, app: ServerApp, options: ServerOptions) -> None:
        self.options = options
        self.port = 0
        config = uvicorn.Config(
            AsgiApp(app, options),
            lifespan="off",  # the core starts the watcher and closes the sessions itself
            ws=WS_PROTOCOL,
            ws_max_size=options.max_size,  # type: ignore[arg-type]  # None: no limit
            ws_ping_interval=options.ping_interval,
            ws_ping_timeout=options.ping_timeout,
            ws_per_message_deflate=options.compression == "deflate",
            # idle keep-alive HTTP connections are dropped that long after their last answer
            timeout_keep_alive=max(1, round(options.open_timeout)),
            timeout_graceful_shutdown=max(1, round(options.close_timeout)),
            backlog=options.backlog,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        config.load()
        config.ssl = options.ssl  # a context, where uvicorn's own flags take files
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._sockets: list[object] = []

    async def start(self, host: str, port: int) -> UvicornServer:
        sockets = bind_sockets(host, port, self.options.backlog)
        self.port = sockets[0].getsockname()[1]
        self._sockets = list(sockets)
        try:
            await self._server.startup(sockets=sockets)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return self

    async def close(self) -> None:
        """Stop listening, end what is left (uvicorn closes WebSockets with 1012 and waits
        for their tasks) and return, ``close_timeout`` at most."""
        server = self._server
        server.force_exit = False
        timeout = self.options.close_timeout
        try:
            async with asyncio.timeout(timeout + 1):
                await server.shutdown()
        except TimeoutError:
            _log.warning("uvicorn did not finish shutting down in %ss", timeout)
        for sock in self._sockets:
            sock.close()  # type: ignore[attr-defined]
