"""The endpoint registry: a folder of ``*.websocket`` descriptors (SPEC section 4).

A descriptor is JSON: ``{"handler": "my-project/ws-handler", "endpoint": "my-endpoint",
"description": "My Websocket"}``. Handlers resolve against the registry folder. A broken
descriptor is reported as a :class:`DescriptorError` naming its file; it never stops the
others from being served. Of two descriptors claiming one endpoint name, the one already
serving it (on a reload: ``previous``) keeps it, else the first in path order; the error names
both files. Handler modules run at most ``import_timeout`` seconds (a hung one is a problem
of its descriptor), and module names (imported from ``sys.path``) are problems unless
``allow_modules``.

Optional fields: ``"max_connections": N`` (sessions at once), ``"origins"`` (a list of
``scheme://host[:port]`` or ``"*"``; replaces the server's list for this endpoint) and
``"roles"`` (a list of role names; a session needs an authenticated principal holding one of
them).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .auth import AccessConfigError, origin_list
from .errors import DescriptorError, HandlerNotFoundError
from .handlers import Handler, resolve_handler

log = logging.getLogger("polysocket.endpoints")

ENDPOINT_NAME = re.compile(r"[A-Za-z0-9._-]+")
DESCRIPTOR_SUFFIX = ".websocket"
#: Seconds a handler module may take to execute when the server loads it.
IMPORT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Handler
    description: str
    file: Path
    #: Allowed origins for this endpoint (normalised); ``None``: the server's list.
    origins: tuple[str, ...] | None = None
    #: A principal needs one of these roles; empty: no role needed.
    roles: frozenset[str] = frozenset()
    #: Sessions this endpoint takes at once (handshakes in progress included); ``None``: the
    #: server's limit only. More handshakes are refused with 503.
    max_connections: int | None = None


@dataclass(frozen=True)
class Scan:
    """One reading of the registry folder."""

    root: Path
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    problems: list[DescriptorError] = field(default_factory=list)


def descriptor_files(root: Path) -> list[Path]:
    found = []
    # onerror: a folder that cannot be read (EMFILE under load) is an error, not "no files"
    for folder, subfolders, files in os.walk(root, onerror=_raise):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder) / f for f in files if f.endswith(DESCRIPTOR_SUFFIX)]
    return sorted(found)


def scan(
    root: str | os.PathLike[str],
    *,
    previous: Scan | None = None,
    allow_modules: bool = True,
    import_timeout: float | None = None,
) -> Scan:
    """Read every descriptor under ``root``; never raises for a bad descriptor.

    With ``previous`` (a reload), an endpoint name it served stays with the descriptor file
    that declared it, if that file still does: a newer file claiming the name is the one
    reported as the duplicate, wherever it sorts."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DescriptorError(f"registry folder {root} does not exist or is not a folder")
    result = Scan(root)
    read: list[Endpoint] = []
    for path in descriptor_files(root):
        try:
            read.append(_read(path, root, allow_modules, import_timeout))
        except DescriptorError as problem:
            log.error("%s", problem)
            result.problems.append(problem)
    owners = {e.name: e.file for e in previous.endpoints.values()} if previous else {}
    # the current owners first (a stable sort: otherwise path order)
    for endpoint in sorted(read, key=lambda e: owners.get(e.name) != e.file):
        first = result.endpoints.get(endpoint.name)
        if first is not None:
            duplicate = DescriptorError(
                f"endpoint {endpoint.name!r} is declared twice: in {_shown(first.file, root)}"
                f" (served) and in {_shown(endpoint.file, root)} (ignored); rename one of them",
                files=(first.file, endpoint.file),
            )
            log.error("%s", duplicate)
            result.problems.append(duplicate)
            continue
        result.endpoints[endpoint.name] = endpoint
    # the listing and the page show the endpoints in path order, as before
    ordered = sorted(result.endpoints.values(), key=lambda e: e.file)
    result.endpoints.clear()
    result.endpoints.update((e.name, e) for e in ordered)
    return result


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _read(path: Path, root: Path, allow_modules: bool, import_timeout: float | None) -> Endpoint:
    shown = _shown(path, root)

    def problem(text: str) -> DescriptorError:
        return DescriptorError(f"{shown}: {text}", files=(path,))

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise problem(
            f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise problem(f"cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise problem('must be a JSON object like {"handler": ..., "endpoint": ...}')
    missing = [name for name in ("handler", "endpoint") if not data.get(name)]
    if missing:
        raise problem(f"missing field(s) {', '.join(missing)}")
    name, handler_spec = data["endpoint"], data["handler"]
    if not isinstance(name, str) or not ENDPOINT_NAME.fullmatch(name):
        raise problem(f"endpoint name {name!r} must match [A-Za-z0-9._-]+")
    if not isinstance(handler_spec, str):
        raise problem("handler must be a path string such as 'my-project/ws-handler'")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise problem("description must be a string")
    origins = None
    if "origins" in data:
        if not isinstance(data["origins"], list):
            raise problem('origins must be a list such as ["https://app.example.com"]')
        try:
            origins = origin_list(data["origins"], "origins")
        except AccessConfigError as exc:
            raise problem(str(exc)) from None
    roles = data.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise problem('roles must be a list of role names such as ["admin"]')
    limit = data.get("max_connections")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise problem(
            f"max_connections must be a positive integer (sessions at once), not {limit!r};"
            " leave it out for no limit of its own"
        )
    try:
        handler = resolve_handler(
            handler_spec, root=root, allow_modules=allow_modules, import_timeout=import_timeout
        )
    except HandlerNotFoundError as exc:
        raise problem(str(exc)) from exc
    return Endpoint(
        name, handler, description, path, origins, frozenset(roles), max_connections=limit
    )


def _raise(error: OSError) -> None:
    raise error


def snapshot(root: Path) -> dict[str, int]:
    """Modification times of every descriptor and Python file under ``root``."""
    times = {}
    for folder, subfolders, files in os.walk(root, onerror=_raise):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            if name.endswith((DESCRIPTOR_SUFFIX, ".py")):
                path = os.path.join(folder, name)
                try:
                    times[path] = os.stat(path).st_mtime_ns
                except OSError:
                    continue
    return times
