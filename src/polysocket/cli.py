"""The ``polysocket`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .cluster import DEFAULT_PRESENCE_EXPIRY, cluster_name
from .context import get_close_code, get_close_reason, get_session
from .errors import ConnectionClosedError, WebsocketError
from .plugins import EngineStatus, registry

#: ``connect`` waits this long after the last reply before closing at the end of its input.
REPLY_GRACE = 0.5


def _engines(args: argparse.Namespace) -> int:
    # Plugin failures are rows of the table; the log line would only repeat them.
    logging.getLogger("polysocket.plugins").setLevel(logging.ERROR)
    rows = registry.statuses()
    if not rows:
        print("no engines installed: pip install polysocket")
        return 1
    _print_rows(rows)
    return 0


def _backplanes(args: argparse.Namespace) -> int:
    logging.getLogger("polysocket.plugins").setLevel(logging.ERROR)
    rows = registry.backplane_statuses()
    if not rows:
        print("no backplanes installed: pip install polysocket")
        return 1
    _print_rows(rows, lambda schemes: ",".join(f"{s}://" for s in sorted(schemes)))
    return 0


def _print_rows(
    rows: Sequence[EngineStatus],
    show: Callable[[frozenset[str]], str] = lambda names: ",".join(sorted(names)),
) -> None:
    width = max(len(row.name) for row in rows)
    for row in rows:
        version = row.version or "-"
        capabilities = show(row.capabilities) or "-"
        line = f"{row.name:<{width}}  {row.status:<15}  {version:<10}  {capabilities}"
        if row.detail:
            line += f"  ({row.detail})"
        print(line)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logging.getLogger("polysocket").setLevel(logging.INFO)
    return run_demo(args.engine)


def _serve(args: argparse.Namespace) -> int:
    from .auth import TOKENS_ENV, bearer_tokens
    from .server import run_server
    from .workers import check_workers, run_workers, watch_supervisor, worker_number

    logging.getLogger("polysocket").setLevel(logging.INFO)
    try:
        cluster_name(args.cluster)  # --cluster, else $POLYSOCKET_CLUSTER
    except ValueError as exc:
        print(f"polysocket: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        check_workers(args.workers, args.backplane, args.engine, args.cluster)
        return run_workers(
            args.argv, args.workers, args.host, args.port, close_timeout=args.close_timeout
        )
    if worker_number() is not None:
        watch_supervisor()
    authenticate = None
    sources = [args.tokens] if args.tokens is not None else []
    if os.environ.get(TOKENS_ENV, "").strip():
        sources.append(f"${TOKENS_ENV}")
    if sources:  # either one turns token checking on; bearer_tokens reads both
        authenticate = bearer_tokens(args.tokens)
        logging.getLogger("polysocket.auth").info(
            "%d bearer token(s) from %s", len(authenticate), " and ".join(sources)
        )
    options: dict[str, object] = {"open_timeout": args.open_timeout}
    if args.max_connections is not None:
        options["max_connections"] = args.max_connections
    if args.backlog is not None:
        options["backlog"] = args.backlog
    if args.reuse_port:
        options["reuse_port"] = True
    run_server(
        args.root,
        host=args.host,
        port=args.port,
        engine=args.engine,
        origins=args.origins,
        authenticate=authenticate,
        debug=args.debug,
        close_timeout=args.close_timeout,
        allow_module_handlers=args.allow_module_handlers,
        import_timeout=args.import_timeout,
        backplane=args.backplane,
        cluster=args.cluster,
        presence_expiry=args.presence_expiry,
        **options,
    )
    return 0


class _Printer:
    """The handler of ``polysocket connect`` without ``--handler``: print what arrives."""

    def __init__(self) -> None:
        self.last_message = time.monotonic()

    def onOpen(self) -> None:
        print(f"connected (engine {get_session().engine}); type lines to send, Ctrl-D to close")

    def onMessage(self, message: str | bytes) -> None:
        self.last_message = time.monotonic()
        print(f"< {message!r}" if isinstance(message, bytes) else f"< {message}", flush=True)

    def onError(self, error: str) -> None:
        print(f"! {error}", file=sys.stderr, flush=True)

    def onClose(self) -> None:
        print(f"closed: {get_close_code()} {get_close_reason() or ''}".rstrip(), flush=True)


def _header(text: str) -> tuple[str, str]:
    """An argparse type: ``Name: value`` (as curl's ``-H`` and wscat's ``-H``)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a header; write it as 'Name: value'")
    return name.strip(), value.strip()


def _seconds_or_off(text: str) -> float | None:
    """An argparse type: a positive number of seconds, or ``off``."""
    if text.lower() in ("off", "none"):
        return None
    return float(_positive(float)(text))


def client_options_from(args: argparse.Namespace) -> dict[str, Any]:
    """``polysocket connect``'s flags as ``createWebsocket`` options (only those given)."""
    options: dict[str, Any] = {}
    headers = dict(args.header or ())
    if args.origin is not None:
        headers["Origin"] = args.origin
    if headers:
        options["headers"] = headers
    if args.subprotocol:
        options["subprotocols"] = list(args.subprotocol)
    if args.proxy is not None:
        options["proxy"] = None if args.proxy.lower() in ("none", "off", "direct") else args.proxy
    if args.insecure or args.cafile:
        import ssl

        context = ssl.create_default_context(cafile=args.cafile)
        if args.insecure:  # wscat's --no-check, websocat's -k: for a test server's own cert
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        options["ssl"] = context
    if args.ping_interval is not False:
        options["ping_interval"] = args.ping_interval
    if args.reconnect:
        options["reconnect"] = True
    return options


def _connect(args: argparse.Namespace) -> int:
    from .client import create_websocket

    printer = _Printer()
    try:
        options = client_options_from(args)
        client = create_websocket(args.uri, args.handler or printer, args.engine, **options)
    except (WebsocketError, TypeError, OSError) as exc:  # a bad option, a missing --cafile
        print(f"polysocket: {exc}", file=sys.stderr)
        return 1
    try:
        for line in sys.stdin:
            if client.closed:
                break
            try:
                client.send(line.rstrip("\n"))
            except ConnectionClosedError as exc:  # reconnecting (--reconnect): go on
                if client.closed:
                    break
                print(f"! not sent: {exc}", file=sys.stderr, flush=True)
        # At the end of the input, give the replies to the last lines a moment to arrive.
        printer.last_message = time.monotonic()
        while not client.closed and time.monotonic() - printer.last_message < REPLY_GRACE:
            time.sleep(0.05)
    except (KeyboardInterrupt, WebsocketError):
        pass
    client.close()
    return 0


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` above 0 (else a usage error, not a traceback)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polysocket", description="The Dirigible WebSocket API over several engines."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    engines = commands.add_parser(
        "engines", help="list engines: library version, capabilities, status"
    )
    engines.set_defaults(run=_engines)
    backplanes = commands.add_parser(
        "backplanes", help="list cluster backplanes: library version, URL schemes, status"
    )
    backplanes.set_defaults(run=_backplanes)
    demo = commands.add_parser(
        "demo", help="run the Dirigible seed's client example against a local echo peer"
    )
    demo.add_argument("--engine", help="engine to use (default: $POLYSOCKET_ENGINE or aiohttp)")
    demo.set_defaults(run=_demo)
    serve = commands.add_parser("serve", help="serve a folder of *.websocket endpoint descriptors")
    serve.add_argument(
        "root", nargs="?", help="registry folder (default: the bundled sample registry)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--engine", help="engine to serve with (default: aiohttp)")
    serve.add_argument(
        "--origin",
        action="append",
        dest="origins",
        metavar="URL",
        help="an origin (scheme://host[:port], or '*') whose pages may connect; repeatable"
        " (default: any origin; the server's own page always may)",
    )
    serve.add_argument(
        "--tokens",
        metavar="FILE",
        help="require a bearer token: lines 'TOKEN NAME [ROLE,ROLE]' (also read from"
        " $POLYSOCKET_TOKENS, which alone turns this on)",
    )
    serve.add_argument(
        "--debug",
        action="store_true",
        help="show handler specs, descriptor files and problems to HTTP clients",
    )
    serve.add_argument(
        "--close-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="closing handshake bound; SIGTERM exits within about this plus 1 s (default: 10)",
    )
    serve.add_argument(
        "--allow-module-handlers",
        action="store_true",
        help="serve handlers named as Python modules (imported from sys.path, outside ROOT)",
    )
    serve.add_argument(
        "--import-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a handler module not loaded within this is a descriptor problem (default: 5)",
    )
    serve.add_argument(
        "--open-timeout",
        type=_positive(float),
        default=10.0,
        help="seconds a connection gets to complete its handshake or request (default: 10)",
    )
    serve.add_argument(
        "--max-connections",
        type=_positive(int),
        help="WebSocket connections at once; more get 503 (default: no limit)",
    )
    serve.add_argument(
        "--backlog",
        type=_positive(int),
        help="connections the kernel queues before they are accepted (default: 2048,"
        " capped by net.core.somaxconn)",
    )
    serve.add_argument(
        "--backplane",
        metavar="URL",
        help="the broker linking the servers of a cluster, e.g. redis://127.0.0.1:6379/0"
        " (default: $POLYSOCKET_BACKPLANE, else memory://: this process only)",
    )
    serve.add_argument(
        "--cluster",
        metavar="NAME",
        help="the cluster's name, the prefix of its channels on the broker (default:"
        " $POLYSOCKET_CLUSTER, else polysocket)",
    )
    serve.add_argument(
        "--presence-expiry",
        type=_positive(float),
        default=DEFAULT_PRESENCE_EXPIRY,
        metavar="SECONDS",
        help="a cluster node not heard from for this long is dropped with its sessions"
        f" (default: {DEFAULT_PRESENCE_EXPIRY:g})",
    )
    serve.add_argument(
        "--workers",
        type=_positive(int),
        default=1,
        metavar="N",
        help="N worker processes sharing the port (SO_REUSEPORT), restarted when they crash;"
        " N > 1 needs a backplane such as --backplane redis://HOST:6379/0 (default: 1, this"
        " process serves)",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so that other processes doing so share the port"
        " (what --workers does for its workers)",
    )
    serve.set_defaults(run=_serve)
    connect = commands.add_parser(
        "connect", help="an interactive client: stdin lines are sent, messages printed"
    )
    connect.add_argument("uri")
    connect.add_argument("--handler", help="a handler path or module instead of printing")
    connect.add_argument("--engine", help="engine to connect with (default: aiohttp)")
    connect.add_argument(
        "-H", "--header", action="append", type=_header, help="'Name: value'; repeatable"
    )
    connect.add_argument("--origin", help="the Origin header to send (as a browser page would)")
    connect.add_argument(
        "--subprotocol", action="append", help="a subprotocol to offer; repeatable, in order"
    )
    connect.add_argument(
        "--proxy",
        help="http://, socks5://, socks5h:// or socks4:// proxy URL; 'none' to connect"
        " directly (default: the https_proxy / http_proxy / all_proxy variables)",
    )
    connect.add_argument(
        "-k", "--insecure", action="store_true", help="wss://: do not verify the certificate"
    )
    connect.add_argument("--cafile", help="wss://: verify the server with these CA certificates")
    connect.add_argument(
        "--ping-interval",
        type=_seconds_or_off,
        default=False,
        metavar="SECONDS|off",
        help="seconds between keepalive pings, or 'off' (default: 20)",
    )
    connect.add_argument(
        "--reconnect",
        action="store_true",
        help="after a lost connection, reconnect with backoff (lines typed meanwhile wait up"
        " to send_timeout, then are refused)",
    )
    connect.set_defaults(run=_connect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .workers import worker_number

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --workers to start workers
    number = worker_number()
    prefix = f"worker {number}: " if number is not None else ""
    logging.basicConfig(level=logging.WARNING, format=prefix + "%(name)s: %(message)s")
    try:
        return int(args.run(args))
    except WebsocketError as exc:
        print(f"polysocket: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
