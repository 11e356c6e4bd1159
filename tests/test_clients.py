"""Who the client is: the peer, or behind trusted proxies the rightmost address they did not write."""

from __future__ import annotations

import ipaddress

import pytest

from app.web.clients import MAX_HOPS, Client, Proxies, resolve
from tests.live import metric

ENGINES = ("sqlite", "postgresql")

LOOPBACK = Proxies.parse(["127.0.0.1", "::1"])
CHAIN = Proxies.parse(["127.0.0.1", "10.0.0.0/8"])
ANY = Proxies.parse(["*"])
REPORT = {"keys": ["sk_live_" + "x" * 38], "source": "https://paste.example/p/1"}


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "client"),
    [
        ("127.0.0.1", [], LOOPBACK, Client("127.0.0.1", False, False)),
        ("127.0.0.1", ["203.0.113.9"], LOOPBACK, Client("203.0.113.9", True, False)),
        # The client wrote the leftmost entries; the proxy appended the rightmost.
        ("127.0.0.1", ["127.0.0.1, 10.0.0.1, 203.0.113.9"], LOOPBACK, Client("203.0.113.9", True, False)),
        ("127.0.0.1", ["198.51.100.50", "203.0.113.9"], LOOPBACK, Client("203.0.113.9", True, False)),
        # Through two trusted proxies: the first address neither of them is.
        ("127.0.0.1", ["198.51.100.50, 203.0.113.9, 10.1.2.3"], CHAIN, Client("203.0.113.9", True, False)),
        # Every entry a trusted proxy: the farthest one read.
        ("127.0.0.1", ["10.0.0.7, 10.1.2.3"], CHAIN, Client("10.0.0.7", True, False)),
        # `*`: the peer is a proxy, whatever it is; only the rightmost entry is believed.
        ("192.0.2.1", ["127.0.0.1, 203.0.113.9"], ANY, Client("203.0.113.9", True, False)),
        ("192.0.2.1", ["[2001:db8::1]:4711"], ANY, Client("2001:db8::1", True, False)),
        ("192.0.2.1", ["203.0.113.9:4711"], ANY, Client("203.0.113.9", True, False)),
        ("192.0.2.1", ["::ffff:203.0.113.9"], ANY, Client("203.0.113.9", True, False)),
        # Not an address: its proxy is the client.
        ("127.0.0.1", ["unknown"], LOOPBACK, Client("127.0.0.1", False, False)),
        ("127.0.0.1", ['203.0.113.66" "GET /forged'], LOOPBACK, Client("127.0.0.1", False, False)),
        ("127.0.0.1", ["203.0.113.9, garbage, 10.1.2.3"], CHAIN, Client("10.1.2.3", True, False)),
        # From a peer that is no trusted proxy: the peer, and the real client unknown.
        ("127.0.0.1", ["203.0.113.9"], Proxies(), Client("127.0.0.1", False, True)),
        ("192.0.2.1", ["127.0.0.1"], LOOPBACK, Client("192.0.2.1", False, True)),
        ("testclient", ["203.0.113.9"], LOOPBACK, Client("testclient", False, True)),
    ],
)
def test_the_client_is_the_rightmost_address_no_trusted_proxy_has(peer, forwarded, proxies, client):
    assert resolve(peer, forwarded, proxies) == client


def test_only_the_rightmost_hops_of_forwarded_for_are_read():
    trusted = ", ".join(f"10.0.0.{i}" for i in range(1, 100))
    # 99 trusted proxies (impossible in practice): the client at the far left is never reached.
    assert resolve("127.0.0.1", [f"203.0.113.9, {trusted}"], CHAIN).address == f"10.0.0.{100 - MAX_HOPS}"
    # A 7.9 KB entry is cut short, never parsed whole, and is no address.
    assert resolve("127.0.0.1", ["2001:db8::1" + "1" * 7_900], LOOPBACK) == Client("127.0.0.1", False, False)
    assert resolve("127.0.0.1", ["x" * 7_900 + ", 203.0.113.9"], LOOPBACK).address == "203.0.113.9"
    assert resolve("127.0.0.1", ["198.51.100.50, " + "x" * 7_900, "203.0.113.9"], LOOPBACK).address == "203.0.113.9"
    # Two header lines: the second is what the nearest proxy added to.
    assert resolve("127.0.0.1", ["x" * 7_900, "10.0.0.1, 127.0.0.1"], LOOPBACK).address == "10.0.0.1"


@pytest.mark.parametrize(
    "entry",
    [
        "fe80::1%" + "x" * 850,  # a zone id as long as the header allows
        "fe80::1%eth0",
        "[fe80::1%eth0]:4711",
        "fe80::1%25eth0",
        "203.0.113.9:" + "8" * 60,  # longer than any address and port are written
        "[2001:db8::1]:" + "4" * 60,
    ],
)
def test_a_scoped_or_overlong_forwarded_entry_is_no_client(entry):
    # Not an address a proxy appends: the client is the proxy, as for any other non-address.
    assert resolve("192.0.2.1", [entry], ANY) == Client("192.0.2.1", False, False)
    assert resolve("127.0.0.1", [f"203.0.113.9, {entry}"], LOOPBACK) == Client("127.0.0.1", False, False)


def test_star_trusts_any_peer_but_no_address_a_client_writes():
    assert ANY.trusts_peer(None) and ANY.trusts_peer(ipaddress.ip_address("192.0.2.1"))
    assert not ANY.trusts(ipaddress.ip_address("127.0.0.1"))


def metrics_text(make_app) -> str:
    with make_app().test_client(client=("127.0.0.1", 40000)) as scraper:
        response = scraper.get("/metrics")
        assert response.status_code == 200
        return response.text



def test_leak_reports_behind_a_trusted_proxy_are_limited_per_client_and_counted(make_app, clock):
    before = metrics_text(make_app)
    app = make_app(forwarded_allow_ips=("127.0.0.1",))
    with app.test_client(client=("127.0.0.1", 40001)) as proxy:

        def report(forwarded: str) -> int:
            return proxy.post("/api/v1/leaks", json=REPORT, headers={"X-Forwarded-For": forwarded}).status_code

        assert [report(f"10.9.{i}.1, 203.0.113.9") for i in range(12)] == [202] * 10 + [429] * 2
        assert report("198.51.100.50") == 202  # another client of the same proxy is not jammed
        assert [report(f"2001:db8:7:9:{i:x}::1") for i in range(11)] == [202] * 10 + [429]
        clock.advance(60)
        assert report("203.0.113.9") == 202
    after = metrics_text(make_app)
    assert metric(after, "leak_reports_admitted_total") - metric(before, "leak_reports_admitted_total") == 22
    refused = metric(after, "leak_reports_refused_total", window="minute")
    assert refused - metric(before, "leak_reports_refused_total", window="minute") == 3


def test_leak_reports_refused_by_the_day_are_counted_by_window(make_app):
    before = metrics_text(make_app)
    app = make_app(leak_report_limit_per_minute=5, leak_report_limit_per_day=2)
    with app.test_client(client=("192.0.2.44", 40002)) as client:
        statuses = [client.post("/api/v1/leaks", json=REPORT).status_code for _ in range(3)]
    assert statuses == [202, 202, 429]
    after = metrics_text(make_app)
    assert (
        metric(after, "leak_reports_refused_total", window="day")
        - metric(before, "leak_reports_refused_total", window="day")
        == 1
    )


def test_metrics_refuse_a_request_proxied_by_a_peer_that_is_not_trusted(make_app):
    before = metrics_text(make_app)
    with make_app().test_client(client=("127.0.0.1", 40003)) as local:
        response = local.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert local.get("/metrics").status_code == 200
    assert (
        metric(metrics_text(make_app), "forwarded_for_untrusted_total")
        - metric(before, "forwarded_for_untrusted_total")
        == 1
    )


def test_metrics_answer_by_the_client_a_trusted_proxy_names(make_app):
    app = make_app(forwarded_allow_ips=("192.0.2.10",))
    with app.test_client(client=("192.0.2.10", 40004)) as proxy:
        assert proxy.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200
        assert proxy.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}).status_code == 404
        assert proxy.get("/metrics").status_code == 404  # the proxy itself is not in METRICS_ALLOW


def test_forwarded_proto_is_believed_from_a_trusted_proxy_only(make_app):
    # The key page's own origin is the scheme and Host the request was addressed by.
    origin = {"Origin": "https://keys.example", "Host": "keys.example"}
    for forwarded_allow_ips, peer, status in [(("127.0.0.1",), "127.0.0.1", 401), ((), "127.0.0.1", 403)]:
        app = make_app(forwarded_allow_ips=forwarded_allow_ips)
        with app.test_client(client=(peer, 40005)) as client:
            response = client.post(
                "/api/v1/keys",
                json={"name": "x"},
                headers={**origin, "X-Forwarded-Proto": "https"},
                cookies={"sb-access-token": "not-a-token"},
            )
            assert response.status_code == status, response.text


def test_a_link_local_proxy_is_trusted_whatever_its_zone():
    proxies = Proxies.parse(["fe80::1"])
    assert resolve("fe80::1%eth0", ["203.0.113.9"], proxies) == Client("203.0.113.9", True, False)
