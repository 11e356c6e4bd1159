"""The request path, read in one place: the factory's one ordered list of layers."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from app.web.factory import layer_names

ROOT = Path(__file__).resolve().parent.parent
# What a request to an operation crosses in development, outermost first: the README's
# "Development" prints the same list (`make_app` is development with every option's default).
DEVELOPMENT = [
    "ServerErrorMiddleware",
    "AccessLogMiddleware",
    "ClientAddressMiddleware",
    "ResponseHeadersMiddleware",
    "BodyBoundsMiddleware",
    "PathHygieneMiddleware",
    "SpecCacheMiddleware",
    "EnvelopeCORSMiddleware",
    "PagesMiddleware",
    "ExceptionMiddleware",
    "DurableAnswerMiddleware",
    "SpecPathsSwaggerUIMiddleware",
    "ExactRoutingMiddleware",
    "OriginCheckMiddleware",
    "PreferMiddleware",
    "SecurityMiddleware",
    "ValidatorsOnceMiddleware",
    "ResponseValidationMiddleware",
    "LifespanMiddleware",
    "OperationBoundaryMiddleware",
    "ContextMiddleware",
]


def test_the_stack_is_one_list_in_the_order_a_request_meets_it(make_app, capsys):
    app = make_app(cors_origins=("https://console.example",))
    names = layer_names(app.middleware.middlewares)
    print("\n".join(names))  # the request path, as `pytest -s` shows it
    assert names == DEVELOPMENT
    assert "\n".join(DEVELOPMENT) in capsys.readouterr().out


def test_production_leaves_out_prefer_and_adds_only_what_its_settings_ask(make_app):
    plain = layer_names(
        make_app(
            env="production", cors_origin_regex="", cors_origins=(), validate_responses=False, trusted_hosts=()
        ).middleware.middlewares
    )
    assert plain == [
        name
        for name in DEVELOPMENT
        if name not in ("PreferMiddleware", "ResponseValidationMiddleware")
    ]  # CORS stays, with no origin allowed: it answers preflights (400 cors_not_allowed) and nothing else
    hosts = layer_names(make_app(env="production", trusted_hosts=("keys.example",)).middleware.middlewares)
    assert hosts.index("TrustedHostMiddleware") == hosts.index("PathHygieneMiddleware") + 1


def test_no_layer_is_added_outside_the_list():
    factory = ast.parse((ROOT / "app" / "web" / "factory.py").read_text())
    calls = [
        node.func.attr
        for node in ast.walk(factory)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]
    assert "add_middleware" not in calls


def test_each_layer_module_holds_one_concern():
    for path in sorted((ROOT / "app" / "web").glob("*.py")):
        tree = ast.parse(path.read_text())
        layers = [
            node.name for node in tree.body if isinstance(node, ast.ClassDef) and node.name.endswith("Middleware")
        ]
        assert len(layers) <= 1, (path.name, layers)


def test_the_request_state_is_one_typed_object_under_one_key(app, session):
    from app.web.state import STATE_KEY, RequestState

    body = json.dumps({"name": "state-check"}).encode()
    cookie = f"sb-access-token={session('stately')['sb-access-token']}".encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/keys",
        "raw_path": b"/api/v1/keys",
        "query_string": b"",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"cookie", cookie),
            (b"content-length", str(len(body)).encode()),
        ],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 201
    assert list(scope["state"]) == [STATE_KEY]
    state = scope["state"][STATE_KEY]
    assert isinstance(state, RequestState)
    assert (b"x-request-id", state.request_id.encode()) in sent[0]["headers"]
    assert state.account_id == "stately" and state.method == "POST"
    assert state.body is body  # read once, passed on as it came: not joined or copied again
    assert state.json_body == {"name": "state-check"}


@pytest.mark.parametrize("module", ["transport", "pages", "hosts"])
def test_the_server_and_the_pages_take_helpers_from_the_helpers_module(module):
    source = (ROOT / "app" / "web" / f"{module}.py").read_text()
    assert "app.web.middleware" not in source


def test_the_readme_prints_the_same_stack():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```\nServerErrorMiddleware", 1)[1].split("```", 1)[0]
    names = ["ServerErrorMiddleware"] + [line.split()[0] for line in block.strip().splitlines()[1:]]
    assert [name for name in names if not name.startswith("(")] == DEVELOPMENT
