"""Origins, authentication, roles and bearer tokens: the checks before the 101."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

import polysocket
from polysocket import hookimpl
from polysocket.auth import (
    AccessConfigError,
    Admitted,
    BearerTokens,
    Gate,
    Handshake,
    OriginPolicy,
    Principal,
    Refused,
    bearer_tokens,
    is_loopback,
    normalize_origin,
    origin_list,
    parse_tokens,
)
from polysocket.endpoints import scan
from polysocket.plugins import registry
from polysocket.server import EndpointServer
from polysocket.testing import MemoryEngine, install
from polysocket.transport import HttpRequest, HttpResponse, ServerOptions

SERVICE = "/websockets/v4/service/"

HANDLER = """
import polysocket

def onOpen():
    principal = polysocket.getSession().principal
    polysocket.getSession().send(repr(principal))
"""


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario, 15)

    asyncio.run(bounded())


def handshake_request(
    headers: dict[str, str] | None = None, query: str = "", path: str = SERVICE + "echo"
) -> HttpRequest:
    fields = {"host": "127.0.0.1:8080", **(headers or {})}
    return HttpRequest("GET", path, query, fields, ("127.0.0.1", 5000), True)


# -- bearer tokens --------------------------------------------------------------------------


def test_token_lines_give_principals_with_roles() -> None:
    text = "# a comment\n\ns3cret alice admin,ops\n  t0ken   bob  \n"
    assert parse_tokens(text, "tokens.txt") == {
        "s3cret": Principal("alice", frozenset({"admin", "ops"})),
        "t0ken": Principal("bob", frozenset()),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lonely\n", "tokens.txt:1: expected 'TOKEN NAME [ROLE,ROLE]', got 1 field"),
        ("a b c d\n", "tokens.txt:1: expected 'TOKEN NAME [ROLE,ROLE]', got 4 field"),
        ("same alice\nsame bob\n", "tokens.txt:2: this token is already given"),
    ],
)
def test_malformed_token_lines_name_the_line_and_never_the_token(text: str, message: str) -> None:
    with pytest.raises(AccessConfigError) as info:
        parse_tokens(text, "tokens.txt")
    assert message in str(info.value)
    assert "lonely" not in str(info.value) and "same" not in str(info.value)


def test_bearer_tokens_read_the_file_and_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("from-file alice admin\n")
    env = {"POLYSOCKET_TOKENS": "from-env bob; other carol ops"}
    check = bearer_tokens(file, environ=env)
    assert len(check) == 3
    assert check(Handshake.of(handshake_request({"authorization": "Bearer from-env"}), "e")) == (
        Principal("bob")
    )
    only_env = bearer_tokens(environ=env)
    assert len(only_env) == 2
    with pytest.raises(AccessConfigError, match="no bearer tokens found in \\$POLYSOCKET_TOKENS"):
        bearer_tokens(environ={})
    with pytest.raises(AccessConfigError, match="cannot read the token file"):
        bearer_tokens(tmp_path / "missing", environ={})
    with pytest.raises(AccessConfigError, match="repeats a token"):
        bearer_tokens(file, environ={"POLYSOCKET_TOKENS": "from-file x"})


def test_bearer_token_from_the_header_or_the_query() -> None:
    check = BearerTokens({"tok+/=en": Principal("alice", frozenset({"admin"}))})

    def who(headers: dict[str, str] | None = None, query: str = "") -> Principal | None:
        return check(Handshake.of(handshake_request(headers, query), "echo"))

    alice = Principal("alice", frozenset({"admin"}))
    assert who({"authorization": "Bearer tok+/=en"}) == alice
    assert who({"authorization": "bearer   tok+/=en "}) == alice  # the scheme is any case
    assert who(query="access_token=tok%2B%2F%3Den") == alice  # encodeURIComponent's form
    assert who(query="x=1&access_token=tok%2B%2F%3Den") == alice
    assert who() is None
    assert who({"authorization": "Bearer wrong"}) is None
    assert who({"authorization": "Basic dG9rOmVu"}) is None
    assert who(query="access_token=") is None
    assert who({"authorization": "Bearer tok+/=enX"}) is None  # a prefix is not the token
    assert who({"authorization": "Bearer ünïcode"}) is None  # not ASCII: no TypeError


def test_handshake_parses_query_and_cookies() -> None:
    request = handshake_request(
        {"cookie": "session=abc; theme=dark; session=second; junk; =x"}, "a=1&a=2&b=%20x&c"
    )
    seen = Handshake.of(request, "echo")
    assert seen.query == {"a": "1", "b": " x", "c": ""}
    assert seen.cookies == {"session": "abc", "theme": "dark"}
    assert (seen.endpoint, seen.path, seen.remote_address) == (
        "echo",
        request.path,
        ("127.0.0.1", 5000),
    )


# -- origins --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "normal"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://app.example.com:80/", "http://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("HTTP://[::1]:8080", "http://[::1]:8080"),
        ("null", None),
        ("app.example.com", None),
        ("https://app.example.com/path", None),
        ("https://user@app.example.com", None),
        ("https://app.example.com:99999", None),
    ],
)
def test_origin_normal_form(origin: str, normal: str | None) -> None:
    assert normalize_origin(origin) == normal


def test_origin_list_is_checked_with_a_useful_message() -> None:
    assert origin_list(["*", "https://A.example"], "origins=") == ("*", "https://a.example")
    with pytest.raises(AccessConfigError, match=r"'a\.example' is not an origin; write scheme"):
        origin_list(["a.example"], "origins=")
    with pytest.raises(AccessConfigError, match="a list of strings, not one string"):
        origin_list("https://a.example", "origins=")


def test_origin_policy() -> None:
    policy = OriginPolicy(origin_list(["https://app.example.com", "http://localhost:3000"], "x"))

    def refused(origin: str | None, host: str = "127.0.0.1:8080") -> HttpResponse | None:
        headers = {"host": host} if origin is None else {"host": host, "origin": origin}
        return policy.refusal(HttpRequest("GET", "/", "", headers, None, True))

    assert refused(None) is None  # not a browser
    assert refused("https://APP.example.com") is None
    assert refused("https://app.example.com:443") is None
    assert refused("http://localhost:3000") is None
    assert refused("http://127.0.0.1:8080") is None  # the server's own page
    assert refused("https://127.0.0.1:8080") is None
    assert refused("http://localhost:8080", host="localhost:8080") is None
    answer = refused("http://evil.example")
    assert answer is not None and answer.status == 403
    assert b"'http://evil.example'" in answer.body and b"--origin" in answer.body
    for other in ("http://app.example.com", "https://app.example.com:8443", "null", "garbage"):
        assert refused(other) is not None, other
    assert refused("http://127.0.0.1:8081") is not None  # another port is another origin
    assert OriginPolicy(None).refusal(handshake_request({"origin": "http://evil.example"})) is None
    everyone = OriginPolicy(["*"])
    assert everyone.refusal(handshake_request({"origin": "http://evil.example"})) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- the gate -------------------------------------------------------------------------------


def no_plugins(_: Handshake) -> None:
    return None


def gate(authenticate=None, origins=None) -> Gate:  # type: ignore[no-untyped-def]
    return Gate(origins, authenticate, no_plugins, list)


def test_gate_without_authenticator_admits_anonymously_but_not_to_role_endpoints() -> None:
    assert gate().admit(handshake_request(), "echo", None, frozenset()) == Admitted(None)
    answer = gate().admit(handshake_request(), "echo", None, frozenset({"admin"}))
    assert isinstance(answer, HttpResponse) and answer.status == 401
    assert b"authenticates nobody" in answer.body


def test_gate_refusals_and_roles() -> None:
    def authenticate(handshake: Handshake) -> Principal | None:
        token = handshake.query.get("who")
        if token == "forbidden":
            raise Refused(403, "you, of all people")
        return None if token is None else Principal(token, frozenset({token + "-role"}))

    check = gate(authenticate)

    def admit(query: str, roles: frozenset[str] = frozenset()) -> Admitted | HttpResponse:
        return check.admit(handshake_request(query=query), "echo", None, roles)

    assert admit("who=ann") == Admitted(Principal("ann", frozenset({"ann-role"})))
    anonymous = admit("")
    assert isinstance(anonymous, HttpResponse) and anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    forbidden = admit("who=forbidden")
    assert isinstance(forbidden, HttpResponse)
    assert (forbidden.status, forbidden.body) == (403, b"you, of all people\n")
    assert admit("who=ann", frozenset({"ann-role", "x"})) == Admitted(
        Principal("ann", frozenset({"ann-role"}))
    )
    lacking = admit("who=bob", frozenset({"ann-role"}))
    assert isinstance(lacking, HttpResponse) and lacking.status == 403
    assert b"'bob' lacks the role" in lacking.body


def test_gate_checks_the_origin_before_asking_the_authenticator() -> None:
    asked: list[Handshake] = []

    def authenticate(handshake: Handshake) -> Principal:
        asked.append(handshake)
        return Principal("x")

    check = gate(authenticate, origins=["https://a.example"])
    evil = handshake_request({"origin": "http://evil.example"})
    answer = check.admit(evil, "echo", None, frozenset())
    assert isinstance(answer, HttpResponse) and answer.status == 403 and asked == []
    # the endpoint's own list replaces the server's
    assert check.admit(evil, "echo", ("http://evil.example",), frozenset()) == Admitted(
        Principal("x")
    )


def test_a_failing_authenticator_is_a_500_and_one_logged_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_: Handshake) -> Principal | None:
        raise KeyError("the bug")

    check = gate(broken)
    with caplog.at_level(logging.ERROR, "polysocket.auth"):
        for _ in range(50):
            answer = check.admit(handshake_request(), "echo", None, frozenset())
            assert isinstance(answer, HttpResponse) and answer.status == 500
            assert b"the bug" not in answer.body
    [record] = [r for r in caplog.records if r.name == "polysocket.auth"]
    assert "KeyError: 'the bug'" in record.getMessage()
    wrong = gate(lambda _: "alice").admit(handshake_request(), "echo", None, frozenset())
    assert isinstance(wrong, HttpResponse) and wrong.status == 500


def test_a_plugin_authenticates_when_the_callable_does_not() -> None:
    class Plugin:
        @hookimpl
        def polysocket_authenticate(self, request: Handshake) -> Principal | None:
            return Principal("plugged") if request.headers.get("x-plug") == "yes" else None

    registry.register_plugin(Plugin(), "test-auth-plugin")
    try:
        check = Gate(None, None, registry.authenticate, registry.authenticator_names)
        assert check.authenticators() == ["plugin 'test-auth-plugin'"]
        plugged = handshake_request({"x-plug": "yes"})
        assert check.admit(plugged, "echo", None, frozenset()) == Admitted(Principal("plugged"))
        answer = check.admit(handshake_request(), "echo", None, frozenset())
        assert isinstance(answer, HttpResponse) and answer.status == 401
    finally:
        registry.unregister_plugin("test-auth-plugin")
    assert registry.authenticator_names() == []


# -- descriptors and the server -------------------------------------------------------------


def write_root(root: Path, **fields: object) -> Path:
    (root / "h.py").write_text(HANDLER)
    (root / "echo.websocket").write_text(json.dumps({"handler": "h", "endpoint": "echo", **fields}))
    return root


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"origins": "https://a.example"}, "origins must be a list"),
        ({"origins": ["a.example"]}, "is not an origin"),
        ({"roles": "admin"}, "roles must be a list"),
        ({"roles": [""]}, "roles must be a list"),
    ],
)
def test_descriptor_origins_and_roles_are_checked(
    tmp_path: Path, fields: dict[str, object], problem: str
) -> None:
    [found] = scan(write_root(tmp_path, **fields)).problems
    assert problem in str(found)


def test_descriptor_origins_and_roles_are_read(tmp_path: Path) -> None:
    found = scan(write_root(tmp_path, origins=["https://A.example:443"], roles=["admin", "ops"]))
    endpoint = found.endpoints["echo"]
    assert endpoint.origins == ("https://a.example",)
    assert endpoint.roles == frozenset({"admin", "ops"})


def test_the_handler_reads_the_principal_from_its_session(tmp_path: Path) -> None:
    run(_principal_scenario(tmp_path))


async def _principal_scenario(tmp_path: Path) -> None:
    engine = MemoryEngine()
    tokens = BearerTokens({"s3cret": Principal("alice", frozenset({"admin"}))})
    with install(engine):
        async with polysocket.serve(
            write_root(tmp_path, roles=["admin"]),
            port=0,
            engine="memory",
            reload=False,
            authenticate=tokens,
        ) as app:
            server = engine.servers[app.port]
            with pytest.raises(polysocket.ConnectError) as refused:
                await server.connect(SERVICE + "echo")
            assert refused.value.status == 401
            end = await server.connect(SERVICE + "echo?access_token=s3cret")
            assert await end.receive() == "Principal(name='alice', roles=frozenset({'admin'}))"
            await end.close()
            assert app._principals == {}  # nothing left behind


def test_no_principal_without_an_authenticator(tmp_path: Path) -> None:
    run(_anonymous_scenario(tmp_path))


async def _anonymous_scenario(tmp_path: Path) -> None:
    engine = MemoryEngine()
    with install(engine):
        async with polysocket.serve(
            write_root(tmp_path), port=0, engine="memory", reload=False
        ) as app:
            end = await engine.servers[app.port].connect(SERVICE + "echo")
            assert await end.receive() == "None"
            await end.close()


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_a_server_other_machines_reach_without_origins_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str, warned: bool
) -> None:
    async def scenario() -> None:
        async with polysocket.serve(write_root(tmp_path), host, 0, "memory", reload=False):
            pass
        async with polysocket.serve(
            write_root(tmp_path), host, 0, "memory", reload=False, origins=["https://a.example"]
        ):
            pass

    with install(MemoryEngine()), caplog.at_level(logging.WARNING, "polysocket.server"):
        run(scenario())
    warnings = [r.getMessage() for r in caplog.records if "no origin list" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "--origin" in warnings[0]


def test_bad_server_origins_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(AccessConfigError, match=r"origins=: 'evil' is not an origin"):
        EndpointServer(
            write_root(tmp_path), MemoryEngine(), ServerOptions(), [], False, origins=["evil"]
        )
