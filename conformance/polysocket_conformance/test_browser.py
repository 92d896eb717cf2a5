"""A real browser (headless Chromium) against the server, on every engine that can serve.

The page at ``GET /`` is loaded, the Dirigible seed's own snippet runs in it, and the page's
console is driven by clicks, as a person would use it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from .peer_processes import require_peers
from .server_support import ServerThread, events, write_registry
from .support import require_capability

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SEED_SNIPPET = """(port) => new Promise((resolve, reject) => {
  const ws = new WebSocket(`ws://localhost:${port}/websockets/v4/service/echo`);
  ws.onopen = () => ws.send('hello');
  ws.onmessage = (event) => { resolve(event.data); ws.close(); };
  ws.onerror = () => reject(new Error('WebSocket error'));
})"""


def _unavailable(reason: str) -> NoReturn:
    if require_peers():
        pytest.fail(f"{reason} (POLYSOCKET_REQUIRE_PEERS is set, so this is an error)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = os.environ.get("POLYSOCKET_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        _unavailable("browser unavailable: no `chromium` on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("browser driver unavailable: pip install playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def server(engine: str, tmp_path: Path) -> Iterator[ServerThread]:
    require_capability(engine, "server")
    events.clear()
    running = ServerThread(write_registry(tmp_path), engine)
    yield running
    running.stop()


def test_seed_snippet_in_a_real_browser(browser: Browser, server: ServerThread) -> None:
    page = browser.new_page()
    try:
        page.goto(server.url("/"))
        assert "echo" in page.inner_text("table")
        reply = page.evaluate(SEED_SNIPPET, server.port)
        assert reply == "hello"
        assert events.wait("onmessage", "echo").payload == "hello"
        # the browser's close() sends a close frame without a code: 1005 on every engine
        assert events.wait("onclose", "echo").close_code == 1005
    finally:
        page.close()


def test_page_console_talks_to_an_endpoint(browser: Browser, server: ServerThread) -> None:
    page = browser.new_page()
    try:
        page.goto(server.url("/"))
        page.select_option("#endpoint", "echo")
        page.click("#connect")
        page.wait_for_function("document.getElementById('log').textContent.includes('open: echo')")
        page.fill("#message", "from the console")
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('log').textContent.includes('message: from the console')"
        )
        assert events.wait("onmessage", "echo").payload == "from the console"
        page.click("#disconnect")
        page.wait_for_function("document.getElementById('log').textContent.includes('close: ')")
        assert events.wait("onclose", "echo").close_code == 1005
    finally:
        page.close()
