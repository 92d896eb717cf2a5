"""Echo peer on the raw ``websockets`` library (asyncio server), not on polysocket.

Started by the conformance suite as a subprocess: ``python websockets_peer.py [--port N]``.
It prints ``PORT <n>`` on its first stdout line, then serves until stdin closes or it is
terminated. The command protocol (same as ``ws_peer.js``), on any path:

- every text or binary message is echoed back unchanged, except text starting with ``cmd:``;
- ``cmd:close:<code>:<reason>``  close the connection with that code and reason;
- ``cmd:big:<n>``                send one binary message of n bytes;
- ``cmd:kill``                   drop the TCP connection without a close frame;
- ``cmd:headers``                reply with JSON of the handshake request headers (lower-case);
- ``cmd:subprotocol``            reply with the negotiated subprotocol, or "";
- ``cmd:last-close``             reply with JSON ``{"code", "reason", "messages"}`` of the most
  recent other connection that ended here (close frame received from the client; 1006/null
  when none arrived; ``messages``: how many non-command messages it had received). Waits
  (up to 3 s) for the connections opened before this one to end first, so the answer is
  deterministic right after a client's ``close()`` returns;
- ``cmd:burst:<n>``              send n text messages "0", "1", ... as fast as possible;
- ``cmd:frag:<n>``               send one text message "0;1;...;n-1;" in n fragments.

A handshake on path ``/reject`` is refused with HTTP 404. Messages of up to 64 MiB are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

MAX_SIZE = 64 * 1024 * 1024
ABNORMAL = 1006

serials = itertools.count(1)
live: dict[int, asyncio.Event] = {}
last_close: dict[str, object] = {"code": ABNORMAL, "reason": None, "messages": 0}


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.path.split("?", 1)[0] == "/reject":
        return connection.respond(HTTPStatus.NOT_FOUND, "rejected by the conformance peer\n")
    return None


def select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    return subprotocols[0] if subprotocols else None


async def handler(ws: ServerConnection) -> None:
    serial = next(serials)
    ended = asyncio.Event()
    live[serial] = ended
    received = 0
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("cmd:"):
                await command(ws, serial, message)
            else:
                received += 1
                # Keep reading after a close: messages that arrived before it still count.
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        close = ws.protocol.close_rcvd
        last_close.update(
            code=close.code if close is not None else ABNORMAL,
            reason=close.reason if close is not None else None,
            messages=received,
        )
        del live[serial]
        ended.set()


async def command(ws: ServerConnection, serial: int, text: str) -> None:
    _, name, *args = text.split(":", 3) if text.startswith("cmd:close:") else text.split(":")
    if name == "close":
        code = int(args[0])
        reason = args[1] if len(args) > 1 else ""
        await ws.close(code, reason)
    elif name == "big":
        await ws.send(b"x" * int(args[0]))
    elif name == "kill":
        ws.transport.abort()
    elif name == "headers":
        headers: dict[str, str] = {}
        # A handler runs after the opening handshake, so the request is there.
        assert ws.request is not None
        for key, value in ws.request.headers.raw_items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        await ws.send(json.dumps(headers))
    elif name == "subprotocol":
        await ws.send(ws.subprotocol or "")
    elif name == "last-close":
        earlier = [event.wait() for other, event in live.items() if other < serial]
        if earlier:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*earlier), 3)
        await ws.send(json.dumps(last_close))
    elif name == "burst":
        for i in range(int(args[0])):
            await ws.send(str(i))
    elif name == "frag":
        await ws.send([f"{i};" for i in range(int(args[0]))])
    else:
        await ws.send(f"unknown command {text!r}")


def exit_when_stdin_closes() -> None:
    """Die with the test session even when it could not terminate us (e.g. it was killed)."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        os._exit(0)


async def main() -> None:
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0
    async with serve(
        handler,
        "127.0.0.1",
        port,
        max_size=MAX_SIZE,
        compression=None,
        ping_interval=None,
        # No read pausing: with it, websockets stops reading while many messages are queued
        # and only notices the client's TCP close after close_timeout (10 s). (None means
        # the same from websockets 15 on; 14 takes only a number.)
        max_queue=1 << 30,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
    ) as server:
        sockets = list(server.sockets)
        print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    if "--no-stdin-watch" not in sys.argv:
        threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    asyncio.run(main())
