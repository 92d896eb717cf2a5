"""Checking user options against the common option set and the engine's capabilities."""

from __future__ import annotations

import socket
import ssl as ssl_module
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from . import proxies
from .errors import UnsupportedOptionError
from .reconnect import reconnect_policy
from .transport import ClientOptions, Engine, ServerOptions

#: Option -> the engine capability it needs when set to something other than its default
#: (keepalive is on by default on both sides, and an engine without it, such as the
#: in-memory one, still connects and serves with that default, which it cannot honour).
CAPABILITY_OF_OPTION: dict[str, str] = {
    "headers": "headers",
    "subprotocols": "subprotocols",
    "compression": "deflate",
    "ping_interval": "keepalive",
    "ping_timeout": "keepalive",
    "ssl": "tls",
    "proxy": "proxy",  # a URL; one from the environment is proxies.select_proxy's to judge
    "reuse_port": "reuse_port",
}

Options = TypeVar("Options", ClientOptions, ServerOptions)


def client_options(engine: Engine, options: Mapping[str, Any]) -> ClientOptions:
    """Build :class:`ClientOptions` or raise :class:`UnsupportedOptionError` / ``TypeError``."""
    if "sock" in options:
        raise UnsupportedOptionError(
            "sock= is not an option: polysocket sets it itself, to the proxy's tunnel; pass"
            " proxy='http://host:port' (or socks5://...) to connect through a proxy"
        )
    values = _checked(engine, ClientOptions, options, ())
    values["proxy"] = proxies.check_option(values.get("proxy", True))
    headers = values.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise TypeError("headers must be a mapping of str to str")
    values["headers"] = dict(headers)
    values["subprotocols"] = _strings("subprotocols", values.get("subprotocols"))
    values["reconnect"] = reconnect_policy(values.get("reconnect"))
    _check_capabilities(engine, ClientOptions, values)
    return ClientOptions(**values)


def server_options(
    engine: Engine, options: Mapping[str, Any]
) -> tuple[ServerOptions, tuple[str, ...]]:
    """Build :class:`ServerOptions`; ``subprotocols`` are the ones the server may select."""
    values = _checked(engine, ServerOptions, options, ("subprotocols",))
    subprotocols = _strings("subprotocols", values.pop("subprotocols", None))
    _check_capabilities(engine, ServerOptions, values)
    return ServerOptions(**values), subprotocols


def _check_capabilities(engine: Engine, kind: type[Options], options: Mapping[str, Any]) -> None:
    defaults = {f.name: f.default for f in fields(kind)}
    for name, capability in CAPABILITY_OF_OPTION.items():
        value = options.get(name)
        if value and value != defaults.get(name) and capability not in engine.capabilities:
            raise UnsupportedOptionError(
                f"engine {engine.name!r} cannot honour {name}= (it lacks the {capability!r}"
                " capability; see `polysocket engines`); pick another engine or drop it"
            )


def _strings(name: str, value: Any) -> tuple[str, ...]:
    value = value or ()
    if isinstance(value, str) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{name} must be a list of str, e.g. ['chat']")
    return tuple(value)


def _checked(
    engine: Engine, kind: type[Options], options: Mapping[str, Any], extra: tuple[str, ...]
) -> dict[str, Any]:
    names = [f.name for f in fields(kind)] + list(extra)
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UnsupportedOptionError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; the options every engine"
            f" takes are: {', '.join(names)}"
        )
    for name in ("open_timeout", "close_timeout", "send_timeout"):
        value = options.get(name, 10.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise TypeError(f"{name} must be a positive number of seconds, not {value!r}")
    for name in ("ping_interval", "ping_timeout"):
        value = options.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise TypeError(f"{name} must be a positive number of seconds or None, not {value!r}")
    max_size = options.get("max_size", 1)
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0
    ):
        raise TypeError(f"max_size must be a positive number of bytes or None, not {max_size!r}")
    limit = options.get("max_connections")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise TypeError(f"max_connections must be a positive int or None, not {limit!r}")
    backlog = options.get("backlog", 1)
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog <= 0:
        raise TypeError(f"backlog must be a positive int (queued connections), not {backlog!r}")
    for name in ("max_queue", "write_limit"):
        value = options.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TypeError(f"{name} must be a positive number of bytes, not {value!r}")
    if options.get("compression") not in (None, "deflate"):
        raise UnsupportedOptionError(
            f"compression={options['compression']!r}: use 'deflate' (permessage-deflate) or None"
        )
    reuse_port = options.get("reuse_port", False)
    if not isinstance(reuse_port, bool):
        raise TypeError(f"reuse_port must be True or False, not {reuse_port!r}")
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise UnsupportedOptionError(
            "reuse_port=True: this operating system has no SO_REUSEPORT, so processes cannot"
            " share a listening port; run one server per port behind a load balancer instead"
        )
    tls = options.get("ssl")
    if tls is not None and not isinstance(tls, ssl_module.SSLContext):
        raise TypeError("ssl must be an ssl.SSLContext")
    return dict(options)
