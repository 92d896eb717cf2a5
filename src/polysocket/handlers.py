"""Handler resolution (SPEC section 3): a path under the handler root, a module, or an object.

- ``"my-project/ws-handler"`` is the file ``<root>/my-project/ws-handler.py``; the root is
  ``POLYSOCKET_ROOT``, else the current directory. A path that leaves the root is refused.
- ``"my_pkg.ws_handler"`` imports a module; ``"my_pkg.ws_handler:obj"`` takes an attribute.
- Anything else is used as it is: an object or module with the callbacks.

Handler files are loaded once per modification time, so module-level state survives across
connections, and an edited file is picked up by the next connection.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

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


def resolve_handler(spec: Any, root: str | os.PathLike[str] | None = None) -> Handler:
    """Find the handler ``spec`` names, or raise :class:`HandlerNotFoundError`."""
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
        module = _load_file(target, base, tried, must_exist=looks_like_path)
        if module is not None:
            return _from_module(spec, module, attribute, str(module.__file__))
    module = _import_module(target, tried)
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


def _load_file(target: str, root: Path, tried: list[str], must_exist: bool) -> ModuleType | None:
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
        module = _exec_file(path, target)
        _file_cache[path] = (mtime, module)
        return module


def _exec_file(path: Path, target: str) -> ModuleType:
    name = "polysocket_handlers." + re.sub(r"\W", "_", str(path))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HandlerNotFoundError(f"handler {target!r}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise HandlerNotFoundError(
            f"handler {target!r} ({path}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    sys.modules[name] = module
    return module


def _import_module(target: str, tried: list[str]) -> ModuleType | None:
    if not all(part.isidentifier() for part in target.split(".")):
        return None
    tried.append(f"module {target}")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and target.startswith(exc.name):
            return None
        raise HandlerNotFoundError(f"handler module {target!r} failed to import: {exc}") from exc
    except Exception as exc:
        raise HandlerNotFoundError(
            f"handler module {target!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
