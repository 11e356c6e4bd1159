"""How the gateway check reads the URI a proxy forwards: origin-form only, the query kept byte
for byte but for api_key, the path matched as the client sent it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.domain.gateway import UnreadableRequest, parse_forwarded

CHECK = "/api/v1/gateway/check"


@pytest.fixture
def proxy(app: Any) -> Iterator[Any]:
    """A test client whose peer is a loopback address, as nginx or Caddy on the same host."""
    with app.test_client(client=("127.0.0.1", 40100)) as test_client:
        yield test_client


def ask_raw(proxy: Any, uri: bytes, key: str, pair: str = "forwarded") -> Any:
    """Ask the check about GET `uri`, sent as raw header bytes (as a proxy copies them)."""
    names = (
        (b"X-Forwarded-Method", b"X-Forwarded-Uri")
        if pair == "forwarded"
        else (b"X-Original-Method", b"X-Original-URI")
    )
    return proxy.get(CHECK, headers=[(names[0], b"GET"), (names[1], uri), (b"X-API-Key", key.encode())])


@pytest.mark.parametrize(
    ("sent", "upstream"),
    [
        ("/api/v1/iocs?pretty", "/api/v1/iocs?pretty"),
        ("/api/v1/iocs?a=1;b=2", "/api/v1/iocs?a=1;b=2"),
        ("/api/v1/iocs?q=a+b", "/api/v1/iocs?q=a+b"),
        ("/api/v1/iocs?q=%E9", "/api/v1/iocs?q=%E9"),
        ("/api/v1/iocs?%zz", "/api/v1/iocs?%zz"),
        ("/api/v1/iocs?q=\u00c3\u00a9", "/api/v1/iocs?q=%C3%A9"),  # raw UTF-8 é, as latin-1
        ("/api/v1/iocs?a=1&api_key=sk_live_x&b=&api%5Fkey=y", "/api/v1/iocs?a=1&b="),
        ("/api/v1/lookup/a%20b", "/api/v1/lookup/a%20b"),
        ("/api/v1/iocs/%C3%A9", "/api/v1/iocs/%C3%A9"),
        ("/api/v1/iocs/\u00c3\u00a9", "/api/v1/iocs/%C3%A9"),
        ("/api/v1/iocs/x/%2e%2e/y/", "/api/v1/iocs/y/"),
    ],
)
def test_parse_forwarded_keeps_uri_bytes_but_api_key(sent: str, upstream: str) -> None:
    assert parse_forwarded("GET", sent).upstream_uri == upstream


def test_parse_forwarded_reads_api_key_values() -> None:
    forwarded = parse_forwarded("GET", "/api/v1/iocs?api_key=sk_live_a%2Bb&x=1")
    assert forwarded.query_keys == ("sk_live_a+b",)


def test_parse_forwarded_matches_decoded_path() -> None:
    assert parse_forwarded("GET", "/api/v1/iocs/\u00c3\u00a9").path == "/api/v1/iocs/\u00e9"
    assert parse_forwarded("GET", "/api/v1/lookup/a%20b").path == "/api/v1/lookup/a b"


@pytest.mark.parametrize("uri", ["http://evil/api/v1/iocs", "api/v1/iocs", "*"])
def test_parse_forwarded_refuses_absolute_form(uri: str) -> None:
    with pytest.raises(UnreadableRequest):
        parse_forwarded("GET", uri)


def test_parse_forwarded_reads_double_slash_as_a_path() -> None:
    assert parse_forwarded("GET", "//api/v1/iocs").path == "/api/v1/iocs"
    evil = parse_forwarded("GET", "//evil.example/api/v1/iocs")
    assert evil.path == "/evil.example/api/v1/iocs"
    assert evil.upstream_uri == "/evil.example/api/v1/iocs"


@pytest.mark.parametrize(
    ("sent", "upstream"),
    [
        (b"/api/v1/iocs?pretty", "/api/v1/iocs?pretty"),
        (b"/api/v1/iocs?a=1;b=2", "/api/v1/iocs?a=1;b=2"),
        (b"/api/v1/iocs?q=a+b", "/api/v1/iocs?q=a+b"),
        (b"/api/v1/iocs?q=%E9", "/api/v1/iocs?q=%E9"),
        (b"/api/v1/iocs?%zz", "/api/v1/iocs?%zz"),
        (b"/api/v1/iocs?q=\xc3\xa9", "/api/v1/iocs?q=%C3%A9"),
        (b"/api/v1/iocs/\xc3\xa9?x=1", "/api/v1/iocs/%C3%A9?x=1"),
        (b"/api/v1/lookup/a%20b", "/api/v1/lookup/a%20b"),
        (b"//api/v1/iocs", "/api/v1/iocs"),
    ],
)
def test_check_tells_upstream_the_uri_as_sent(
    proxy: Any, mint: Callable[..., dict[str, Any]], sent: bytes, upstream: str
) -> None:
    key = mint()
    for pair in ("forwarded", "original"):
        response = ask_raw(proxy, sent + b"&api_key=" + key["key"].encode() if b"?" in sent else sent, key["key"], pair)
        assert response.status_code in (200, 204), response.text
        assert response.headers["X-Upstream-Uri"] == upstream


@pytest.mark.parametrize(
    "uri", [b"//evil.example/api/v1/iocs", b"http://evil/api/v1/iocs", b"https://intel.example/api/v1/iocs"]
)
def test_check_never_reads_a_host_from_the_uri(proxy: Any, mint: Callable[..., dict[str, Any]], uri: bytes) -> None:
    response = ask_raw(proxy, uri, mint()["key"])
    assert response.status_code in (400, 403), response.text
    assert "X-Upstream-Uri" not in response.headers
    if uri.startswith(b"//"):
        assert response.json()["error"]["code"] == "route_not_mapped"
        assert response.json()["error"]["details"]["path"] == "/evil.example/api/v1/iocs"
    else:
        assert response.json()["error"]["details"]["field"] == "X-Forwarded-Uri"


def test_check_names_the_missing_header_of_the_pair_sent(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    response = proxy.get(CHECK, headers={"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "", "X-API-Key": key["key"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "X-Forwarded-Uri"
    assert "X-Forwarded-Uri" in error["message"] and "X-Original" not in error["message"]
    assert "URI is missing" in error["message"]
    response = proxy.get(CHECK, headers={"X-Forwarded-Uri": "/api/v1/iocs", "X-API-Key": key["key"]})
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "X-Forwarded-Method"
    response = proxy.get(CHECK, headers={"X-Original-URI": "/api/v1/iocs", "X-API-Key": key["key"]})
    assert response.json()["error"]["details"]["field"] == "X-Original-Method"
