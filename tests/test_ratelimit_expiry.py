"""Rate-limit windows are deleted once they have passed, on either engine; subjects are bounded."""

from __future__ import annotations

import pytest

from app.domain.ratelimit import EXPIRY_INTERVAL, MAX_SUBJECT_LENGTH, Limits, RateLimiter, leak_report_subject

ENGINES = ("sqlite", "postgresql")

DAY_START = 1_794_960_000  # 2026-11-18T00:00:00Z
NOW = DAY_START + 10 * 3600 + 30 * 60 + 15.25  # 10:30:15.25 UTC
LEAKS = Limits(10, 1_000)


def rows(query) -> int:
    return query("SELECT count(*) FROM rate_windows")[0][0]


def test_a_thousand_addresses_leave_no_rows_once_their_windows_have_passed(store, query):
    limiter = RateLimiter(store)
    for i in range(1_000):
        assert limiter.admit(leak_report_subject(f"10.1.{i // 256}.{i % 256}"), LEAKS, NOW).allowed
    assert rows(query) == 2_000

    limiter.admit(leak_report_subject("198.51.100.7"), LEAKS, NOW + 60)  # the next minute: minutes expire
    assert rows(query) == 1_000 + 2

    limiter.admit(leak_report_subject("198.51.100.7"), LEAKS, DAY_START + 86_400 + 1)  # the next day
    assert rows(query) == 2  # this request's own windows


def test_expiry_keeps_the_windows_still_counting(store):
    limiter = RateLimiter(store)
    subject = leak_report_subject("203.0.113.9")
    for _ in range(5):
        limiter.admit(subject, LEAKS, NOW)
    # Another subject's request a minute later deletes passed minutes, not this day's count.
    limiter.admit(leak_report_subject("198.51.100.7"), LEAKS, NOW + EXPIRY_INTERVAL)
    decision = limiter.admit(subject, LEAKS, NOW + EXPIRY_INTERVAL + 1)
    assert (decision.minute.remaining, decision.day.remaining) == (9, 1_000 - 6)
    blocked = [limiter.admit(subject, LEAKS, NOW + EXPIRY_INTERVAL + 2).allowed for _ in range(10)]
    assert blocked == [True] * 9 + [False]
    limiter.expire(NOW + EXPIRY_INTERVAL + 3)  # within the same minute: the full minute stays full
    assert not limiter.admit(subject, LEAKS, NOW + EXPIRY_INTERVAL + 4).allowed


def test_expiry_runs_at_most_once_a_minute_per_limiter(store, query):
    limiter = RateLimiter(store)
    limiter.admit(leak_report_subject("203.0.113.9"), LEAKS, NOW)  # 10:30:15, and expiry
    limiter.admit(leak_report_subject("203.0.113.10"), LEAKS, NOW + EXPIRY_INTERVAL - 5)  # 10:31:10
    assert rows(query) == 4  # 10:30's minute has passed, but no expiry yet
    limiter.admit(leak_report_subject("203.0.113.11"), LEAKS, NOW + EXPIRY_INTERVAL)  # 10:31:15, and expiry
    assert sorted(query('SELECT subject, "window" FROM rate_windows')) == [
        ("leaks:203.0.113.10", "day"),
        ("leaks:203.0.113.10", "minute"),
        ("leaks:203.0.113.11", "day"),
        ("leaks:203.0.113.11", "minute"),
        ("leaks:203.0.113.9", "day"),
    ]


def test_a_subject_longer_than_the_bound_is_refused_before_the_store(store, query):
    with pytest.raises(ValueError, match="at most"):
        RateLimiter(store).admit("leaks:" + "x" * MAX_SUBJECT_LENGTH, LEAKS, NOW)
    assert rows(query) == 0


@pytest.mark.parametrize(
    ("address", "subject"),
    [
        ("198.51.100.7", "leaks:198.51.100.7"),
        ("::ffff:198.51.100.7", "leaks:198.51.100.7"),  # IPv4-mapped IPv6 is the IPv4 address
        ("2001:db8:7:9:1234:5678:9abc:def0", "leaks:2001:db8:7:9::/64"),
        ("2001:db8:7:9::1", "leaks:2001:db8:7:9::/64"),
        ("2001:DB8:7:A::1", "leaks:2001:db8:7:a::/64"),
        ("testclient", "leaks:testclient"),
        pytest.param("x" * 7_900, "leaks:" + "x" * 45, id="7.9KB-no-address"),
    ],
)
def test_leak_reports_count_per_ipv4_address_and_per_ipv6_64(address, subject):
    assert leak_report_subject(address) == subject


def test_passed_windows_are_deleted_in_batches_until_none_is_left(store, query, monkeypatch):
    from app.store import sql

    monkeypatch.setattr(sql, "EXPIRY_BATCH", 7)
    limiter = RateLimiter(store)
    for i in range(30):
        limiter.admit(leak_report_subject(f"10.2.0.{i}"), LEAKS, NOW)
    assert store.expire_windows(limiter.windows(LEAKS, DAY_START + 86_400)) == 60
    assert rows(query) == 0
