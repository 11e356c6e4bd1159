"""The tuned app answers exactly as plain Connexion does.

`app.web.connexion_tuning` runs Flask inline, binds each operation's arguments once, routes
paths without parameters through an exact table, gives Flask the rule Connexion's routing
found, reuses request validators, skips the Swagger UI router for paths it does not serve and
leaves out the pass-through response validation layer. The same conversation, every
operation, in success and in every kind of error, by every way of authenticating, is held with
`create_app(..., tuned=False)` (Connexion's own FlaskApp, routing, middleware list and
decorators, Flask's own URL matching), and every answer must match: status, headers (but the
date) and body, once ids, keys and request ids are masked. The routing table and Flask's rules
are also compared, entry by entry, with what Connexion's routers and Werkzeug's match find.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from app.config import Settings
from app.domain.sessions import issue_token
from app.web.connexion_tuning import binding
from tests.conftest import SECRET, FakeClock

MASKS = [
    (re.compile(r"sk_live_[0-9A-Za-z]{38}"), "<key>"),
    (re.compile(r"sk_live_[0-9A-Za-z]{4}"), "<preview>"),
    (re.compile(r"[0-9]{16}[0-9a-f]{32}"), "<cursor>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE), "<uuid>"),
    (re.compile(r"req_[0-9a-f]{16}"), "<request-id>"),
]


def mask(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def conversation(client: Any, clock: FakeClock) -> list[tuple[Any, ...]]:
    """Walk every operation, in success and in error, and record what a client sees."""
    cookies = {"sb-access-token": issue_token(SECRET, "user-1", clock(), 3600)}
    answers: list[tuple[Any, ...]] = []

    def call(method: str, url: str, **kwargs: Any) -> Any:
        response = client.request(method, url, **kwargs)
        headers = {k.lower(): mask(v) for k, v in response.headers.items() if k.lower() != "date"}
        answers.append((method, mask(url), response.status_code, headers, mask(response.text)))
        return response

    call("GET", "/api/v1/keys")  # no session: 401 missing_session
    call("GET", "/api/v1/keys", cookies={"sb-access-token": "not-a-token"})  # 401 invalid_session
    call("POST", "/api/v1/keys", content=b'{"name": "x"}', headers={"Content-Type": "text/plain"}, cookies=cookies)
    call(
        "POST",
        "/api/v1/keys",
        content=b'{"name": "' + b"x" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
        cookies=cookies,
    )  # 413
    first = call("POST", "/api/v1/keys", json={"name": "prod-splunk"}, cookies=cookies).json()["data"]
    call("POST", "/api/v1/keys", json={"name": "prod-splunk"}, cookies=cookies)  # 409 duplicate_name
    second = call("POST", "/api/v1/keys", json={"name": "key1", "expires_in_days": 30}, cookies=cookies).json()["data"]
    call("POST", "/api/v1/keys", json={"name": "third-key"}, cookies=cookies)
    call("POST", "/api/v1/keys", json={"name": "fourth-key"}, cookies=cookies)  # 409 key_limit_reached
    call("POST", "/api/v1/keys", json={"name": "x", "extra": 1}, cookies=cookies)
    call("POST", "/api/v1/keys", content=b"{not json", headers={"Content-Type": "application/json"}, cookies=cookies)
    call("POST", "/api/v1/keys", content=b"", headers={"Content-Type": "application/json"}, cookies=cookies)
    call("GET", "/api/v1/keys", cookies=cookies)
    cursor = call("GET", "/api/v1/keys?limit=1", cookies=cookies).json()["meta"]["next_cursor"]
    call("GET", f"/api/v1/keys?limit=1&cursor={cursor}", cookies=cookies)
    call("GET", "/api/v1/keys?limit=abc", cookies=cookies)
    call("GET", "/api/v1/keys?limit=abc", cookies=cookies)  # a query string refused before: refused again
    call("GET", "/api/v1/keys?limit=0", cookies=cookies)
    call("GET", "/api/v1/keys?limit=1", cookies=cookies)  # a query string seen before
    call("GET", f"/api/v1/keys/{first['id'].upper()}", cookies=cookies)
    call("GET", "/api/v1/keys/not-a-uuid", cookies=cookies)
    call("GET", f"/api/v1/keys/{first['id']}")
    # The gateway check, as nginx asks it (the same query string each time) and as Caddy does.
    asked = {"X-API-Key": second["key"], "X-Original-Method": "GET", "X-Original-URI": "/api/v1/iocs?limit=5"}
    for refusal in ("header", "header", "status", "bogus", "bogus"):
        call("GET", f"/api/v1/gateway/check?refusal={refusal}", headers=asked)
    call("GET", "/api/v1/gateway/check?refusal=header", headers={**asked, "X-Original-URI": "/elsewhere"})
    clock.advance(1)
    call("GET", "/api/v1/whoami", headers={"X-API-Key": second["key"]})
    call("GET", f"/api/v1/whoami?api_key={second['key']}")
    call("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {second['key']}"})
    call("GET", "/api/v1/whoami", headers={"X-API-Key": "sk_live_nope"})
    call("GET", "/api/v1/whoami")  # 401 missing_api_key
    call("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {second['key']}", "X-API-Key": first["key"]})
    for _ in range(8):  # the free tier's 10 a minute, then 429 with Retry-After
        call("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {second['key']}"})
    call("DELETE", f"/api/v1/keys/{first['id']}", cookies=cookies)
    call("DELETE", f"/api/v1/keys/{first['id']}", cookies=cookies)
    call("GET", "/api/v1/whoami", headers={"X-API-Key": first["key"]})  # 401 revoked_api_key
    clock.advance(31 * 86_400)
    call("GET", "/api/v1/whoami", headers={"X-API-Key": second["key"]})  # 401 expired_api_key
    call("GET", "/api/v1/key-events?limit=2", cookies=cookies)
    call("GET", "/api/v1/key-events", cookies=cookies)
    call("GET", "/healthz")
    call("PUT", "/healthz")
    call("HEAD", "/healthz")
    call("GET", "/api/v1/nothing")
    call("GET", "/openapi.json")
    call("GET", "/ui/")
    return answers


@pytest.mark.parametrize("validate_responses", [True, False])
def test_tuned_app_answers_as_plain_connexion_does(tmp_path: Path, validate_responses: bool) -> None:
    def run(name: str, tuned: bool) -> list[tuple[Any, ...]]:
        clock = FakeClock()
        settings = Settings(
            jwt_secret=SECRET,
            database_path=tmp_path / name / "keys.db",
            cors_origin_regex="",
            validate_responses=validate_responses,
            max_active_keys=3,
        )
        # From a loopback peer, as a proxy on the same host asks the gateway check.
        with create_app(settings, clock=clock, tuned=tuned).test_client(client=("127.0.0.1", 40100)) as client:
            return conversation(client, clock)

    tuned = run("tuned", tuned=True)
    plain = run("plain", tuned=False)

    assert len(tuned) == len(plain) == 54
    for ours, reference in zip(tuned, plain, strict=True):
        assert ours == reference
    statuses = [answer[2] for answer in tuned]
    for status in (200, 201, 204, 400, 401, 404, 405, 409, 413, 415, 429):
        assert status in statuses, status
    codes = " ".join(answer[4] for answer in tuned)
    for code in (
        "missing_session",
        "invalid_session",
        "missing_api_key",
        "invalid_api_key",
        "revoked_api_key",
        "expired_api_key",
        "duplicate_name",
        "key_limit_reached",
        "rate_limit_exceeded",
        "key_not_found",
    ):
        assert code in codes, code
    checks = [answer[2] for answer in tuned if "/gateway/check" in answer[1]]
    assert checks == [204, 204, 200, 400, 400, 403], checks
    limited = next(answer for answer in tuned if answer[2] == 429)
    assert {"retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(limited[3])


def test_the_binding_path_and_connexions_generic_decorators_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(name: str) -> list[tuple[Any, ...]]:
        clock = FakeClock()
        settings = Settings(
            jwt_secret=SECRET, database_path=tmp_path / name / "keys.db", cors_origin_regex="", max_active_keys=3
        )
        with create_app(settings, clock=clock).test_client() as client:
            return conversation(client, clock)

    compiled = run("compiled")
    # Connexion's own decorators for every operation, inside the otherwise tuned app.
    monkeypatch.setattr(binding._Binding, "compile", classmethod(lambda cls, *args: None))
    assert run("generic") == compiled


def test_binding_declines_what_it_does_not_cover(make_app: Callable[..., Any]) -> None:
    # A body in a form media type is left to Connexion's decorators.
    operation = type(
        "Op",
        (),
        {"consumes": ["application/x-www-form-urlencoded"], "produces": ["application/json"], "parameters": []},
    )()
    assert binding._Binding.compile(operation, lambda: None, None) is None  # type: ignore[arg-type]
    several = type("Op", (), {"consumes": [], "produces": ["application/json", "text/plain"], "parameters": []})()
    assert binding._Binding.compile(several, lambda: None, None) is None  # type: ignore[arg-type]


def test_swagger_ui_and_spec_still_served(make_app: Callable[..., Any]) -> None:
    with make_app().test_client() as client:
        assert client.get("/openapi.json").json()["paths"]
        assert client.get("/ui/").status_code == 200
        assert client.get("/ui", follow_redirects=False).status_code in (301, 302, 307)
        assert "swagger-ui" in client.get("/ui/swagger-ui.css").text


def test_inline_wsgi_does_not_call_the_app_for_a_body_cut_short() -> None:
    import asyncio

    from starlette.requests import ClientDisconnect

    called: list[Any] = []

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        called.append(environ)
        start_response("200 OK", [])
        return [b""]

    messages = iter(
        [{"type": "http.request", "body": b'{"name": "x"}', "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent to a client that left")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/keys",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-length", b"100")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
    }
    with pytest.raises(ClientDisconnect):
        asyncio.run(binding.InlineWSGIMiddleware(wsgi_app, fallback=None)(scope, receive, send))
    assert called == []


PARAMETER_VALUES = ["6e1d2f3a-0b6f-4c1e-9a57-2f8e1d2c3b4a", "x", "%41", "é", "a.b", "-"]


def test_flask_takes_the_rule_its_own_match_would_find(make_app: Callable[..., Any]) -> None:
    # For every (method, operation) whose rule Flask takes from Connexion's routing, Werkzeug's
    # own match of any path that operation's route accepts finds that rule and those arguments.
    app = make_app()
    with app.test_client() as client:
        client.get("/healthz")  # Connexion adds its APIs, and so Flask's rules, on the first request
    rules = binding._operation_rules(app.app)
    assert {("GET", "getCurrentKey"), ("POST", "createAPIKey"), ("GET", "getAPIKey")} <= set(rules)
    adapter = app.app.url_map.bind("localhost")
    for (method, _), rule in rules.items():
        for value in PARAMETER_VALUES:
            arguments = {name: value for name in rule.arguments}
            path = re.sub(r"<[^>]*>", value, rule.rule)
            assert adapter.match(path, method, return_rule=True) == (rule, arguments), (method, path)


async def _route(middleware: Any, method: str, path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run one request through a routing middleware; return the scope after it and the one the next layer got."""
    from starlette.exceptions import HTTPException

    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def next_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "extensions": {"http.response.debug": {}},
    }
    middleware.app = next_app
    for route in middleware.router.routes:  # the operations call the layer after routing
        for inner in getattr(route.app, "routes", []):
            inner.endpoint.next_app = next_app
        route.app.default.next_app = next_app
    middleware.router.default.next_app = next_app
    try:
        await middleware(scope, None, send)
    except HTTPException as exc:
        return {**scope, "raised": exc.status_code}, None
    return {**scope, "sent": sent}, seen[0] if seen else None


def test_the_exact_routing_table_routes_as_connexions_routers(make_app: Callable[..., Any]) -> None:
    import asyncio

    from connexion.middleware.routing import RoutingMiddleware
    from connexion.resolver import Resolver
    from connexion.spec import Specification

    from app.web.connexion_tuning.stack import ExactRoutingMiddleware
    from app.web.factory import SPEC_PATH, resolve_handler

    def routing(cls: type) -> Any:
        middleware = cls(None)
        specification = Specification.load(json.loads(SPEC_PATH.read_text()))
        middleware.add_api(specification, resolver=Resolver(function_resolver=resolve_handler))
        return middleware

    exact, plain = routing(ExactRoutingMiddleware), routing(RoutingMiddleware)
    table = exact._table()
    assert ("GET", "/api/v1/whoami") in table and ("POST", "/api/v1/keys") in table and ("HEAD", "/healthz") in table
    requests = sorted(table) + [
        ("DELETE", "/api/v1/whoami"),
        ("GET", "/api/v1/keys/x"),
        ("GET", "/api/v1/keys/"),
        ("GET", "/api/v1/nothing"),
        ("OPTIONS", "/api/v1/keys"),
        ("GET", "/ui/"),
    ]
    for method, path in requests:
        ours = asyncio.run(_route(exact, method, path))
        reference = asyncio.run(_route(plain, method, path))
        assert _comparable(ours) == _comparable(reference), (method, path)


def _comparable(routed: tuple[dict[str, Any], dict[str, Any] | None]) -> Any:
    # The routers and operations are each middleware's own objects: compare them by kind and operation.
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if hasattr(value, "operation_id"):
            return ("operation", value.operation_id)
        if hasattr(value, "routes") or hasattr(value, "path_regex"):
            return type(value).__name__, getattr(value, "path", None)
        return value

    return [plain(scope) for scope in routed]


def test_remembered_query_strings_stay_bounded_and_refusals_are_never_remembered() -> None:
    from connexion.uri_parsing import OpenAPIURIParser

    from app.domain.errors import InvalidParameter
    from app.web.validation import MAX_PASSED_QUERIES, RequestParameterValidator

    parameters = [{"name": "refusal", "in": "query", "schema": {"type": "string", "enum": ["status", "header"]}}]
    validator = RequestParameterValidator(parameters, uri_parser=OpenAPIURIParser(parameters, {}))

    def validate(query: bytes) -> None:
        validator.validate({"type": "http", "query_string": query, "headers": [], "path_params": {}})

    for i in range(5 * MAX_PASSED_QUERIES):  # distinct query strings, each valid (unknown names are ignored)
        validate(b"refusal=header&n=%d" % i)
        assert len(validator._passed) <= MAX_PASSED_QUERIES
        for _ in range(2):
            with pytest.raises(InvalidParameter):
                validate(b"refusal=bogus")
    validate(b"refusal=header")
    assert b"refusal=header" in validator._passed
    for carrying in (b"refusal=header&api_key=sk_live_x", b"refusal=header&%61pi_key=sk_live_x"):
        validate(carrying)
        assert carrying not in validator._passed  # no key is kept in memory


ENVIRON_SCOPES = [
    {"method": "GET", "path": "/api/v1/whoami", "root_path": "", "query_string": b"", "headers": []},
    {  # a root path, repeated headers (joined with commas), the two headers WSGI names without HTTP_
        "method": "POST", "path": "/keys/api/v1/keys", "root_path": "/keys", "query_string": b"a=1&b=%20",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"2"), (b"x-api-key", b"k1"),
                    (b"x-api-key", b"k2"), (b"x-forwarded-for", b"10.0.0.1"), (b"cookie", b"a=b")],
    },
    {  # a path outside the root path, a path in UTF-8, latin-1 header bytes, no client, no server
        "method": "GET", "path": "/élan", "root_path": "/keys", "query_string": b"q=%C3%A9",
        "headers": [(b"x-odd", b"caf\xe9")], "client": None, "server": None,
    },
]


@pytest.mark.parametrize("given", ENVIRON_SCOPES)
@pytest.mark.parametrize("script_name", ["", "/mounted"])
def test_the_environ_is_the_one_a2wsgi_builds(
    given: dict[str, Any], script_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from a2wsgi.wsgi import build_environ

    scope = {"type": "http", "http_version": "1.1", "scheme": "https", "server": ("keys.example", 443),
             "client": ("192.0.2.7", 50123), **given}
    body = io.BytesIO(b"{}")
    monkeypatch.setenv("SCRIPT_NAME", script_name)
    expected = dict(build_environ(scope, body))  # type: ignore[arg-type]
    expected["wsgi.multithread"] = False  # Flask runs on the event loop's one thread here
    ours = binding.build_environ(scope, body, binding.InlineWSGIMiddleware(None, None).script_name)  # type: ignore[arg-type]
    assert ours == expected
    assert list(ours) == list(expected)


def test_remembered_header_names_stay_few_and_short_and_names_in_use_come_back() -> None:
    import io

    def environ(*names: bytes) -> dict[str, Any]:
        scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/", "root_path": "",
                 "query_string": b"", "headers": [(name, b"v") for name in names]}
        return binding.build_environ(scope, io.BytesIO(), "")

    long_name = b"x-" + b"a" * 8000
    assert environ(long_name)["HTTP_X_" + "A" * 8000] == "v"
    assert long_name not in binding._ENVIRON_NAMES  # never kept: a client cannot pin kilobytes per name
    for i in range(3 * binding._REMEMBERED_NAMES):  # a flood of distinct names
        assert environ(f"x-flood-{i}".encode(), b"content-type")[f"HTTP_X_FLOOD_{i}"] == "v"
        assert len(binding._ENVIRON_NAMES) <= binding._REMEMBERED_NAMES
    environ(b"x-api-key")
    assert binding._ENVIRON_NAMES[b"x-api-key"] == "HTTP_X_API_KEY"  # a name in use is remembered again
    assert environ(b"content-type")["CONTENT_TYPE"] == "v"  # and the two WSGI names keep their keys


RESPONSES = [
    ({"response": b'{"a": 1}', "status": 200, "content_type": "application/json"}, "GET"),
    ({"response": b'{"a": 1}', "status": 201, "headers": {"X-Trace": "t"}}, "POST"),
    ({"response": b"", "status": 204}, "DELETE"),  # no Content-Length for a 204
    ({"response": b"x", "status": 304}, "GET"),  # no entity headers for a 304
    ({"response": b"hello", "status": 200}, "HEAD"),  # headers only
    ({"response": b"", "status": 303, "headers": {"Location": "/caf\u00e9?x=\u00e9"}}, "POST"),  # IRI to URI
    ({"response": b"{}", "status": 200, "headers": {"Content-Location": "/\u00e9"}}, "GET"),
    ({"response": ["a", b"b"], "status": 200}, "GET"),  # chunks of text are encoded
    ({"response": (b"a", b"b"), "status": 200}, "GET"),  # a tuple: Werkzeug's own path
    ({"response": "a generator", "status": 200}, "GET"),  # no length known
    ({"response": b"{}", "status": 100}, "GET"),
]


@pytest.mark.parametrize(("arguments", "method"), RESPONSES)
def test_a_response_reaches_the_server_as_werkzeug_starts_it(arguments: dict[str, Any], method: str) -> None:
    import flask

    def started(response_class: type[Any]) -> tuple[Any, ...]:
        given = dict(arguments)
        if given["response"] == "a generator":
            given["response"] = (chunk for chunk in [b"streamed"])
        response = response_class(**given)
        closed: list[bool] = []
        response.call_on_close(lambda: closed.append(True))
        seen: list[Any] = []
        body = response({"REQUEST_METHOD": method, "SERVER_NAME": "keys.example", "SERVER_PORT": "443",
                         "wsgi.url_scheme": "https", "PATH_INFO": "/", "SCRIPT_NAME": "", "HTTP_HOST": "keys.example"},
                        lambda status, headers: seen.append((status, headers)))
        chunks = list(body)
        body.close()  # type: ignore[attr-defined]
        return seen, chunks, closed

    assert started(binding._Response) == started(flask.Response)


def test_flask_remembers_whether_a_function_needs_running_to_completion(make_app: Callable[..., Any]) -> None:
    app = make_app().app
    assert isinstance(app, binding._RoutedFlask)

    def plain() -> str:
        return "plain"

    async def coroutine() -> str:
        return "awaited"

    for _ in range(2):  # asked again, the same answer
        assert app.ensure_sync(plain) is plain
        assert app.ensure_sync(coroutine)() == "awaited"
    for i in range(2 * binding._REMEMBERED_FUNCTIONS):  # functions made anew (closures): never more remembered than the bound
        assert app.ensure_sync(lambda i=i: i)() == i
    assert len(app.__dict__["_synced"]) <= binding._REMEMBERED_FUNCTIONS


@pytest.mark.parametrize("data", [
    {"data": {"id": "6e1d2f3a", "n": 1, "f": 0.5, "none": None, "list": [1, "é", {"k": True}]}},
    [],
    "text \u2028 with\nbreaks",
])
def test_the_encoder_made_once_writes_what_connexions_jsonifier_writes(data: Any) -> None:
    import datetime
    import json as json_module
    import uuid

    from connexion.jsonifier import Jsonifier

    jsonifier = Jsonifier(json_module)
    dumps = binding._dumps_of(jsonifier)
    assert dumps is not jsonifier.dumps  # the app's jsonifier: the encoder is made once
    extra = {"when": datetime.datetime(2026, 12, 5, 11, 0, tzinfo=datetime.UTC), "id": uuid.UUID(int=7)}
    for value in (data, {"wrapped": data, **extra}):
        assert dumps(value) == jsonifier.dumps(value)
        assert dumps(value) == jsonifier.dumps(value)  # and again: the encoder keeps nothing between calls
    other = Jsonifier(json_module, indent=2)
    assert binding._dumps_of(other) == other.dumps  # anything else: the jsonifier's own
