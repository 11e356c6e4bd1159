"""Who the client is behind a proxy: the leak-report limit and /metrics, against real servers.

Each server here is reached on 127.0.0.1, as a proxy on the same machine reaches it; the
X-Forwarded-For values are what a client writes followed by what the proxy appends (the
client's real address, rightmost).
"""

from __future__ import annotations

import http.client
import json
import sqlite3
from collections.abc import Iterator

import pytest

from tests.live import LiveServer

SECRET = "proxies-test-secret-0123456789-0123456789"
LEAKS = "/api/v1/leaks"
REPORT = {"keys": ["sk_live_" + "x" * 38], "source": "https://paste.example/p/1"}


@pytest.fixture(scope="module")
def any_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # FORWARDED_ALLOW_IPS=* : whatever reaches the server is a proxy (one hop).
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "1", "FORWARDED_ALLOW_IPS": "*"}
    with LiveServer("serve", tmp_path_factory.mktemp("any"), env) as server:
        yield server


@pytest.fixture(scope="module")
def unset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # As the systemd unit shipped before: HOST=127.0.0.1 behind a proxy, FORWARDED_ALLOW_IPS unset.
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "1"}
    with LiveServer("serve", tmp_path_factory.mktemp("unset"), env) as server:
        yield server


@pytest.fixture(scope="module")
def loopback_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The development server behind a proxy on this machine, named as it should be.
    env = {"SUPABASE_JWT_SECRET": SECRET, "FORWARDED_ALLOW_IPS": "127.0.0.1,::1"}
    with LiveServer("run", tmp_path_factory.mktemp("loopback"), env) as server:
        yield server


def metrics_status(server: LiveServer, headers: dict[str, str] | None = None) -> int:
    """The status /metrics answers (its 200 is Prometheus text, its 404 the error envelope)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        if response.status == 404:
            assert json.loads(body)["error"]["code"] == "not_found"
        return response.status
    finally:
        conn.close()


def report(server: LiveServer, forwarded_for: str) -> int:
    return server.request("POST", LEAKS, REPORT, {"X-Forwarded-For": forwarded_for})[0]


def test_rotating_the_leftmost_forwarded_for_does_not_dodge_the_leak_report_limit(any_proxy, loopback_proxy):
    for server in (any_proxy, loopback_proxy):
        statuses = [report(server, f"10.9.{i}.1, 198.51.100.7") for i in range(25)]
        assert statuses == [202] * 10 + [429] * 15


def test_naming_a_scanners_address_does_not_spend_its_allowance(any_proxy, loopback_proxy):
    for server in (any_proxy, loopback_proxy):
        for _ in range(12):
            report(server, "198.51.100.50, 203.0.113.9")  # an attacker at 203.0.113.9 names the scanner
        assert report(server, "198.51.100.50") == 202  # the scanner, through the same proxy


def test_ipv6_addresses_of_one_64_share_one_leak_report_limit(any_proxy):
    statuses = [report(any_proxy, f"2001:db8:7:9:{i:x}::1") for i in range(12)]
    assert statuses == [202] * 10 + [429] * 2
    assert report(any_proxy, "2001:db8:7:a::1") == 202  # the next /64 is another client


def test_a_huge_forwarded_for_stores_a_bounded_subject(any_proxy):
    before = any_proxy.database_path.stat().st_size
    for i in range(200):
        report(any_proxy, f"{i:04d}" + "x" * 7900)
    with sqlite3.connect(any_proxy.database_path) as conn:
        (longest,) = conn.execute("SELECT max(length(subject)) FROM rate_windows").fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM rate_windows").fetchone()
    assert longest <= 64
    assert rows < 50
    assert any_proxy.database_path.stat().st_size - before < 200_000


def test_a_forged_forwarded_for_does_not_open_metrics(any_proxy, loopback_proxy):
    for server in (any_proxy, loopback_proxy):
        assert metrics_status(server, {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}) == 404
    assert metrics_status(loopback_proxy, {"X-Forwarded-For": "127.0.0.1"}) == 200
    assert metrics_status(loopback_proxy) == 200  # the proxy's own host


def test_metrics_do_not_answer_clients_proxied_from_loopback_when_no_proxy_is_trusted(unset):
    assert metrics_status(unset, {"X-Forwarded-For": "203.0.113.9"}) == 404
    assert metrics_status(unset) == 200  # a scraper on this machine, not proxied
