"""Probes and metrics as an orchestrator and a scraper see them."""

from __future__ import annotations

import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.domain.sessions import issue_token
from app.version import __version__
from tests.live import LiveServer

SECRET = "probe-test-secret-0123456789-0123456789-abc"


def test_healthz_answers_head_with_the_headers_of_get_and_no_body(client):
    get, head = client.get("/healthz"), client.head("/healthz")
    assert get.status_code == head.status_code == 200
    assert get.json() == {"status": "ok", "version": __version__}
    assert head.content == b"" and head.headers["content-length"] == get.headers["content-length"]


def test_readyz_answers_ready_and_head(client):
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.head("/readyz").status_code == 200


def test_head_elsewhere_is_still_refused(client):
    assert client.head("/api/v1/keys").status_code == 405


@pytest.mark.sqlite_only
def test_readyz_is_503_in_the_envelope_while_the_store_is_locked(client, settings):
    locker = sqlite3.connect(settings.database_path, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        response = client.get("/readyz")
        assert time.monotonic() - started < 3
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "service_unavailable"
        assert response.headers["retry-after"]
        assert client.get("/healthz").status_code == 200  # alive all the same
    finally:
        locker.rollback()
        locker.close()
    assert client.get("/readyz").status_code == 200


def test_metrics_are_hidden_from_clients_outside_metrics_allow(client):
    # The test client's address is not an IP address in the default (loopback) list.
    response = client.get("/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def cookie(user: str) -> dict[str, str]:
    return {"Cookie": f"sb-access-token={issue_token(SECRET, user, time.time(), 3600)}"}


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def scrape(server: LiveServer) -> str:
    import urllib.request

    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/plain")
        return response.read().decode()


def test_metrics_sum_every_worker_under_load_and_probes_follow_the_store(tmp_path):
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2"}
    with LiveServer("serve", tmp_path, env) as server:
        owner = cookie("metrics-owner")
        key = server.request("POST", "/api/v1/keys", {"name": "scraped"}, owner)[2]["data"]
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(lambda _: server.request("GET", "/api/v1/whoami", headers={"X-API-Key": key["key"]})[0],
                                     range(40)))
        assert statuses.count(200) == 10 and statuses.count(429) == 30
        assert server.request("DELETE", f"/api/v1/keys/{key['id']}", headers=owner)[0] == 204
        text = scrape(server)
        assert metric(text, "http_requests_total", operation="getCurrentKey", status="200") == 10
        assert metric(text, "http_requests_total", operation="getCurrentKey", status="429") == 30
        assert metric(text, "rate_limit_refusals_total", operation="getCurrentKey") == 30
        assert metric(text, "api_keys_minted_total") == 1 and metric(text, "api_keys_revoked_total") == 1
        assert metric(text, "http_request_duration_seconds_count", operation="getCurrentKey") == 40

        locker = sqlite3.connect(server.database_path, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            status, headers, body = server.request("GET", "/readyz")
            assert status == 503 and body["error"]["code"] == "service_unavailable"
            assert server.request("GET", "/healthz")[0] == 200
            assert server.request("HEAD", "/readyz")[0] == 503
        finally:
            locker.rollback()
            locker.close()
        assert server.request("GET", "/readyz")[0] == 200
        assert server.request("HEAD", "/healthz")[0] == 200
        assert metric(scrape(server), "store_errors_total", operation="getReadiness") == 2


def test_metrics_answer_404_to_an_address_metrics_allow_leaves_out(tmp_path):
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "1",
           "METRICS_ALLOW": "10.0.0.0/8"}
    with LiveServer("serve", tmp_path, env) as server:
        status, _, body = server.request("GET", "/metrics")
        assert status == 404 and body["error"]["code"] == "not_found"


def test_metrics_allow_must_be_networks(tmp_path):
    from app.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="METRICS_ALLOW"):
        Settings.from_env({"METRICS_ALLOW": "localhost", "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/k.db"})


def test_metrics_answer_the_development_server_which_checks_every_answer_against_the_contract(tmp_path):
    # `make run` validates responses: the metrics page's media type must be the contract's.
    with LiveServer("run", tmp_path, {"SUPABASE_JWT_SECRET": SECRET}) as server:
        text = scrape(server)
        assert metric(text, "http_requests_total") >= 0 and "# TYPE http_requests_total counter" in text
