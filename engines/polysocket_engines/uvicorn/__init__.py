"""The uvicorn engine, ``engine="uvicorn"``: a server-only engine that runs the ASGI adapter
(:mod:`polysocket.asgi`) on a ``uvicorn.Server``, so that ``polysocket serve --engine
uvicorn`` serves a registry folder on uvicorn (``_server``). It has no client.

What it honours: ``ssl`` (uvicorn serves TLS with the context), ``compression="deflate"``
(uvicorn's ``ws_per_message_deflate``, off otherwise), ``max_size`` (``ws_max_size``), the
subprotocol the core selects, ``backlog``, ``reuse_port`` (the sockets it binds for uvicorn)
and ``open_timeout`` (uvicorn's idle keep-alive
timeout). Keepalive: uvicorn pings every ``ping_interval`` and drops a peer that does not
answer within ``ping_timeout`` (the defaults, 20 s / 20 s), but ASGI does not say why a
connection ended, so the core cannot report the timeout as ``onError`` + 1011: the engine
lacks the ``"keepalive"`` capability and takes only the defaults. uvicorn is imported inside
``serve`` only, so that ``polysocket engines`` can say what to install when it is missing.
"""

from __future__ import annotations

from polysocket import hookimpl, transport

from .. import private_api

PRIVATE_API = private_api.UVICORN


class UvicornEngine(transport.Engine):
    name = library = "uvicorn"
    install_hint = "polysocket[uvicorn]"
    capabilities = frozenset({"server", "subprotocols", "tls", "deflate", "reuse_port"})

    async def serve(
        self, host: str, port: int, app: transport.ServerApp, options: transport.ServerOptions
    ) -> transport.Server:
        from ._server import UvicornServer

        return await UvicornServer(app, options).start(host, port)


@hookimpl
def polysocket_register_engines(register):  # type: ignore[no-untyped-def]
    register(UvicornEngine())
