"""Finding plugins: entry points -> pluggy plugins -> registered engines and backplanes, each
fault-isolated.

Built-in engines and backplanes are found exactly like third-party ones, through the
``polysocket.engines`` and ``polysocket.backplanes`` entry-point groups. A plugin that fails to
import, or whose hook raises, is recorded with its error and shown by ``polysocket engines``
(``polysocket backplanes``); every other plugin keeps working.
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
from .backplane import Backplane
from .errors import BackplaneError, EngineUnavailableError, UnknownEngineError
from .proxies import without_credentials
from .transport import Engine

log = logging.getLogger("polysocket.plugins")

DEFAULT_ENGINE = "aiohttp"
#: Backplane plugins are registered under this prefix and their entry point's name, so that
#: an engine and a backplane may share a name.
BACKPLANE_PLUGIN_PREFIX = "backplane:"


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
        self._backplanes: dict[str, Backplane] = {}
        self._plugin_of: dict[str, str] = {}  # engine name -> name of the plugin that gave it
        self._failures: dict[str, PluginFailure] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            groups = (
                (hookspecs.ENTRY_POINT_GROUP, ""),
                (hookspecs.BACKPLANE_ENTRY_POINT_GROUP, BACKPLANE_PLUGIN_PREFIX),
            )
            for group, prefix in groups:
                for ep in entry_points(group=group):
                    name = prefix + ep.name
                    try:
                        plugin = ep.load()
                    except Exception as exc:  # a broken plugin must never break the others
                        log.warning("plugin %r failed to load: %s", name, exc)
                        self._failures[name] = PluginFailure(name, exc)
                        continue
                    self._add_plugin_locked(plugin, name)

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
            self._backplanes = {
                backplane_name: backplane
                for backplane_name, backplane in self._backplanes.items()
                if self._plugin_of.get(BACKPLANE_PLUGIN_PREFIX + backplane_name) != name
            }
            self._plugin_of = {
                given: plugin_name
                for given, plugin_name in self._plugin_of.items()
                if plugin_name != name
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
        for impl in self._pm.hook.polysocket_register_backplanes.get_hookimpls():
            if impl.plugin_name != name:
                continue
            backplanes: list[Backplane] = []
            try:
                impl.function(register=backplanes.append)
                for backplane in backplanes:
                    _check_backplane(backplane)
            except Exception as exc:
                log.warning("backplane plugin %r failed to register: %s", name, exc)
                self._failures[name] = PluginFailure(name, exc)
                continue
            for backplane in backplanes:
                self._backplanes[backplane.name] = backplane
                self._plugin_of[BACKPLANE_PLUGIN_PREFIX + backplane.name] = name

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

    def backplane_names(self) -> list[str]:
        self.load()
        return sorted(self._backplanes)

    def backplane(self, url: str) -> Backplane:
        """The backplane serving ``url``, by its scheme (``redis://...`` -> ``redis``)."""
        self.load()
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        for backplane in self._backplanes.values():
            if scheme in backplane.schemes:
                if not backplane.is_available():
                    raise BackplaneError(
                        f"the {backplane.name!r} backplane needs the library"
                        f" {backplane.library!r}, which is not installed. Install it with:"
                        f" pip install {backplane.install_hint}"
                    )
                return backplane
        known = sorted(s for b in self._backplanes.values() for s in b.schemes)
        failed = [n for n in self._failures if n.startswith(BACKPLANE_PLUGIN_PREFIX)]
        broken = f"; failed to load: {', '.join(failed)}" if failed else ""
        raise BackplaneError(
            f"no backplane for {without_credentials(url)!r}: the installed backplanes take"
            f" {', '.join(s + '://' for s in known) or 'nothing'}{broken}. Install the"
            " package that provides it, or give a URL with one of those schemes."
        )

    def backplane_statuses(self) -> list[EngineStatus]:
        """One row per backplane, like :meth:`statuses` (capabilities: its URL schemes)."""
        self.load()
        rows = []
        for name in sorted(self._backplanes):
            backplane = self._backplanes[name]
            if backplane.is_available():
                status, detail = "available", ""
            else:
                status, detail = "library missing", f"pip install {backplane.install_hint}"
            version = backplane.library_version()
            rows.append(EngineStatus(name, status, version, backplane.schemes, detail))
        for name in sorted(self._failures):
            if name.startswith(BACKPLANE_PLUGIN_PREFIX):
                failure = self._failures[name]
                shown = name[len(BACKPLANE_PLUGIN_PREFIX) :]
                rows.append(
                    EngineStatus(shown, "failed to load", None, frozenset(), failure.summary)
                )
        return rows

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
            if name.startswith(BACKPLANE_PLUGIN_PREFIX):
                continue
            failure = self._failures[name]
            rows.append(EngineStatus(name, "failed to load", None, frozenset(), failure.summary))
        return rows


def _check_engine(engine: object) -> None:
    for attribute in ("name", "library", "install_hint", "capabilities", "connect"):
        if not hasattr(engine, attribute):
            raise TypeError(f"{engine!r} is not an engine: it has no {attribute!r}")


def _check_backplane(backplane: object) -> None:
    for attribute in ("name", "schemes", "connect"):
        if not hasattr(backplane, attribute):
            raise TypeError(f"{backplane!r} is not a backplane: it has no {attribute!r}")


registry = EngineRegistry()
