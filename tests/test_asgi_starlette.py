"""polysocket.asgi inside a Starlette service that has its own HTTP routes and an auth
middleware, run by each ASGI server (uvicorn, hypercorn) as a process of its own.

The middleware is a pure ASGI one, as people write them: a WebSocket handshake without the
service's token (``?token=`` or an ``X-Token`` header) is refused with its own 401 through
the WebSocket Denial Response extension (a bare 403 where a server lacks it); HTTP requests
pass. The registry is mounted at ``/rt``.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_asgi import SERVERS, AsgiServer, running_server

WAIT = 10.0
TOKEN = "s3cret-token"
MOUNTED = "/rt/websockets/v4/service/"

SERVICE = '''
import hmac
import os
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import polysocket.asgi

TOKEN = os.environ["SERVICE_TOKEN"]
ITEMS = [{"id": 1, "name": "anvil"}, {"id": 2, "name": "rope"}]


class RequireToken:
    """Refuses a WebSocket handshake without the token (?token= or X-Token)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket" or self.has_token(scope):
            await self.app(scope, receive, send)
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions") or {}:
            body = b"a token is required\\n"
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
            await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})

    @staticmethod
    def has_token(scope):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[0].encode()
        for name, value in scope["headers"]:
            if name == b"x-token":
                given = value
        return hmac.compare_digest(given, TOKEN.encode())


async def health(request):
    return JSONResponse({"status": "ok"})


async def items(request):
    return JSONResponse(ITEMS)


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/api/items", items),
        Mount("/rt", app=polysocket.asgi.app(os.environ["POLYSOCKET_ROOT"])),
    ],
    middleware=[Middleware(RequireToken)],
)
'''

#: Echoes; "headers" answers the handshake's headers as getSession() has them.
HANDLER = """
import json

import polysocket


def onMessage(message):
    if message == "headers":
        return json.dumps(dict(polysocket.getSession().request_headers))
    return message
"""


@pytest.fixture(params=sorted(SERVERS))
def service(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The Starlette service, run by one ASGI server: its ``127.0.0.1:PORT``."""
    pytest.importorskip("starlette")
    server: AsgiServer = SERVERS[request.param]
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "echo.py").write_text(HANDLER)
    (registry / "echo.websocket").write_text(json.dumps({"handler": "echo", "endpoint": "echo"}))
    (tmp_path / "service.py").write_text(SERVICE)
    monkeypatch.setenv("SERVICE_TOKEN", TOKEN)  # the server process inherits it
    app = server.module_app(tmp_path / "service.py")
    with running_server(server, registry, app=app) as running:
        yield f"127.0.0.1:{running.port}"


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_routes_answer_next_to_the_mount(service: str) -> None:
    assert get_json(f"http://{service}/health") == {"status": "ok"}
    assert get_json(f"http://{service}/api/items") == [
        {"id": 1, "name": "anvil"},
        {"id": 2, "name": "rope"},
    ]
    listing = get_json(f"http://{service}/rt/websockets/v4/endpoints")
    assert isinstance(listing, dict)
    assert [e["endpoint"] for e in listing["endpoints"]] == ["echo"]


@pytest.mark.parametrize("query", ["", "?token=wrong"], ids=["no-token", "wrong-token"])
def test_handshake_without_the_token_is_refused_by_the_middleware(service: str, query: str) -> None:
    """The client reads the middleware's own 401 (its body too): polysocket never saw it."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{service}{MOUNTED}echo{query}", open_timeout=WAIT)
    assert refused.value.response.status_code == 401
    assert refused.value.response.body == b"a token is required\n"


def test_with_the_token_the_mounted_endpoint_echoes(service: str) -> None:
    """Past the middleware: the echo through the mount, and polysocket's own refusal (404
    for an unknown endpoint) behind it."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with connect(f"ws://{service}{MOUNTED}echo?token={TOKEN}", open_timeout=WAIT) as ws:
        ws.send("past the middleware ✓")
        assert ws.recv(timeout=WAIT) == "past the middleware ✓"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=WAIT) == b"\x00\xff"
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{service}{MOUNTED}nope?token={TOKEN}", open_timeout=WAIT)
    assert refused.value.response.status_code == 404
    assert b"no endpoint 'nope' here" in refused.value.response.body


def test_get_session_sees_the_request_headers(service: str) -> None:
    """The token in a header this time; the handler's getSession().request_headers has the
    headers of the handshake the middleware let through."""
    from websockets.sync.client import connect

    headers = {"X-Token": TOKEN, "X-Tenant": "acme"}
    with connect(
        f"ws://{service}{MOUNTED}echo", additional_headers=headers, open_timeout=WAIT
    ) as ws:
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=WAIT))
    assert seen["x-tenant"] == "acme"
    assert seen["x-token"] == TOKEN
    assert seen["host"] == service
    assert seen["upgrade"].lower() == "websocket"
