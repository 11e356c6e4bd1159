"""Probes and metrics as an orchestrator and a scraper see them."""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from app.config import Settings
from app.domain.errors import StoreUnavailable
from app.domain.sessions import issue_token
from app.version import __version__
from tests.live import LiveServer, metric

SECRET = "probe-test-secret-0123456789-0123456789-abc"
ENGINES = ("sqlite", "postgresql")


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


@contextmanager
def write_lock_held(settings: Settings) -> Iterator[None]:
    """Hold the store's write lock, as a writer stuck mid-transaction in another process would."""
    if settings.engine == "postgresql":
        import psycopg

        with psycopg.connect(settings.database_url) as conn, conn.transaction():
            # Every write (and every SELECT ... FOR UPDATE) waits behind this; plain reads do not.
            conn.execute("LOCK TABLE accounts, api_keys, key_events, rate_windows IN EXCLUSIVE MODE")
            yield
        return
    # The writers' queue (an flock beside the database), then SQLite's own write lock.
    with open(settings.database_path.with_name(settings.database_path.name + ".write-lock"), "a+b") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        locker = sqlite3.connect(settings.database_path, timeout=0, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            yield
        finally:
            locker.close()
            fcntl.flock(turn, fcntl.LOCK_UN)


def test_readyz_answers_ready_while_the_write_lock_is_held(client, settings):
    with write_lock_held(settings):
        # Were the probe queued behind the lock, it would give up at its 1 s bound: a 503.
        response = client.get("/readyz")
        assert response.status_code == 200 and response.json() == {"status": "ready"}
        assert client.head("/readyz").status_code == 200


@pytest.mark.postgresql_only
def test_readiness_checks_take_no_transaction_id_on_postgresql(store, settings):
    import psycopg

    def next_xid() -> int:  # the cluster's next transaction id; reading it assigns none
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            return int(conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()[0])

    before = next_xid()
    for _ in range(200):
        store.check_ready(1.0)
    # A check that took one would advance it by 200; other sessions of the cluster may add a few.
    assert next_xid() - before < 200


def count_checks(app, monkeypatch, failing: list[bool]) -> list[float]:
    """Count the store's readiness checks (each fails while `failing[0]`); return the list of calls."""
    store = app.app.extensions["services"].store
    calls: list[float] = []
    check = store.check_ready

    def counted(timeout_s: float) -> None:
        calls.append(timeout_s)
        if failing[0]:
            raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.")
        check(timeout_s)

    monkeypatch.setattr(store, "check_ready", counted)
    return calls


def test_repeated_readyz_within_a_second_are_answered_without_the_store(app, client, clock, monkeypatch):
    calls = count_checks(app, monkeypatch, [False])
    for _ in range(20):
        assert client.get("/readyz").status_code == 200
        assert client.head("/readyz").status_code == 200
        clock.advance(0.04)  # 40 probes over 0.8 s
    assert calls == [1.0]  # one check, bounded at 1 s
    clock.advance(0.25)  # a second and a bit since the check
    assert client.get("/readyz").status_code == 200
    assert len(calls) == 2


def test_readyz_is_503_in_the_envelope_while_the_store_cannot_answer_and_ready_a_second_after(
        app, client, clock, monkeypatch):
    failing = [True]
    calls = count_checks(app, monkeypatch, failing)
    for _ in range(5):
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "service_unavailable"
        assert response.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200  # alive all the same
    assert len(calls) == 1  # a failure is remembered too: a flood of probes does not hammer a sick store
    failing[0] = False
    assert client.get("/readyz").status_code == 503  # still the last check's answer
    clock.advance(1.0)
    assert client.get("/readyz").status_code == 200 and len(calls) == 2


def test_readyz_is_an_internal_error_in_the_envelope_when_the_stores_tables_are_gone(app, client, settings):
    # Its tables gone (a schema dropped, a file replaced): a fault to look into, not an outage
    # to wait out (503), and never ready; said in the envelope, the database's words kept out.
    if settings.engine == "postgresql":
        import psycopg

        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute("DROP TABLE accounts CASCADE")
    else:
        import sqlite3

        conn = sqlite3.connect(settings.database_path)
        conn.execute("DROP TABLE accounts")
        conn.commit()
        conn.close()
    response = client.get("/readyz")
    assert response.status_code == 500, response.text
    assert response.json()["error"]["code"] == "internal_error" and "accounts" not in response.text
    assert client.get("/healthz").status_code == 200


def test_readyz_checks_again_when_the_clock_goes_back(app, client, clock, monkeypatch):
    calls = count_checks(app, monkeypatch, [False])
    assert client.get("/readyz").status_code == 200
    clock.advance(-3600)  # the wall clock set back an hour: the last check is not good for an hour
    assert client.get("/readyz").status_code == 200 and len(calls) == 2


def test_metrics_are_hidden_from_clients_outside_metrics_allow(client):
    # The test client's address is not an IP address in the default (loopback) list.
    response = client.get("/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def cookie(user: str) -> dict[str, str]:
    return {"Cookie": f"sb-access-token={issue_token(SECRET, user, time.time(), 3600)}"}



def scrape(server: LiveServer) -> str:
    import urllib.request

    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as response:
        assert response.headers.get_all("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]
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
        # A worker counts a request as its answer leaves, so a scrape answered by the other
        # worker in that instant may not see it yet: scrape again, for a few seconds at most.
        deadline = time.monotonic() + 5
        text = scrape(server)
        while metric(text, "api_keys_revoked_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            text = scrape(server)
        assert metric(text, "http_requests_total", operation="getCurrentKey", status="200") == 10
        assert metric(text, "http_requests_total", operation="getCurrentKey", status="429") == 30
        assert metric(text, "rate_limit_refusals_total", operation="getCurrentKey") == 30
        assert metric(text, "api_keys_minted_total") == 1 and metric(text, "api_keys_revoked_total") == 1
        assert metric(text, "http_request_duration_seconds_count", operation="getCurrentKey") == 40

        # A writer stuck holding the write lock does not make the workers unready, nor their probes wait.
        live = Settings(jwt_secret=SECRET, database_path=server.database_path)
        with write_lock_held(live):
            for _ in range(4):
                status, _, body = server.request("GET", "/readyz")
                assert status == 200 and body == {"status": "ready"}
                assert server.request("HEAD", "/readyz")[0] == 200
            assert server.request("GET", "/healthz")[0] == 200
        assert server.request("HEAD", "/healthz")[0] == 200
        assert metric(scrape(server), "store_errors_total", operation="getReadiness") == 0
        assert metric(scrape(server), "http_requests_total", operation="getReadiness", status="200") == 8


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


def test_metrics_name_their_media_type_and_charset_once(app):
    with app.test_client(client=("127.0.0.1", 50000)) as loopback:
        response = loopback.get("/metrics")
    assert response.status_code == 200
    assert response.headers.get_list("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]


def test_every_status_the_probes_send_is_documented_for_get_and_head(tmp_path):
    import json

    from app import SPEC_PATH
    from tests.rawhttp import exchange, request_bytes

    paths = json.loads(SPEC_PATH.read_text())["paths"]
    env = {"APP_ENV": "development", "SUPABASE_JWT_SECRET": SECRET, "TRUSTED_HOSTS": "127.0.0.1"}
    smuggled = [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")]
    with LiveServer("run", tmp_path, env) as server:
        for path in ("/healthz", "/readyz"):
            for method in ("GET", "HEAD"):
                asked = {
                    "both lengths": request_bytes(method, path, smuggled) + b"0\r\n\r\n",
                    "bad Prefer": request_bytes(method, path, [(b"Prefer", b"code=abc")]),
                    "wrong Host": request_bytes(method, path).replace(b"Host: 127.0.0.1", b"Host: evil.example"),
                }
                for what, data in asked.items():
                    answer = exchange(server.port, data)
                    assert answer.status is not None and answer.status >= 400, (path, method, what, str(answer))
                    documented = paths[path][method.lower()]["responses"]
                    assert str(answer.status) in documented, (path, method, what, answer.status)
                    if method == "HEAD":
                        assert answer.body == b"", (path, what)


def test_key_counters_count_rolls_as_mints_and_leaked_keys_as_revocations(client, session):
    from prometheus_client import REGISTRY

    def counted() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("api_keys_minted_total") or 0.0,
                REGISTRY.get_sample_value("api_keys_revoked_total") or 0.0)

    minted_before, revoked_before = counted()
    owner = session("counted-user")
    first = client.post("/api/v1/keys", json={"name": "counted"}, cookies=owner).json()["data"]
    rolled = client.post(f"/api/v1/keys/{first['id']}/roll", json={"grace_period_minutes": 60}, cookies=owner)
    assert rolled.status_code == 201, rolled.text
    assert counted()[0] - minted_before == 2  # the mint, and the roll's replacement
    # A leak report naming the replacement twice and a junk candidate revokes one key.
    leaked = client.post("/api/v1/leaks", json={"keys": [rolled.json()["data"]["key"]] * 2 + ["junk"]})
    assert leaked.status_code == 202 and leaked.json() == {"data": {"received": 3}}
    assert counted()[1] - revoked_before == 1
    assert client.delete(f"/api/v1/keys/{first['id']}", cookies=owner).status_code == 204
    assert counted()[1] - revoked_before == 2
