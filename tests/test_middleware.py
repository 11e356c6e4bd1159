"""The request's bounds and its access line, in process: what any ASGI server in front gets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from app.web.access import AccessLogMiddleware, client_field
from app.web.bounds import BodyBoundsMiddleware
from app.web.headers import ResponseHeadersMiddleware

KEYS = "/api/v1/keys"


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["request_id"] == response.headers["x-request-id"]
    return error


def test_an_oversized_credential_header_is_431_before_it_is_read(client, mint):
    key = mint()["key"]
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    for headers in ({"Authorization": "Bearer " + "k" * 9_000}, {"X-API-Key": key + "k" * 9_000},
                    {"Cookie": "sb-access-token=" + "e" * 9_000}):
        response = client.get("/api/v1/whoami", headers=headers)
        error = error_of(response, 431, "request_header_fields_too_large")
        assert error["details"] == {"limit_bytes": 8192}
        assert "x-ratelimit-remaining" not in response.headers  # not authenticated, not counted


def test_more_than_100_headers_are_431(client):
    headers = [(f"X-H{n}", "1") for n in range(120)]
    assert error_of(client.get("/healthz", headers=headers), 431, "request_header_fields_too_large")["details"] == {
        "limit_count": 100}


def test_a_chunked_body_is_read_like_any_other(client, session):
    parts = [b'{"name": "chunked-', b'in-process"}']
    response = client.post(KEYS, content=iter(parts), headers={"Content-Type": "application/json"}, cookies=session())
    assert response.status_code == 201, response.text
    assert response.json()["data"]["name"] == "chunked-in-process"


def asgi_request(body_messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]) -> tuple[
        dict[str, Any], Any]:
    """A POST to /api/v1/keys whose receive channel gives `body_messages`, then waits forever."""
    scope = {"type": "http", "method": "POST", "path": KEYS, "raw_path": KEYS.encode(), "query_string": b"",
             "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
             "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("127.0.0.1", 1),
             "root_path": ""}
    pending: Iterator[dict[str, Any]] = iter(body_messages)

    async def receive() -> dict[str, Any]:
        for message in pending:
            return message
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return scope, receive


def test_a_client_gone_mid_body_is_not_handled_at_all(app, session):
    body = json.dumps({"name": "nobody-gets-this"}).encode()
    cookie = f"sb-access-token={session('quitter')['sb-access-token']}".encode()
    scope, receive = asgi_request(
        [{"type": "http.request", "body": body, "more_body": True}, {"type": "http.disconnect"}],
        [(b"cookie", cookie), (b"content-length", str(len(body) + 50).encode())],
    )
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent == []  # no one to answer
    with app.test_client() as client:
        listed = client.get(KEYS, cookies=session("quitter"))
        assert listed.json()["data"] == []
        # Not even counted against the account's key-management limit.
        assert listed.headers["x-ratelimit-remaining"] == "119"


@pytest.mark.parametrize("messages", [
    [],  # nothing of the body
    [{"type": "http.request", "body": b'{"name": ', "more_body": True}],  # part of it
])
def test_a_body_that_does_not_arrive_in_time_is_408_and_never_reaches_the_app(messages):
    reached: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    middleware = AccessLogMiddleware(ResponseHeadersMiddleware(BodyBoundsMiddleware(inner, read_timeout=0.05)))
    scope, receive = asgi_request(messages, [(b"content-length", b"100")])
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    assert reached == []
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(("peer", "logged"), [
    (("127.0.0.1", 5000), "127.0.0.1:5000"),
    (("::1", 5000), "::1:5000"),
    (('1.2.3.4" 200 0.1ms req_x', 0), "1.2.3.4%22%20200%200.1ms%20req_x:0"),
    (("a\nb\u00e9", 0), "a%0Ab%C3%A9:0"),
    (None, "-"),
])
def test_the_logged_client_is_one_field(peer, logged):
    assert client_field(peer) == logged
