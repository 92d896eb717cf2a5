"""Checking user options against the common option set and the engine's capabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .errors import UnsupportedOptionError
from .transport import ClientOptions, Engine

_NAMES = tuple(f.name for f in fields(ClientOptions))


def client_options(engine: Engine, options: Mapping[str, Any]) -> ClientOptions:
    """Build :class:`ClientOptions` or raise :class:`UnsupportedOptionError` / ``TypeError``."""
    unknown = sorted(set(options) - set(_NAMES))
    if unknown:
        raise UnsupportedOptionError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; the options every engine"
            f" takes are: {', '.join(_NAMES)}"
        )
    for name in ("open_timeout", "close_timeout"):
        value = options.get(name, 10.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise TypeError(f"{name} must be a positive number of seconds, not {value!r}")
    max_size = options.get("max_size", 1)
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0
    ):
        raise TypeError(f"max_size must be a positive number of bytes or None, not {max_size!r}")
    headers = options.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise TypeError("headers must be a mapping of str to str")
    subprotocols = options.get("subprotocols") or ()
    if isinstance(subprotocols, str) or not all(isinstance(p, str) for p in subprotocols):
        raise TypeError("subprotocols must be a list of str, e.g. ['chat']")
    for name in ClientOptions.CAPABILITY_OPTIONS:
        if options.get(name) and name not in engine.capabilities:
            raise UnsupportedOptionError(
                f"engine {engine.name!r} cannot honour {name}=; pick an engine that declares"
                f" the {name!r} capability (see `polysocket engines`) or drop the option"
            )
    values = dict(options)
    values["headers"] = dict(headers)
    values["subprotocols"] = tuple(subprotocols)
    return ClientOptions(**values)
