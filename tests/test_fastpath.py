"""The tuned Connexion stack answers exactly as Connexion's own generic path does.

`app.fastpath` binds each operation's arguments and builds its responses from what it works
out once per operation, and `app.stack` reuses validators and skips the Swagger UI router for
paths it does not serve. The same conversation is held with an app that keeps Connexion's
generic decorators, and every answer must match, once ids, keys and times are masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app import create_app, fastpath
from app.config import Settings
from app.sessions import issue_token
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

    first = call("POST", "/api/v1/keys", json={"name": "prod-splunk"}, cookies=cookies).json()["data"]
    second = call("POST", "/api/v1/keys", json={"name": "key1", "expires_in_days": 30}, cookies=cookies).json()["data"]
    call("POST", "/api/v1/keys", json={"name": "x", "extra": 1}, cookies=cookies)
    call("POST", "/api/v1/keys", content=b"{not json", headers={"Content-Type": "application/json"}, cookies=cookies)
    call("POST", "/api/v1/keys", content=b"", headers={"Content-Type": "application/json"}, cookies=cookies)
    call("GET", "/api/v1/keys", cookies=cookies)
    cursor = call("GET", "/api/v1/keys?limit=1", cookies=cookies).json()["meta"]["next_cursor"]
    call("GET", f"/api/v1/keys?limit=1&cursor={cursor}", cookies=cookies)
    call("GET", "/api/v1/keys?limit=abc", cookies=cookies)
    call("GET", "/api/v1/keys?limit=0", cookies=cookies)
    call("GET", f"/api/v1/keys/{first['id'].upper()}", cookies=cookies)
    call("GET", "/api/v1/keys/not-a-uuid", cookies=cookies)
    call("GET", f"/api/v1/keys/{first['id']}")
    clock.advance(1)
    call("GET", "/api/v1/whoami", headers={"X-API-Key": second["key"]})
    call("GET", f"/api/v1/whoami?api_key={second['key']}")
    call("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {second['key']}"})
    call("GET", "/api/v1/whoami", headers={"X-API-Key": "sk_live_nope"})
    call("DELETE", f"/api/v1/keys/{first['id']}", cookies=cookies)
    call("DELETE", f"/api/v1/keys/{first['id']}", cookies=cookies)
    call("GET", "/api/v1/key-events?limit=2", cookies=cookies)
    call("GET", "/api/v1/key-events", cookies=cookies)
    call("GET", "/healthz")
    call("PUT", "/healthz")
    call("GET", "/openapi.json")
    call("GET", "/ui/")
    return answers


@pytest.mark.parametrize("validate_responses", [True, False])
def test_tuned_stack_answers_as_connexion_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               validate_responses: bool) -> None:
    def run(name: str) -> list[tuple[Any, ...]]:
        clock = FakeClock()
        settings = Settings(jwt_secret=SECRET, database_path=tmp_path / name / "keys.db", cors_origin_regex="",
                            validate_responses=validate_responses)
        with create_app(settings, clock=clock).test_client() as client:
            return conversation(client, clock)

    tuned = run("tuned")
    # Connexion's own decorators for every operation: the binding declines them all.
    monkeypatch.setattr(fastpath._Binding, "compile", classmethod(lambda cls, *args: None))
    generic = run("generic")

    assert len(tuned) == len(generic) == 25
    for ours, reference in zip(tuned, generic, strict=True):
        assert ours == reference
    statuses = [answer[2] for answer in tuned]
    assert statuses.count(201) == 2 and 204 in statuses and 400 in statuses and 401 in statuses


def test_binding_declines_what_it_does_not_cover(make_app: Callable[..., Any]) -> None:
    # A body in a form media type is left to Connexion's decorators.
    operation = type("Op", (), {"consumes": ["application/x-www-form-urlencoded"], "produces": ["application/json"],
                                "parameters": []})()
    assert fastpath._Binding.compile(operation, lambda: None, None) is None  # type: ignore[arg-type]
    several = type("Op", (), {"consumes": [], "produces": ["application/json", "text/plain"], "parameters": []})()
    assert fastpath._Binding.compile(several, lambda: None, None) is None  # type: ignore[arg-type]


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

    messages = iter([{"type": "http.request", "body": b'{"name": "x"}', "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent to a client that left")

    scope = {"type": "http", "method": "POST", "path": "/api/v1/keys", "root_path": "", "query_string": b"",
             "headers": [(b"content-length", b"100")], "http_version": "1.1", "scheme": "http",
             "server": ("test", 80), "client": ("127.0.0.1", 1)}
    with pytest.raises(ClientDisconnect):
        asyncio.run(fastpath.InlineWSGIMiddleware(wsgi_app, fallback=None)(scope, receive, send))
    assert called == []
