"""Handler resolution (SPEC section 3): a path under the handler root, a module, or an object.

- ``"my-project/ws-handler"`` is the file ``<root>/my-project/ws-handler.py``; the root is
  ``POLYSOCKET_ROOT``, else the current directory. A path that leaves the root is refused.
- ``"my_pkg.ws_handler"`` imports a module; ``"my_pkg.ws_handler:obj"`` takes an attribute
  (the endpoint server refuses these unless ``allow_modules``: they come from ``sys.path``,
  outside its registry folder).
- Anything else is used as it is: an object or module with the callbacks.

Handler files are loaded once per modification time, so module-level state survives across
connections, and an edited file is picked up by the next connection.

With ``import_timeout`` (the endpoint server's reload) a module is executed on a daemon thread
of its own and waited for that long: a module that hangs at import is reported as a
:class:`HandlerNotFoundError` and its thread is left behind (a daemon: it never holds up the
process's exit); the same file, unchanged, is not executed again while that thread runs. Any
``BaseException`` a module raises at import, ``SystemExit`` included, is reported the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .errors import HandlerNotFoundError

__all__ = ["CALLBACKS", "Handler", "handler_root", "resolve_handler"]

#: Method name (as ``getMethod()`` reports it) -> accepted attribute names, camelCase first.
CALLBACKS: dict[str, tuple[str, str]] = {
    "onopen": ("onOpen", "on_open"),
    "onmessage": ("onMessage", "on_message"),
    "onerror": ("onError", "on_error"),
    "onclose": ("onClose", "on_close"),
}


@dataclass(frozen=True)
class Handler:
    """A resolved handler: its callbacks, and what the user passed to find it."""

    spec: Any
    source: str
    callbacks: dict[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def is_async(self) -> bool:
        """True when every callback present is ``async def``: then they all run on the loop."""
        return bool(self.callbacks) and all(
            inspect.iscoroutinefunction(cb) for cb in self.callbacks.values()
        )


def handler_root() -> Path:
    return Path(os.environ.get("POLYSOCKET_ROOT") or os.getcwd())


def resolve_handler(
    spec: Any,
    root: str | os.PathLike[str] | None = None,
    *,
    allow_modules: bool = True,
    import_timeout: float | None = None,
) -> Handler:
    """Find the handler ``spec`` names, or raise :class:`HandlerNotFoundError`.

    ``allow_modules=False`` refuses module names (only files under ``root``); with
    ``import_timeout`` a module that does not finish executing within that many seconds is
    refused (see the module's docstring)."""
    if isinstance(spec, Handler):
        return spec
    if not isinstance(spec, str):
        if spec is None:
            raise HandlerNotFoundError(
                "no handler given: pass a handler path such as 'my-project/ws-handler',"
                " a module name, or an object with onOpen/onMessage/onError/onClose"
            )
        return _from_object(spec, spec, repr(spec))
    if not spec.strip():
        raise HandlerNotFoundError("the handler path is empty")
    base = Path(root) if root is not None else handler_root()
    target, _, attribute = spec.partition(":")
    tried: list[str] = []
    looks_like_path = "/" in target or "\\" in target or target.endswith(".py")
    if looks_like_path or "." not in target:
        module = _load_file(
            target, base, tried, must_exist=looks_like_path, import_timeout=import_timeout
        )
        if module is not None:
            return _from_module(spec, module, attribute, str(module.__file__))
    if not allow_modules:
        raise HandlerNotFoundError(
            f"handler {spec!r} is not a file under the registry folder ({base}); tried:"
            f" {'; '.join(tried) or 'nothing'}. As a module name it would be imported from"
            " sys.path, outside the registry folder, which the server refuses unless allowed:"
            " serve(..., allow_module_handlers=True) or `polysocket serve"
            " --allow-module-handlers`. Or put the handler in a file under the folder."
        )
    module = _import_module(target, tried, import_timeout)
    if module is None:
        raise HandlerNotFoundError(
            f"handler {spec!r} not found; tried: {'; '.join(tried)}. Give a path relative to"
            f" the handler root ({base}), set POLYSOCKET_ROOT, or give an importable module."
        )
    return _from_module(spec, module, attribute, f"module {target}")


def _from_module(spec: str, module: ModuleType, attribute: str, source: str) -> Handler:
    if not attribute:
        return _from_object(spec, module, source)
    try:
        obj = getattr(module, attribute)
    except AttributeError:
        raise HandlerNotFoundError(
            f"handler {spec!r}: {source} has no attribute {attribute!r}"
        ) from None
    return _from_object(spec, obj, f"{source}:{attribute}")


def _from_object(spec: Any, obj: Any, source: str) -> Handler:
    callbacks = {}
    for method, names in CALLBACKS.items():
        for name in names:
            callback = getattr(obj, name, None)
            if callback is not None:
                if not callable(callback):
                    raise HandlerNotFoundError(
                        f"handler {source}: {name} is a {type(callback).__name__}, not a function"
                    )
                callbacks[method] = callback
                break
    return Handler(spec, source, callbacks)


_file_cache: dict[Path, tuple[int, ModuleType]] = {}
_file_lock = threading.Lock()


def _load_file(
    target: str, root: Path, tried: list[str], must_exist: bool, import_timeout: float | None
) -> ModuleType | None:
    relative = target if target.endswith(".py") else target + ".py"
    if os.path.isabs(relative):
        raise HandlerNotFoundError(
            f"handler path {target!r} is absolute; give it relative to the handler root {root}"
        )
    root = root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise HandlerNotFoundError(
            f"handler path {target!r} leaves the handler root {root}; refused"
        )
    tried.append(f"file {path}")
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        if must_exist:
            raise HandlerNotFoundError(
                f"handler {target!r} not found: no file {path} (handler root: {root};"
                " set POLYSOCKET_ROOT or run from the folder that holds the handler)"
            ) from None
        return None
    with _file_lock:
        cached = _file_cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        if import_timeout is None:
            module = _exec_file(path, target)
            _file_cache[path] = (mtime, module)
            return module
    # On a thread of its own, outside the lock: a module that hangs holds up nothing else.
    loaded = _run_import(
        ("file", str(path), mtime), lambda: _exec_file(path, target), target, import_timeout
    )
    with _file_lock:
        _file_cache[path] = (mtime, loaded)
    return loaded


def _exec_file(path: Path, target: str) -> ModuleType:
    name = "polysocket_handlers." + re.sub(r"\W", "_", str(path))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HandlerNotFoundError(f"handler {target!r}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a module's sys.exit() is its failure, not ours
        raise HandlerNotFoundError(
            f"handler {target!r} ({path}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    sys.modules[name] = module
    return module


def _import_module(
    target: str, tried: list[str], import_timeout: float | None
) -> ModuleType | None:
    if not all(part.isidentifier() for part in target.split(".")):
        return None
    tried.append(f"module {target}")
    if import_timeout is None:
        return _import(target)
    return _run_import(("module", target, 0), lambda: _import(target), target, import_timeout)


def _import(target: str) -> ModuleType | None:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and target.startswith(exc.name):
            return None
        raise HandlerNotFoundError(f"handler module {target!r} failed to import: {exc}") from exc
    except (Exception, SystemExit) as exc:
        raise HandlerNotFoundError(
            f"handler module {target!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc


_M = TypeVar("_M")


class _Import:
    """One module execution on a daemon thread of its own; ``done`` is set when it ends."""

    def __init__(self, load: Callable[[], Any], target: str) -> None:
        self.target = target
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._load = load
        self.thread = threading.Thread(
            target=self._run, name=f"polysocket-import {target}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._load()
        except HandlerNotFoundError as exc:
            self.error = exc
        except BaseException as exc:  # KeyboardInterrupt raised by the module itself, ...
            self.error = HandlerNotFoundError(
                f"handler {self.target!r} failed to load: {type(exc).__name__}: {exc}"
            )
        finally:
            self.done.set()


#: Imports on a thread of their own, by what they load: one per file version at a time.
_imports: dict[tuple[str, str, int], _Import] = {}


def _run_import(
    key: tuple[str, str, int], load: Callable[[], _M], target: str, timeout: float
) -> _M:
    """Run ``load()`` on a daemon thread and wait for it ``timeout`` seconds (counted from
    when it started: a second caller for the same ``key`` waits on the same thread)."""
    with _file_lock:
        running = _imports.get(key)
        if running is None or (running.done.is_set() and running.error is not None):
            # older versions of the same file that ended unclaimed are of no use any more
            for old in [k for k, v in _imports.items() if k[:2] == key[:2] and v.done.is_set()]:
                del _imports[old]
            running = _imports[key] = _Import(load, target)
    if not running.done.wait(max(0.0, running.started + timeout - time.monotonic())):
        raise HandlerNotFoundError(
            f"handler {target!r} did not finish importing within {timeout:g} s (it has been"
            f" running for {time.monotonic() - running.started:.0f} s); it is not served."
            " Move slow or blocking work out of the module's top level (into onOpen, or a"
            " thread it starts), then save the file again"
        )
    with _file_lock:
        if _imports.get(key) is running:
            del _imports[key]
    if running.error is not None:
        raise running.error
    return running.result  # type: ignore[no-any-return]
