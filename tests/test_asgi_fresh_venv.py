"""Issue 12's first "done when": ``pip install "polysocket[uvicorn]"`` in a fresh venv, then
``uvicorn polysocket.asgi:app --factory`` serves the bundled sample, and the seed's browser
snippet works against it in Chromium.

``nox -s asgi_fresh_venv`` makes that venv (``python -m venv``, only ``.[uvicorn]``
installed, not editable), starts that uvicorn and runs this module from its own venv with
the server in ``$POLYSOCKET_FRESH_URL``, the venv in ``$POLYSOCKET_FRESH_VENV`` and the
server's process id in ``$POLYSOCKET_FRESH_PID``. Elsewhere these tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from polysocket_conformance import test_browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser

WAIT = 10.0
#: The suite's Chromium (Debian's, driven by playwright), reused as it is.
browser = test_browser.browser
#: The seed's snippet as the browser tests run it, on the sample's echo endpoint (the
#: README's "Connect to the sample from a browser's console").
SEED_SNIPPET = test_browser.SEED_SNIPPET.replace("/service/echo`", "/service/my-endpoint`")


@dataclass(frozen=True)
class FreshServer:
    url: str
    port: int
    venv: Path
    pid: int


@pytest.fixture(scope="module")
def fresh() -> FreshServer:
    try:
        url = os.environ["POLYSOCKET_FRESH_URL"]
        venv, pid = (
            Path(os.environ["POLYSOCKET_FRESH_VENV"]),
            int(os.environ["POLYSOCKET_FRESH_PID"]),
        )
    except KeyError as missing:
        pytest.skip(
            f"no fresh-venv server (${missing.args[0]} unset): `nox -s asgi_fresh_venv`"
            " installs polysocket[uvicorn] in a new venv and starts it"
        )
    port = urlsplit(url).port
    assert port is not None, url
    return FreshServer(url, port, venv, pid)


def test_the_server_runs_from_a_fresh_non_editable_install(fresh: FreshServer) -> None:
    """The server is that venv's uvicorn; the venv has polysocket installed in its own
    site-packages (not this checkout's sources) and nothing of the dev extra (no pytest)."""
    command = Path(f"/proc/{fresh.pid}/cmdline").read_bytes().split(b"\0")
    assert command[0].decode().startswith(str(fresh.venv)), command
    assert b"polysocket.asgi:app" in command and b"--factory" in command, command
    probe = (
        "import importlib.util, json, polysocket, uvicorn;"
        "print(json.dumps({'polysocket': polysocket.__file__,"
        " 'pytest': importlib.util.find_spec('pytest') is not None,"
        " 'fastapi': importlib.util.find_spec('fastapi') is not None}))"
    )
    found = json.loads(
        subprocess.run(
            [str(fresh.venv / "bin" / "python"), "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            cwd=fresh.venv,
        ).stdout
    )
    assert found == {
        "polysocket": found["polysocket"],
        "pytest": False,
        "fastapi": False,
    }
    assert Path(found["polysocket"]).is_relative_to(fresh.venv), found
    assert "site-packages" in Path(found["polysocket"]).parts, found


def test_factory_serves_the_bundled_sample(fresh: FreshServer) -> None:
    with urllib.request.urlopen(f"{fresh.url}/websockets/v4/endpoints", timeout=WAIT) as r:
        listed = sorted(e["endpoint"] for e in json.loads(r.read())["endpoints"])
    assert listed == ["chat", "my-endpoint"]


def test_seed_snippet_in_chromium(fresh: FreshServer, browser: Browser) -> None:
    """The sample's page lists its endpoints; from it, the seed's snippet connects to
    ``my-endpoint``, sends "hello" and gets it back."""
    assert SEED_SNIPPET != test_browser.SEED_SNIPPET, "the seed snippet's endpoint moved"
    page = browser.new_page()
    try:
        page.goto(f"{fresh.url}/")
        assert "my-endpoint" in page.inner_text("table")
        assert page.evaluate(SEED_SNIPPET, fresh.port) == "hello"
    finally:
        page.close()
