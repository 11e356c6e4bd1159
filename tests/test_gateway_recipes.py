"""Drills on the edges of the shipped proxy recipes (`deploy/`): forged headers in every
spelling, URIs encoded, long or odd, a keys service that is down, and the logs nginx writes.

Uses the proxies, keys service and stand-in upstream of `tests/test_gateway_proxies.py`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests import test_gateway_proxies as drills
from tests.live import LiveServer, free_port
from tests.test_gateway_proxies import Proxy, assert_envelope, mint, start_caddy, start_nginx, user

# The proxies, keys service and stand-in upstream of the drills next door, shared as they are.
keys_service = drills.keys_service
upstream = drills.upstream
proxy = drills.proxy


def send(proxy: Proxy, head: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """Send one raw HTTP/1.1 request (`head`: request line and headers, unchecked); read the answer."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as conn:
        conn.sendall(head.replace(b"\n", b"\r\n") + b"Host: intel.example\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in headers.get("transfer-encoding", [""])[0]:
        body = dechunk(body)
    return int(lines[0].split(" ")[1]), headers, body


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2 :]
    return out


def get(proxy: Proxy, target: bytes, *headers: bytes) -> tuple[int, dict[str, list[str]], Any]:
    status, response_headers, body = send(
        proxy, b"GET " + target + b" HTTP/1.1\n" + b"".join(h + b"\n" for h in headers)
    )
    return status, response_headers, body


def received(body: bytes) -> dict[str, Any]:
    """What the stand-in upstream received: its method, URI and headers (names lower-cased)."""
    echo = json.loads(body)["received"]
    return {**echo, "headers": {name.lower(): value for name, value in echo["headers"]}}


def key_header(key: dict[str, Any]) -> bytes:
    return b"X-API-Key: " + key["key"].encode()


def test_gateway_drops_identity_headers_spelled_with_underscores(proxy: Proxy, keys_service: LiveServer) -> None:
    owner = user()
    key = mint(keys_service, owner)
    forged = [
        b"X_Account_Id: victim-account",
        b"X_Key_Tier: enterprise",
        b"X_Key_Scopes: export:stix taxii:read",
        b"X_Key_Id: forged",
        b"X_Forwarded_For: 198.51.100.77",
        b"X_Upstream_Uri: /api/taxii2/collections",
        b"X_Original_URI: /api/taxii2/collections",
    ]
    status, _, body = get(proxy, b"/api/v1/iocs", key_header(key), *forged)
    assert status == 200, (proxy.name, body)
    seen = received(body)["headers"]
    assert not [name for name in seen if "_" in name], (proxy.name, seen)
    assert seen["x-account-id"] == owner
    assert seen["x-key-tier"] == "free"
    assert "victim-account" not in json.dumps(seen)


def test_gateway_overwrites_forwarding_headers_a_client_sent(proxy: Proxy, keys_service: LiveServer) -> None:
    key = mint(keys_service, user())
    forged = [
        b"X-Forwarded-Method: DELETE",
        b"X-Forwarded-Uri: /api/taxii2/collections",
        b"Forwarded: for=198.51.100.77;host=evil.example",
        b"X-Real-IP: 198.51.100.77",
    ]
    status, response_headers, body = get(proxy, b"/api/v1/iocs", key_header(key), *forged)
    assert status == 200, (proxy.name, body)
    seen = received(body)["headers"]
    for name in ("x-forwarded-method", "x-forwarded-uri", "forwarded", "x-real-ip"):
        assert name not in seen or "198.51.100.77" not in seen[name] and "taxii" not in seen[name], (proxy.name, seen)
    assert "evil.example" not in json.dumps(seen)
    # One Server header, not the proxy's and the upstream's.
    assert len(response_headers.get("server", [])) <= 1, response_headers


@pytest.mark.parametrize(
    ("sent", "upstream_uri"),
    [
        (b"/api/v1/lookup/a%20b", "/api/v1/lookup/a%20b"),
        (b"/api/v1/iocs/%C3%A9", "/api/v1/iocs/%C3%A9"),
        (b"/api/v1/iocs/a%3Fb%23c", "/api/v1/iocs/a%3Fb%23c"),
        (b"/api/v1/iocs/%25zz", "/api/v1/iocs/%25zz"),
        (b"/api/v1/iocs?pretty", "/api/v1/iocs?pretty"),
        (b"/api/v1/iocs?a=1;b=2", "/api/v1/iocs?a=1;b=2"),
        (b"/api/v1/iocs?q=a+b&api_key=KEY", "/api/v1/iocs?q=a+b"),
        (b"/api/v1/iocs?q=%E9", "/api/v1/iocs?q=%E9"),
        (b"/api/v1/iocs?%zz", "/api/v1/iocs?%zz"),
        (b"/api/v1/iocs?q=\xc3\xa9", "/api/v1/iocs?q=%C3%A9"),
        (b"/api/v1/iocs/\xc3\xa9", "/api/v1/iocs/%C3%A9"),
        (b"/api/v1/iocs?q={http.request.header.X-API-Key}", "/api/v1/iocs?q={http.request.header.X-API-Key}"),
    ],
)
def test_gateway_sends_the_uri_as_the_client_sent_it(
    proxy: Proxy, keys_service: LiveServer, sent: bytes, upstream_uri: str
) -> None:
    key = mint(keys_service, user())
    headers = () if b"KEY" in sent else (key_header(key),)
    status, _, body = get(proxy, sent.replace(b"KEY", key["key"].encode()), *headers)
    assert status == 200, (proxy.name, body)
    assert received(body)["uri"] == upstream_uri, proxy.name


@pytest.mark.parametrize("target", [b"//api/v1/iocs", b"//evil.example/api/v1/iocs"])
def test_gateway_reads_a_double_slash_as_a_path(proxy: Proxy, keys_service: LiveServer, target: bytes) -> None:
    key = mint(keys_service, user())
    status, _, body = get(proxy, target, key_header(key))
    if target == b"//api/v1/iocs":
        assert status == 200, (proxy.name, body)
        assert received(body)["uri"] == "/api/v1/iocs"
    else:
        assert status == 403, (proxy.name, body)
        answer = json.loads(body)
        assert_envelope(answer, "route_not_mapped")
        assert answer["error"]["details"]["path"] == "/evil.example/api/v1/iocs"


@pytest.mark.parametrize("length", [4096, 8000, 9000])
def test_gateway_passes_a_long_path(proxy: Proxy, keys_service: LiveServer, length: int) -> None:
    key = mint(keys_service, user())
    prefix = b"/api/v1/lookup/"
    target = prefix + b"a" * (length - len(prefix))
    status, headers, body = get(proxy, target, key_header(key))
    assert headers["content-type"][0].startswith("application/json"), (proxy.name, status, body[:200])
    if status == 200:
        assert received(body)["uri"] == target.decode()
    else:
        assert_envelope(json.loads(body), "uri_too_long")
        assert status == 414 and length > 8192, (proxy.name, status)


def test_gateway_keeps_a_query_key_out_of_every_log_on_error(
    proxy: Proxy, keys_service: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    key = mint(keys_service, user())
    # An upstream that refuses connections: nginx logs an error about this very request.
    dead = f"127.0.0.1:{free_port()}"
    start = start_nginx if proxy.name == "nginx" else start_caddy
    broken = start(tmp_path_factory.mktemp(proxy.name + "-dead-upstream"), f"127.0.0.1:{keys_service.port}", dead)
    try:
        for target in (
            b"/api/v1/iocs?api_key=KEY",
            b"/api/v1/iocs/%zz?a=%zz&api_key=KEY",
            b"/api/v1/iocs?api%5Fkey=KEY",
        ):
            status, _, body = get(broken, target.replace(b"KEY", key["key"].encode()))
            assert status in (400, 503), body  # Go (Caddy) refuses %zz in a path itself
    finally:
        broken.stop()
    logs = [*broken.output.parent.glob("*.log"), broken.output]
    assert any(log.stat().st_size for log in logs)
    for log in logs:
        assert key["key"] not in log.read_text(errors="replace"), log


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def keyless_proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: str
) -> Iterator[Proxy]:
    """A proxy whose keys service is down (nothing listens where it points)."""
    start = start_nginx if request.param == "nginx" else start_caddy
    started = start(tmp_path_factory.mktemp(request.param + "-keyless"), f"127.0.0.1:{free_port()}", upstream)
    yield started
    started.stop()


def test_gateway_answers_503_envelope_when_keys_service_is_down(keyless_proxy: Proxy) -> None:
    status, headers, body = get(keyless_proxy, b"/api/v1/iocs", b"X-API-Key: sk_live_" + b"A" * 38)
    assert status == 503, (keyless_proxy.name, status, body)
    assert headers["content-type"][0].startswith("application/json")
    answer = json.loads(body)
    assert_envelope(answer, "service_unavailable")
    assert int(headers["retry-after"][0]) > 0
    assert answer["error"]["request_id"].startswith("req_")
    assert headers["x-request-id"] == [answer["error"]["request_id"]]


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /api/v1/iocs HTTP/1.1\nAuthorization: Bearer a\nAuthorization: Bearer b\n",
        b"GET /api/v1/iocs/%00 HTTP/1.1\n",
        b"GET /api/v1/iocs HTTP/1.1\nX-Padding: " + b"p" * 9000 + b"\n",
    ],
)
def test_gateway_refuses_bad_requests_with_envelope(proxy: Proxy, request_head: bytes) -> None:
    status, headers, body = send(proxy, request_head)
    assert 400 <= status < 500, (proxy.name, status, body)
    if b"X-Padding" in request_head:
        assert status == 431, (proxy.name, status, body)
    assert headers["content-type"][0].startswith("application/json"), (proxy.name, status, body)
    answer = json.loads(body)
    assert set(answer) == {"error"} and answer["error"]["code"], answer


def test_gateway_sends_a_dollar_in_the_path_unexpanded(proxy: Proxy, keys_service: LiveServer) -> None:
    key = mint(keys_service, user())
    status, _, body = get(proxy, b"/api/v1/iocs/a$1b$0", key_header(key))
    assert status == 200, (proxy.name, body)
    # Caddy puts the checked path in place with a regexp replacement: '$' goes as %24, never expanded.
    expected = "/api/v1/iocs/a$1b$0" if proxy.name == "nginx" else "/api/v1/iocs/a%241b%240"
    assert received(body)["uri"] == expected
