"""The mutants: each class is the aiohttp engine with the one bug its docstring names.

``first`` names the conformance test modules run first against the mutant (the ones most
likely to catch that bug); the others follow in alphabetical order.
"""

from __future__ import annotations

import dataclasses

from polysocket.transport import (
    Accept,
    HttpRequest,
    Message,
    MessageTooBigError,
    ServerOptions,
    Transport,
    TransportClosed,
)

from . import (
    Decision,
    Listening,
    LookaheadTransport,
    MutantEngine,
    Options,
    Side,
    TransportProxy,
)

__all__ = [
    "ENGINES",
    "MUTANTS",
    "AbortDoesNothing",
    "BinaryAsStr",
    "CloseCode1000",
    "CloseFrameAlways1000",
    "CloseReasonDropped",
    "Control",
    "HeadersNotSent",
    "LastMessageBeforeCloseLost",
    "LateMessagesDropped",
    "LostConnectionAs1000",
    "MaxSizeIgnored",
    "PairsSwapped",
    "PingTimeoutIgnored",
    "ProxyTunnelIgnored",
    "RemoteAddressIsServer",
    "RepeatedHeadersLast",
    "ServerLosesEvery50th",
    "ServerSelectsNoSubprotocol",
    "SubprotocolNone",
    "SubprotocolsReversed",
    "TextAsBytes",
    "TooBigErrorUnset",
    "TruncatedOver64K",
]


# -- messages after our close frame --------------------------------------------------------


class _DropsAfterOurClose(TransportProxy):
    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self._close_called = False

    async def close(self, code: int, reason: str) -> None:
        self._close_called = True
        await self.inner.close(code, reason)

    async def receive(self) -> Message:
        while True:
            message = await self.inner.receive()
            if not self._close_called:
                return message


class LateMessagesDropped(MutantEngine):
    """Messages that arrive after our close frame (and before the peer's) are discarded.

    The contract says they are still returned to a pending ``receive()``.
    """

    name = "mutant-late-messages-dropped"
    first = ("test_closing_handshake",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _DropsAfterOurClose(transport)


# -- keepalive -------------------------------------------------------------------------------


class PingTimeoutIgnored(MutantEngine):
    """``ping_timeout`` is ignored: the engine gets the options with ``ping_timeout=None``,
    so it waits the library's default for the pong (``ping_interval``)."""

    name = "mutant-ping-timeout-ignored"
    first = ("test_options",)

    def options(self, options: Options) -> Options:
        return dataclasses.replace(options, ping_timeout=None)


# -- what the server tells the core about a request -----------------------------------------


class RemoteAddressIsServer(MutantEngine):
    """On the server, ``remote_address`` is the server's own address (the listening
    socket's host and port), not the client's."""

    name = "mutant-remote-address-is-server"
    first = ("test_handshake",)

    def request(self, request: HttpRequest, listening: Listening) -> HttpRequest:
        return dataclasses.replace(request, remote_address=(listening.host, listening.port))


class SubprotocolsReversed(MutantEngine):
    """The subprotocols the client offered reach the core reversed
    (``HttpRequest.subprotocols`` in the opposite of the client's order)."""

    name = "mutant-subprotocols-reversed"
    first = ("test_handshake",)

    def request(self, request: HttpRequest, listening: Listening) -> HttpRequest:
        return dataclasses.replace(request, subprotocols=tuple(reversed(request.subprotocols)))


#: Headers whose one value may itself contain commas (dates, product comments): a comma in
#: them does not show that several header lines were joined.
COMMAS_IN_ONE_VALUE = frozenset(
    {
        "date",
        "expires",
        "if-modified-since",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "retry-after",
        "set-cookie",
        "user-agent",
    }
)


class RepeatedHeadersLast(MutantEngine):
    """Of a repeated request header only the last value is kept (``X: a`` then ``X: b``
    reaches the core as ``b``, not ``a, b``).

    Simulated on the joined value the engine hands over: a header holding a comma-separated
    list keeps only its last element (except headers whose single value may hold commas).
    """

    name = "mutant-repeated-headers-last"
    first = ("test_handshake",)

    def request(self, request: HttpRequest, listening: Listening) -> HttpRequest:
        headers = {
            name: value
            if name in COMMAS_IN_ONE_VALUE or "," not in value
            else value.rsplit(",", 1)[1].strip()
            for name, value in request.headers.items()
        }
        return dataclasses.replace(request, headers=headers)


class ServerSelectsNoSubprotocol(MutantEngine):
    """The server completes every handshake without the subprotocol the core selected."""

    name = "mutant-server-selects-no-subprotocol"
    first = ("test_options",)

    def decision(self, decision: Decision) -> Decision:
        if isinstance(decision, Accept):
            return dataclasses.replace(decision, subprotocol=None)
        return decision


# -- lost messages -----------------------------------------------------------------------------


class _LosesEvery50th(TransportProxy):
    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self._count = 0

    async def receive(self) -> Message:
        while True:
            message = await self.inner.receive()
            self._count += 1
            if self._count % 50:
                return message


class ServerLosesEvery50th(MutantEngine):
    """The server loses every 50th message it receives on a connection."""

    name = "mutant-server-loses-every-50th"
    first = ("test_server",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _LosesEvery50th(transport) if side == "server" else transport


class _LastBeforeCloseLost(LookaheadTransport):
    async def lookahead(self) -> Message:
        message = await self.take()
        after = await self.peek()
        if isinstance(after, TransportClosed) and after.code is not None and not after.error:
            raise after
        return message


class LastMessageBeforeCloseLost(MutantEngine):
    """The last message before the peer's close frame is lost, when both arrive together
    (within 20 ms): the close frame wins."""

    name = "mutant-last-message-before-close-lost"
    first = ("test_asyncio_api", "test_client_errors")

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _LastBeforeCloseLost(transport)


class _SwapsPairs(LookaheadTransport):
    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self._held: list[Message] = []

    async def lookahead(self) -> Message:
        if self._held:
            return self._held.pop()
        first = await self.take()
        after = await self.peek()
        if after is not None and not isinstance(after, Exception):
            self.consume()
            self._held.append(first)
            return after
        return first


class PairsSwapped(MutantEngine):
    """``receive()`` returns messages out of order: of two that arrive together (within
    20 ms), the second comes first."""

    name = "mutant-pairs-swapped"
    first = ("test_asyncio_api", "test_client_messages")

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _SwapsPairs(transport)


# -- message types and sizes ---------------------------------------------------------------


class _TextAsBytes(TransportProxy):
    async def receive(self) -> Message:
        message = await self.inner.receive()
        return message.encode() if isinstance(message, str) else message


class TextAsBytes(MutantEngine):
    """A text message is delivered as ``bytes`` (its UTF-8), not ``str``."""

    name = "mutant-text-as-bytes"
    first = ("test_asyncio_api",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _TextAsBytes(transport)


class _BinaryAsStr(TransportProxy):
    async def receive(self) -> Message:
        message = await self.inner.receive()
        return message.decode("latin-1") if isinstance(message, bytes) else message


class BinaryAsStr(MutantEngine):
    """A binary message is delivered as ``str`` (decoded as Latin-1), not ``bytes``."""

    name = "mutant-binary-as-str"
    first = ("test_asyncio_api",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _BinaryAsStr(transport)


class _Truncates(TransportProxy):
    LIMIT = 64 * 1024

    async def receive(self) -> Message:
        return (await self.inner.receive())[: self.LIMIT]


class TruncatedOver64K(MutantEngine):
    """A received message over 64 KiB is cut to its first 65,536 bytes (characters, for
    text)."""

    name = "mutant-truncated-over-64k"
    first = ("test_client_messages",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _Truncates(transport)


class MaxSizeIgnored(MutantEngine):
    """``max_size`` is ignored on receive: the engine gets ``max_size=None`` (no limit), so
    an oversized message is delivered instead of failing the connection with 1009."""

    name = "mutant-max-size-ignored"
    first = ("test_asyncio_api",)

    def options(self, options: Options) -> Options:
        return dataclasses.replace(options, max_size=None)


class _TooBigUnreported(TransportProxy):
    async def receive(self) -> Message:
        try:
            return await self.inner.receive()
        except TransportClosed as closed:
            if isinstance(closed.error, MessageTooBigError):
                raise TransportClosed(closed.code, closed.reason) from None
            raise


class TooBigErrorUnset(MutantEngine):
    """An oversized message ends the connection with 1009 but without the
    ``MessageTooBigError`` on ``TransportClosed.error``: no ``onError``."""

    name = "mutant-too-big-error-unset"
    first = ("test_client_errors",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _TooBigUnreported(transport)


# -- close codes and reasons --------------------------------------------------------------


class _ReportsClose(TransportProxy):
    """Rewrites the ``TransportClosed`` that ``receive()`` raises."""

    def ended(self, closed: TransportClosed) -> TransportClosed:
        return closed

    async def receive(self) -> Message:
        try:
            return await self.inner.receive()
        except TransportClosed as closed:
            reported = self.ended(closed)
            if reported is closed:
                raise
            raise reported from None


class _Code1000(_ReportsClose):
    def ended(self, closed: TransportClosed) -> TransportClosed:
        if closed.code is None or closed.error is not None:
            return closed
        return TransportClosed(1000, closed.reason)


class CloseCode1000(MutantEngine):
    """The peer's close code is reported as 1000 whatever it sent."""

    name = "mutant-close-code-1000"
    first = ("test_asyncio_api",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _Code1000(transport)


class _ReasonDropped(_ReportsClose):
    def ended(self, closed: TransportClosed) -> TransportClosed:
        if not closed.reason:
            return closed
        return TransportClosed(closed.code, "", error=closed.error)


class CloseReasonDropped(MutantEngine):
    """The peer's close reason is dropped: always reported as ``""``."""

    name = "mutant-close-reason-dropped"
    first = ("test_asyncio_api",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _ReasonDropped(transport)


class _LostAs1000(_ReportsClose):
    def ended(self, closed: TransportClosed) -> TransportClosed:
        if closed.code is not None or closed.error is not None:
            return closed
        return TransportClosed(1000, closed.reason)


class LostConnectionAs1000(MutantEngine):
    """A connection lost without a close frame (EOF) is reported as a normal close, 1000,
    instead of ``TransportClosed(None)`` (1006)."""

    name = "mutant-lost-connection-as-1000"
    first = ("test_asyncio_api",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _LostAs1000(transport)


class _Closes1000(TransportProxy):
    async def close(self, code: int, reason: str) -> None:
        await self.inner.close(1000, "")


class CloseFrameAlways1000(MutantEngine):
    """``close(code, reason)`` ignores its arguments: the close frame always says 1000 with
    no reason."""

    name = "mutant-close-frame-always-1000"
    first = ("test_asyncio_api",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _Closes1000(transport)


class _NoAbort(TransportProxy):
    def abort(self) -> None:
        pass


class AbortDoesNothing(MutantEngine):
    """``abort()`` does nothing: the connection stays up."""

    name = "mutant-abort-does-nothing"
    first = ("test_client_errors",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _NoAbort(transport)


# -- handshake options ----------------------------------------------------------------------


class HeadersNotSent(MutantEngine):
    """The client's ``headers`` option is not sent."""

    name = "mutant-headers-not-sent"
    first = ("test_asyncio_api",)

    def options(self, options: Options) -> Options:
        if isinstance(options, ServerOptions):
            return options  # a server has no headers to send
        return dataclasses.replace(options, headers={})


class ProxyTunnelIgnored(MutantEngine):
    """The proxy's tunnel (``ClientOptions.sock``) is not used: the client connects to the
    server by itself, around the proxy."""

    name = "mutant-proxy-tunnel-ignored"
    first = ("test_proxy",)

    def options(self, options: Options) -> Options:
        if isinstance(options, ServerOptions) or options.sock is None:
            return options
        options.sock.close()
        return dataclasses.replace(options, sock=None)


class _NoSubprotocol(TransportProxy):
    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.subprotocol = None


class SubprotocolNone(MutantEngine):
    """The transport reports no subprotocol (``None``) although the server selected one."""

    name = "mutant-subprotocol-none"
    first = ("test_asyncio_api",)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _NoSubprotocol(transport)


MUTANTS: tuple[type[MutantEngine], ...] = (
    LateMessagesDropped,
    PingTimeoutIgnored,
    RemoteAddressIsServer,
    SubprotocolsReversed,
    ServerLosesEvery50th,
    RepeatedHeadersLast,
    TextAsBytes,
    BinaryAsStr,
    CloseCode1000,
    CloseReasonDropped,
    CloseFrameAlways1000,
    LostConnectionAs1000,
    MaxSizeIgnored,
    TooBigErrorUnset,
    HeadersNotSent,
    ProxyTunnelIgnored,
    LastMessageBeforeCloseLost,
    AbortDoesNothing,
    SubprotocolNone,
    ServerSelectsNoSubprotocol,
    TruncatedOver64K,
    PairsSwapped,
)


# -- the control ----------------------------------------------------------------------------


class _LooksAheadOnly(LookaheadTransport):
    async def lookahead(self) -> Message:
        message = await self.take()
        await self.peek()
        return message


class Control(MutantEngine):
    """No bug: every hook of the other mutants in place, passing everything on unchanged
    (options copied, requests rebuilt, decisions and the transport wrapped, the next
    event looked at before a message is returned). The suite must pass against it: what
    kills a mutant is its bug, not the wrapping."""

    name = "mutants-control"

    def options(self, options: Options) -> Options:
        return dataclasses.replace(options)

    def transport(self, transport: Transport, side: Side) -> Transport:
        return _LooksAheadOnly(transport)

    def request(self, request: HttpRequest, listening: Listening) -> HttpRequest:
        return dataclasses.replace(request, headers=dict(request.headers))

    def decision(self, decision: Decision) -> Decision:
        return dataclasses.replace(decision)


#: Every engine of the distribution: the control first, then the mutants.
ENGINES: tuple[type[MutantEngine], ...] = (Control, *MUTANTS)
