"""A real browser (headless Chromium) against the server, on every engine that can serve.

The page at ``GET /`` is loaded, the Dirigible seed's own snippet runs in it, and the page's
console is driven by clicks, as a person would use it.
"""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from .peer_processes import require_peers
from .server_support import SERVICE, ServerThread, events, write_registry
from .support import WAIT, require_capability

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

#: Every test here serves with the engine under test; the browser is the client.
pytestmark = pytest.mark.polysocket_server


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


OPEN_AND_ECHO = """(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => ws.send('hello');
  ws.onmessage = (event) => { resolve(`message: ${event.data}`); ws.close(); };
  ws.onclose = (event) => resolve(`closed: ${event.code}`);
})"""

TOKENS = "browser-s3cret carol admin\n"


class _Site:
    """Another web site: a page of its own at ``origin`` (127.0.0.1 on another port: another
    origin, and on this machine, so the browser's own rules about pages on the internet
    reaching local addresses do not decide the test instead of the server)."""

    def __init__(self) -> None:
        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"<!doctype html><p>another site</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT)


@pytest.fixture
def sites() -> Iterator[tuple[_Site, _Site]]:
    """Two other sites: the first one not allowed, the second one allowed."""
    evil, allowed = _Site(), _Site()
    yield evil, allowed
    evil.stop()
    allowed.stop()


def test_browser_token_in_the_query_and_origins(
    browser: Browser,
    engine: str,
    tmp_path: Path,
    sites: tuple[_Site, _Site],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """From its own page, the browser gets in with ``?access_token=`` and is refused without;
    a page on another site is refused even with the token (403, seen by the server), a page
    on an allowed site gets in."""
    from polysocket.auth import bearer_tokens

    require_capability(engine, "server")
    events.clear()
    caplog.set_level(logging.DEBUG, "polysocket.auth")
    evil, allowed = sites
    (tmp_path / "tokens.txt").write_text(TOKENS)
    guarded = ServerThread(
        write_registry(tmp_path / "registry"),
        engine,
        origins=[allowed.origin],
        authenticate=bearer_tokens(tmp_path / "tokens.txt", env=None),
    )
    try:
        endpoint = guarded.uri("echo")
        with_token = f"{endpoint}?access_token=browser-s3cret"
        page = browser.new_page()
        try:
            page.goto(guarded.url("/"))
            assert page.evaluate(OPEN_AND_ECHO, endpoint) == "closed: 1006"  # 401: no token
            assert page.evaluate(OPEN_AND_ECHO, with_token) == "message: hello"
            assert events.wait("onopen", "echo").principal.name == "carol"
            events.wait("onclose", "echo")  # the page closed it; nothing of it comes later
            events.clear()
            page.goto(f"{evil.origin}/")
            assert page.evaluate(OPEN_AND_ECHO, with_token) == "closed: 1006"
            refused = [r.getMessage() for r in caplog.records if "refused origin" in r.getMessage()]
            assert refused == [f"refused origin {evil.origin!r} on {SERVICE}echo"]
            assert [e for e in events.items if e.name == "onopen"] == []
            page.goto(f"{allowed.origin}/")
            assert page.evaluate(OPEN_AND_ECHO, with_token) == "message: hello"
            assert events.wait("onopen", "echo").principal.name == "carol"
        finally:
            page.close()
    finally:
        guarded.stop()
