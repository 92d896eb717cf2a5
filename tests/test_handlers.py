from __future__ import annotations

import os
import sys
import textwrap

import pytest

from polysocket import HandlerNotFoundError
from polysocket.handlers import resolve_handler


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_root_relative_path_loads_the_file_once(tmp_path, monkeypatch):
    write(
        tmp_path / "my-project" / "ws-handler.py", "state = []\ndef onMessage(m): state.append(m)\n"
    )
    monkeypatch.setenv("POLYSOCKET_ROOT", str(tmp_path))
    first = resolve_handler("my-project/ws-handler")
    second = resolve_handler("my-project/ws-handler")
    assert set(first.callbacks) == {"onmessage"}
    assert first.callbacks["onmessage"] is second.callbacks["onmessage"]
    assert first.spec == "my-project/ws-handler"


def test_snake_case_callbacks_and_root_argument(tmp_path):
    write(tmp_path / "h.py", "def on_open(): pass\ndef on_close(): pass\n")
    handler = resolve_handler("h", root=tmp_path)
    assert set(handler.callbacks) == {"onopen", "onclose"}


def test_edited_file_is_reloaded(tmp_path):
    path = write(tmp_path / "h.py", "def onOpen(): return 1\n")
    first = resolve_handler("h.py", root=tmp_path)
    path.write_text("def onOpen(): return 2\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert resolve_handler("h.py", root=tmp_path).callbacks["onopen"]() == 2
    assert first.callbacks["onopen"]() == 1


@pytest.mark.parametrize("spec", ["../outside", "a/../../outside", "a/../../../etc/passwd"])
def test_path_leaving_the_root_is_refused(tmp_path, spec):
    write(tmp_path.parent / "outside.py", "def onOpen(): pass\n")
    with pytest.raises(HandlerNotFoundError, match="leaves the handler root"):
        resolve_handler(spec, root=tmp_path / "root")


def test_absolute_path_is_refused(tmp_path):
    path = write(tmp_path / "h.py", "def onOpen(): pass\n")
    with pytest.raises(HandlerNotFoundError, match="absolute"):
        resolve_handler(str(path), root=tmp_path)


def test_missing_file_names_what_was_tried(tmp_path):
    with pytest.raises(HandlerNotFoundError) as info:
        resolve_handler("my-project/nope", root=tmp_path)
    assert str(tmp_path / "my-project" / "nope.py") in str(info.value)


def test_broken_handler_file_says_why(tmp_path):
    write(tmp_path / "bad.py", "def onOpen(:\n")
    with pytest.raises(HandlerNotFoundError, match="SyntaxError"):
        resolve_handler("bad", root=tmp_path)


def test_dotted_module_and_attribute(tmp_path, monkeypatch):
    write(tmp_path / "pkg_for_handlers" / "__init__.py", "")
    write(
        tmp_path / "pkg_for_handlers" / "ws.py",
        """
        def onMessage(m): pass
        class Obj:
            def onClose(self): pass
        obj = Obj()
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert set(resolve_handler("pkg_for_handlers.ws").callbacks) == {"onmessage"}
        assert set(resolve_handler("pkg_for_handlers.ws:obj").callbacks) == {"onclose"}
        with pytest.raises(HandlerNotFoundError, match="no attribute 'missing'"):
            resolve_handler("pkg_for_handlers.ws:missing")
        with pytest.raises(HandlerNotFoundError, match="not found"):
            resolve_handler("pkg_for_handlers.nothing_here")
    finally:
        for name in [m for m in sys.modules if m.startswith("pkg_for_handlers")]:
            del sys.modules[name]


def test_object_handler_and_non_callable_callback():
    class Handler:
        def onMessage(self, m):
            pass

    assert set(resolve_handler(Handler()).callbacks) == {"onmessage"}

    class Broken:
        onMessage = "not a function"

    with pytest.raises(HandlerNotFoundError, match="not a function"):
        resolve_handler(Broken())


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_empty_handler_is_refused(spec):
    with pytest.raises(HandlerNotFoundError):
        resolve_handler(spec)
