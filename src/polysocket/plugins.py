"""Finding engines: entry points -> pluggy plugins -> registered engines, each fault-isolated.

Built-in engines are found exactly like third-party ones, through the ``polysocket.engines``
entry-point group. A plugin that fails to import, or whose hook raises, is recorded with its
error and shown by ``polysocket engines``; every other engine keeps working.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .auth import Handshake, Principal
from .errors import EngineUnavailableError, UnknownEngineError
from .transport import Engine

log = logging.getLogger("polysocket.plugins")

DEFAULT_ENGINE = "aiohttp"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    error: BaseException

    @property
    def summary(self) -> str:
        return "".join(traceback.format_exception_only(self.error)).strip()


@dataclass(frozen=True)
class EngineStatus:
    """One row of ``polysocket engines``."""

    name: str
    status: str  # "available", "library missing" or "failed to load"
    version: str | None
    capabilities: frozenset[str]
    detail: str


class EngineRegistry:
    """The installed engines. ``load()`` reads the entry points once; tests may add plugins."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._engines: dict[str, Engine] = {}
        self._plugin_of: dict[str, str] = {}  # engine name -> name of the plugin that gave it
        self._failures: dict[str, PluginFailure] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP):
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken plugin must never break the others
                    log.warning("engine plugin %r failed to load: %s", ep.name, exc)
                    self._failures[ep.name] = PluginFailure(ep.name, exc)
                    continue
                self._add_plugin_locked(plugin, ep.name)

    def register_plugin(self, plugin: object, name: str) -> None:
        """Register a plugin object or module directly (used by tests and embedders)."""
        self.load()
        with self._lock:
            self._add_plugin_locked(plugin, name)

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            plugin = self._pm.get_plugin(name)
            if plugin is not None:
                self._pm.unregister(plugin)
            self._engines = {
                engine_name: engine
                for engine_name, engine in self._engines.items()
                if self._plugin_of.get(engine_name) != name
            }
            self._plugin_of = {
                engine_name: plugin_name
                for engine_name, plugin_name in self._plugin_of.items()
                if engine_name in self._engines
            }
            self._failures.pop(name, None)

    def _add_plugin_locked(self, plugin: object, name: str) -> None:
        try:
            self._pm.register(plugin, name=name)
        except Exception as exc:
            self._failures[name] = PluginFailure(name, exc)
            return
        for impl in self._pm.hook.polysocket_register_engines.get_hookimpls():
            if impl.plugin_name != name:
                continue
            found: list[Engine] = []
            try:
                impl.function(register=found.append)
                for engine in found:
                    _check_engine(engine)
            except Exception as exc:
                log.warning("engine plugin %r failed to register: %s", name, exc)
                self._failures[name] = PluginFailure(name, exc)
                continue
            for engine in found:
                self._engines[engine.name] = engine
                self._plugin_of[engine.name] = name

    def authenticator_names(self) -> list[str]:
        """The registered plugins that implement ``polysocket_authenticate``."""
        self.load()
        return [impl.plugin_name for impl in self._pm.hook.polysocket_authenticate.get_hookimpls()]

    def authenticate(self, request: Handshake) -> Principal | None:
        """Ask the plugins' ``polysocket_authenticate`` (the first principal wins)."""
        principal: Principal | None = self._pm.hook.polysocket_authenticate(request=request)
        return principal

    def names(self) -> list[str]:
        self.load()
        return sorted(self._engines)

    def get(self, name: str | None = None) -> Engine:
        """The engine to use: ``name``, else ``$POLYSOCKET_ENGINE``, else ``aiohttp``."""
        self.load()
        name = name or os.environ.get("POLYSOCKET_ENGINE") or DEFAULT_ENGINE
        engine = self._engines.get(name)
        if engine is None:
            failure = self._failures.get(name)
            if failure is not None:
                raise EngineUnavailableError(
                    f"engine {name!r} failed to load: {failure.summary}. "
                    "Reinstall the package that provides it, or pick another engine "
                    f"({', '.join(self.names()) or 'none installed'})."
                ) from failure.error
            installed = ", ".join(self.names()) or "none"
            raise UnknownEngineError(
                f"unknown engine {name!r}; installed engines: {installed}. "
                "Pass one of those as engine=, or install the package that provides it."
            )
        if not engine.is_available():
            raise EngineUnavailableError(
                f"engine {name!r} needs the library {engine.library!r}, which is not "
                f"installed. Install it with: pip install {engine.install_hint}"
            )
        return engine

    def statuses(self) -> list[EngineStatus]:
        self.load()
        rows = []
        for name in sorted(self._engines):
            engine = self._engines[name]
            if engine.is_available():
                status, detail = "available", ""
            else:
                status, detail = "library missing", f"pip install {engine.install_hint}"
            rows.append(
                EngineStatus(name, status, engine.library_version(), engine.capabilities, detail)
            )
        for name in sorted(self._failures):
            failure = self._failures[name]
            rows.append(EngineStatus(name, "failed to load", None, frozenset(), failure.summary))
        return rows


def _check_engine(engine: object) -> None:
    for attribute in ("name", "library", "install_hint", "capabilities", "connect"):
        if not hasattr(engine, attribute):
            raise TypeError(f"{engine!r} is not an engine: it has no {attribute!r}")


registry = EngineRegistry()
