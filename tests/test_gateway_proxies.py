"""Drills through real proxies: Debian's nginx and Caddy, configured from `deploy/` as shipped,
in front of a stand-in upstream (`tests/standin.py`), asking a live keys service.

Skipped, saying so, where nginx, caddy or envsubst is missing (`.ci/run` installs them).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.domain.sessions import issue_token
from tests import standin
from tests.live import ROOT, LiveServer, free_port

SECRET = "gateway-proxies-secret-0123456789-0123456789"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "gateway.conf.template"
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"
IDENTITY = ("x-account-id", "x-key-id", "x-key-tier", "x-key-scopes")


class Proxy:
    """A proxy process listening on 127.0.0.1:port, stopped by the test that started it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int) -> None:
        self.name, self.port = name, port
        self.log = open(cwd / f"{name}.out", "wb")  # noqa: SIM115 -- closed by stop()
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.output = cwd / f"{name}.out"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited {self.process.returncode}:\n{self.output.read_text()}")
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).connect()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start:\n{self.output.read_text()}")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()

    def request(self, method: str, uri: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, uri, headers={"Host": "intel.example", **(headers or {})})
            response = conn.getresponse()
            raw = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw) if raw else None
        finally:
            conn.close()


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install nginx caddy gettext-base (.ci/run does)")


@pytest.fixture(scope="module")
def keys_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "1"}
    with LiveServer("serve", tmp_path_factory.mktemp("keys"), env) as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = standin.serve()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def start_nginx(tmp: Path, keys: str, upstream: str) -> Proxy:
    require("nginx", "envsubst")
    port = free_port()
    env = {**os.environ, "LISTEN_PORT": str(port), "KEYS_SERVICE": keys, "UPSTREAM": upstream}
    return Proxy("nginx", standin.nginx_command(NGINX_TEMPLATE.read_text(), tmp, env), env, tmp, port)


def start_caddy(tmp: Path, keys: str, upstream: str) -> Proxy:
    require("caddy")
    port = free_port()
    env = {
        **os.environ,
        "LISTEN_PORT": str(port),
        "KEYS_SERVICE": keys,
        "UPSTREAM": upstream,
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "HOME": str(tmp),
    }
    return Proxy("caddy", ["caddy", "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"], env, tmp, port)


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys_service: LiveServer, upstream: str
) -> Iterator[Proxy]:
    start = start_nginx if request.param == "nginx" else start_caddy
    started = start(tmp_path_factory.mktemp(request.param), f"127.0.0.1:{keys_service.port}", upstream)
    yield started
    started.stop()


def cookie(user: str) -> dict[str, str]:
    return {"Cookie": f"sb-access-token={issue_token(SECRET, user, time.time(), 3600)}"}


def mint(service: LiveServer, user: str, name: str = "prod-gateway", **body: Any) -> dict[str, Any]:
    status, _, answer = service.request("POST", "/api/v1/keys", {"name": name, **body}, cookie(user))
    assert status == 201, answer
    return answer["data"]


def user() -> str:
    """A fresh account per drill: rate limits are the account's."""
    return f"drill-{uuid.uuid4().hex[:12]}"


def assert_envelope(body: Any, code: str) -> None:
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert set(body["error"]) == {"code", "message", "details", "request_id"}


def test_gateway_passes_valid_key_with_identity_and_no_key(proxy: Proxy, keys_service: LiveServer) -> None:
    owner = user()
    key = mint(keys_service, owner)
    for headers, uri in (
        ({"Authorization": f"Bearer {key['key']}"}, "/api/v1/iocs?limit=5"),
        ({"X-API-Key": key["key"]}, "/api/v1/iocs?limit=5"),
        ({}, f"/api/v1/iocs?api_key={key['key']}&limit=5"),
    ):
        status, response_headers, body = proxy.request("GET", uri, headers)
        assert status == 200, (proxy.name, body)
        assert body["data"] == standin.IOCS
        received = {name.lower(): value for name, value in body["received"]["headers"]}
        assert received["x-account-id"] == owner
        assert received["x-key-id"] == key["id"]
        assert received["x-key-tier"] == "free"
        assert "iocs:read" in received["x-key-scopes"].split(" ")
        assert "authorization" not in received and "x-api-key" not in received
        assert key["key"] not in json.dumps(body["received"])
        assert body["received"]["uri"] == "/api/v1/iocs?limit=5"
        assert response_headers["x-ratelimit-limit"] == "10"
        assert '"minute";q=10;w=60' in response_headers["ratelimit-policy"]


@pytest.mark.parametrize("case", ["none", "unknown", "revoked", "expired", "rolled"])
def test_gateway_refuses_unusable_keys_with_401(proxy: Proxy, keys_service: LiveServer, case: str) -> None:
    owner = user()
    key = mint(keys_service, owner) if case != "none" else None
    headers = {} if key is None else {"Authorization": f"Bearer {key['key']}"}
    expected = {
        "none": "missing_api_key",
        "unknown": "invalid_api_key",
        "revoked": "revoked_api_key",
        "expired": "expired_api_key",
        "rolled": "expired_api_key",
    }[case]
    if case == "unknown":
        headers = {"Authorization": "Bearer sk_live_" + "A" * 38}
    elif case == "revoked":
        assert keys_service.request("DELETE", f"/api/v1/keys/{key['id']}", None, cookie(owner))[0] == 204
    elif case == "expired":
        with sqlite3.connect(keys_service.database_path) as db:
            db.execute("UPDATE api_keys SET expires_us = ? WHERE id = ?", (int((time.time() - 60) * 1e6), key["id"]))
    elif case == "rolled":
        rolled = keys_service.request(
            "POST", f"/api/v1/keys/{key['id']}/roll", {"grace_period_minutes": 0}, cookie(owner)
        )
        assert rolled[0] == 201, rolled
    status, response_headers, body = proxy.request("GET", "/api/v1/iocs", headers)
    assert status == 401, (proxy.name, body)
    assert_envelope(body, expected)
    assert response_headers["content-type"].startswith("application/json")


def test_gateway_refuses_missing_scope_naming_it(proxy: Proxy, keys_service: LiveServer) -> None:
    key = mint(keys_service, user())
    status, _, body = proxy.request("GET", "/api/v1/export/stix/latest", {"X-API-Key": key["key"]})
    assert status == 403, (proxy.name, body)
    assert_envelope(body, "insufficient_scope")
    assert body["error"]["details"]["missing_scopes"] == ["export:stix"]
    status, _, body = proxy.request("POST", "/api/v1/iocs", {"X-API-Key": key["key"]})
    assert status == 403
    assert_envelope(body, "route_not_mapped")


def test_gateway_refuses_a_restricted_key_the_routes_scope_naming_it(proxy: Proxy, keys_service: LiveServer) -> None:
    key = mint(keys_service, user(), scopes=["iocs:read", "lookup:read"])
    status, _, body = proxy.request("GET", "/api/v1/iocs?limit=5", {"X-API-Key": key["key"]})
    assert status == 200, (proxy.name, body)
    # export:csv is in the free tier's set, but this key was minted without it.
    status, _, body = proxy.request("GET", "/api/v1/export/csv/latest", {"X-API-Key": key["key"]})
    assert status == 403, (proxy.name, body)
    assert_envelope(body, "insufficient_scope")
    assert body["error"]["details"]["missing_scopes"] == ["export:csv"]
    assert "export:csv" in body["error"]["message"]


def test_gateway_refuses_an_address_outside_the_keys_allowlist(proxy: Proxy, keys_service: LiveServer) -> None:
    owner = user()
    # The proxies reach the client over loopback: 127.0.0.1 is the address they report.
    outside = mint(keys_service, owner, "office-only", allowed_ips=["198.51.100.0/24"])
    inside = mint(keys_service, owner, "loopback-only", allowed_ips=["127.0.0.0/8", "::1"])
    status, _, body = proxy.request("GET", "/api/v1/iocs", {"X-API-Key": outside["key"]})
    assert status == 403, (proxy.name, body)
    assert_envelope(body, "ip_not_allowed")
    # A client cannot claim an address inside the allowlist: the proxy appends the one it saw.
    status, _, body = proxy.request(
        "GET", "/api/v1/iocs", {"X-API-Key": outside["key"], "X-Forwarded-For": "198.51.100.7"}
    )
    assert status == 403, (proxy.name, body)
    assert_envelope(body, "ip_not_allowed")
    status, _, body = proxy.request("GET", "/api/v1/iocs", {"X-API-Key": inside["key"]})
    assert status == 200, (proxy.name, body)
    # The refusals were not counted: the account's first request is the one that passed.
    status, _, answer = keys_service.request("GET", f"/api/v1/keys/{outside['id']}", None, cookie(owner))
    assert answer["data"]["total_requests"] == 0


def test_gateway_gives_exhausted_account_429_with_headers(proxy: Proxy, keys_service: LiveServer) -> None:
    key = mint(keys_service, user())
    headers = {"Authorization": f"Bearer {key['key']}"}
    # Free: 10 a minute. Asked until refused (a minute ending midway admits at most 10 more).
    for _ in range(25):
        status, response_headers, body = proxy.request("GET", "/api/v1/iocs", headers)
        if status != 200:
            break
    assert status == 429, (proxy.name, body)
    assert_envelope(body, "rate_limit_exceeded")
    assert int(response_headers["retry-after"]) == body["error"]["details"]["retry_after"] > 0
    assert response_headers["x-ratelimit-remaining"] == "0"
    assert response_headers["x-ratelimit-limit"] == "10"
    assert '"minute";r=0' in response_headers["ratelimit"]
    assert "ratelimit-policy" in response_headers


def test_gateway_refuses_key_revoked_between_two_requests(proxy: Proxy, keys_service: LiveServer) -> None:
    owner = user()
    key = mint(keys_service, owner)
    headers = {"X-API-Key": key["key"]}
    assert proxy.request("GET", "/api/v1/articles", headers)[0] == 200
    assert keys_service.request("DELETE", f"/api/v1/keys/{key['id']}", None, cookie(owner))[0] == 204
    status, _, body = proxy.request("GET", "/api/v1/articles", headers)
    assert status == 401
    assert_envelope(body, "revoked_api_key")


def test_gateway_client_cannot_forge_upstream_view(proxy: Proxy, keys_service: LiveServer) -> None:
    owner = user()
    key = mint(keys_service, owner)
    forged = {
        "Authorization": f"Bearer {key['key']}",
        "X-Account-Id": "someone-else",
        "X-Key-Id": "forged",
        "X-Key-Tier": "pro",
        "X-Key-Scopes": "taxii:read",
        "X-Forwarded-For": "198.51.100.77",
        "X-Forwarded-Uri": "/api/v1/iocs",
        "X-Forwarded-Method": "GET",
        "X-Original-URI": "/api/v1/iocs",
        "X-Original-Method": "GET",
        "X-Upstream-Uri": "/api/taxii2/collections",
    }
    status, _, body = proxy.request("GET", "/api/v1/lookup/203.0.113.66", forged)
    assert status == 200, (proxy.name, body)
    received = {name.lower(): value for name, value in body["received"]["headers"]}
    assert received["x-account-id"] == owner
    assert received["x-key-id"] == key["id"]
    assert received["x-key-tier"] == "free"
    assert "taxii:read" not in received["x-key-scopes"]
    assert "198.51.100.77" not in received.get("x-forwarded-for", "")
    assert body["received"]["uri"] == "/api/v1/lookup/203.0.113.66"
    # A forged X-Forwarded-Uri cannot make a TAXII request pass as an IOC read either.
    status, _, body = proxy.request("GET", "/api/taxii2/collections/", forged)
    assert status == 403
    assert_envelope(body, "insufficient_scope")


def test_gateway_upstream_sees_the_path_that_was_checked(proxy: Proxy, keys_service: LiveServer) -> None:
    key = mint(keys_service, user())
    status, _, body = proxy.request("GET", "/api/v1/iocs/../../taxii2/collections/", {"X-API-Key": key["key"]})
    assert status == 403, (proxy.name, body)
    assert_envelope(body, "insufficient_scope")


def test_gateway_strips_a_query_key_from_uri_and_logs(proxy: Proxy, keys_service: LiveServer) -> None:
    key = mint(keys_service, user())
    status, _, body = proxy.request("GET", f"/api/v1/statistics/daily?api_key={key['key']}")
    assert status == 200, (proxy.name, body)
    assert body["received"]["uri"] in ("/api/v1/statistics/daily", "/api/v1/statistics/daily?")
    status, _, body = proxy.request("GET", f"/api/v1/statistics/daily?from=2026-12-01&api_key={key['key']}&to=x%20y")
    assert status == 200, (proxy.name, body)
    assert body["received"]["uri"] == "/api/v1/statistics/daily?from=2026-12-01&to=x%20y"
    logs = proxy.output.parent
    for log in [*logs.glob("*.log"), proxy.output]:
        assert key["key"] not in log.read_text(errors="replace"), log
