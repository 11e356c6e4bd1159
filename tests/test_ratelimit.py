from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from app.domain.keys import KeyService
from app.domain.ratelimit import Limits, RateLimiter
from app.domain.tiers import TIERS
from app.store import SQLiteStore
from app.web.ratelimit_headers import rate_limit_headers

DAY_START = 1_794_960_000  # 2026-11-18T00:00:00Z
NOW = DAY_START + 10 * 3600 + 30 * 60 + 15.25  # 10:30:15.25 UTC
MINUTE_END = DAY_START + 10 * 3600 + 31 * 60  # 10:31:00 UTC
DAY_END = DAY_START + 86_400
FREE = Limits(TIERS["free"].per_minute, TIERS["free"].per_day)


def x_headers(decision) -> dict[str, str]:
    """The vendor's X-RateLimit-* headers of a decision."""
    return {name: value for name, value in rate_limit_headers(decision).items() if name.startswith("X-")}


@pytest.fixture
def limiter(store: SQLiteStore) -> RateLimiter:
    return RateLimiter(store)


def test_constants_are_what_they_claim():
    assert datetime.fromtimestamp(DAY_START, UTC) == datetime(2026, 11, 18, tzinfo=UTC)
    assert datetime.fromtimestamp(MINUTE_END, UTC).strftime("%H:%M:%S") == "10:31:00"
    assert Limits(10, 1000) == FREE


def test_free_tier_admits_ten_a_minute_then_refuses(limiter):
    decisions = [limiter.admit("key:a", FREE, NOW) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[-1].blocked_by == "minute"


def test_headers_count_down_remaining_in_the_minute(limiter):
    for expected_remaining in range(9, -1, -1):
        headers = x_headers(limiter.admit("key:a", FREE, NOW))
        assert headers == {
            "X-RateLimit-Limit": "10",
            "X-RateLimit-Remaining": str(expected_remaining),
            "X-RateLimit-Reset": str(MINUTE_END),
        }


def test_refused_request_reports_zero_remaining_and_minute_reset(limiter):
    for _ in range(10):
        limiter.admit("key:a", FREE, NOW)
    refused = limiter.admit("key:a", FREE, NOW)
    assert x_headers(refused) == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0",
                               "X-RateLimit-Reset": str(MINUTE_END)}


def test_reset_is_end_of_minute_even_on_the_minute_boundary(limiter):
    assert x_headers(limiter.admit("key:a", FREE, MINUTE_END - 60))["X-RateLimit-Reset"] == str(MINUTE_END)
    assert x_headers(limiter.admit("key:b", FREE, MINUTE_END - 0.001))["X-RateLimit-Reset"] == str(MINUTE_END)
    assert x_headers(limiter.admit("key:c", FREE, MINUTE_END))["X-RateLimit-Reset"] == str(MINUTE_END + 60)


def test_next_minute_admits_again(limiter):
    for _ in range(10):
        limiter.admit("key:a", FREE, NOW)
    assert not limiter.admit("key:a", FREE, MINUTE_END - 0.001).allowed
    again = limiter.admit("key:a", FREE, MINUTE_END)
    assert again.allowed
    assert x_headers(again)["X-RateLimit-Remaining"] == "9"
    assert x_headers(again)["X-RateLimit-Reset"] == str(MINUTE_END + 60)
    assert again.day.remaining == 1000 - 11  # 10 + this one; the refused request was not counted


def test_subjects_have_separate_windows(limiter):
    for _ in range(10):
        limiter.admit("key:a", FREE, NOW)
    assert limiter.admit("key:b", FREE, NOW).allowed


def test_day_limit_binds_when_exhausted(limiter):
    limits = Limits(per_minute=5, per_day=7)
    first_minute = [limiter.admit("key:a", limits, NOW) for _ in range(5)]
    later = [limiter.admit("key:a", limits, NOW + 60) for _ in range(2)]
    assert all(d.allowed for d in first_minute + later)
    refused = limiter.admit("key:a", limits, NOW + 60)
    assert (refused.allowed, refused.blocked_by) == (False, "day")
    assert x_headers(refused) == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                               "X-RateLimit-Reset": str(DAY_END)}
    assert not limiter.admit("key:a", limits, NOW + 3600).allowed  # still refused hours later
    assert limiter.admit("key:a", limits, DAY_END).allowed  # the next UTC day starts afresh


def test_headers_follow_the_day_when_it_has_less_room_than_the_minute(limiter):
    limits = Limits(per_minute=5, per_day=7)
    for _ in range(5):
        limiter.admit("key:a", limits, NOW)
    headers = x_headers(limiter.admit("key:a", limits, NOW + 60))
    assert (headers["X-RateLimit-Remaining"], headers["X-RateLimit-Reset"]) == ("1", str(DAY_END))


def test_retry_after_is_seconds_to_minute_reset(limiter):
    for _ in range(10):
        limiter.admit("key:a", FREE, NOW)
    refused = limiter.admit("key:a", FREE, NOW)
    assert refused.retry_after(NOW) == MINUTE_END - int(NOW) == 45
    assert refused.retry_after(MINUTE_END - 0.5) == 1


def test_retry_after_is_seconds_to_day_reset_when_day_binds(limiter):
    limits = Limits(per_minute=5, per_day=7)
    for t in (NOW,) * 5 + (NOW + 60,) * 2:
        limiter.admit("key:a", limits, t)
    refused = limiter.admit("key:a", limits, NOW + 60)
    retry = refused.retry_after(NOW + 60)
    assert retry > 0
    assert retry == DAY_END - int(NOW + 60) == int(x_headers(refused)["X-RateLimit-Reset"]) - int(NOW + 60)


def test_waiting_until_reset_admits_again_when_both_windows_are_exhausted(limiter):
    limits = Limits(per_minute=5, per_day=10)
    for t in (NOW,) * 5 + (NOW + 60,) * 5:
        assert limiter.admit("key:a", limits, t).allowed
    refused = limiter.admit("key:a", limits, NOW + 60)
    assert not refused.allowed
    reset = int(x_headers(refused)["X-RateLimit-Reset"])
    assert refused.retry_after(NOW + 60) == reset - int(NOW + 60)
    assert limiter.admit("key:a", limits, reset).allowed


def test_refusal_records_one_rate_limited_event_and_usage_only_for_admitted(store, limiter):
    keys = KeyService(store, lambda: NOW, limiter=limiter)
    minted = keys.mint("user-1", "prod-splunk", None, "req_0")  # free tier: 10 a minute

    def use() -> bool:
        return keys.use(minted.secret, None, "req_x")[1].allowed

    assert [use() for _ in range(12)] == [True] * 10 + [False] * 2
    assert store.get_key("user-1", minted.record.id).total_requests == 10
    types = [e.type for e in store.list_events("user-1", 10, None)]
    assert types.count("rate_limited") == 1


def test_every_key_of_an_account_shares_its_tiers_minute(store, limiter):
    keys = KeyService(store, lambda: NOW, limiter=limiter)
    secrets = [keys.mint("user-1", name, None, "req_0").secret for name in ("siem", "soar", "laptop")]
    decisions = [keys.use(secrets[n % 3], None, f"req_{n}")[1] for n in range(12)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 2
    assert [x_headers(d)["X-RateLimit-Remaining"] for d in decisions] == [str(9 - n) for n in range(10)] + ["0", "0"]
    assert {x_headers(d)["X-RateLimit-Limit"] for d in decisions} == {"10"}
    other = keys.mint("user-2", "siem", None, "req_0").secret
    assert keys.use(other, None, "req_other")[1].allowed


def test_a_tier_change_keeps_the_count_and_applies_the_new_limits(store, limiter):
    keys = KeyService(store, lambda: NOW, limiter=limiter)
    secret = keys.mint("user-1", "siem", None, "req_0").secret
    for _ in range(10):
        keys.use(secret, None, "req_free")
    keys.set_tier("user-1", "pro")
    pro = keys.use(secret, None, "req_pro")[1]
    assert pro.allowed
    assert (pro.minute.limit, pro.minute.remaining, pro.minute.reset) == (1000, 989, MINUTE_END)
    assert (pro.day.limit, pro.day.remaining, pro.day.reset) == (1_000_000, 1_000_000 - 11, DAY_END)
    keys.set_tier("user-1", "free")
    assert keys.use(secret, None, "req_free_again")[1].blocked_by == "minute"


def test_decide_applies_the_limits_it_is_given_to_the_counts_carried_over():
    from app.domain.records import Consumption

    pro = RateLimiter.windows(Limits(1000, 1_000_000), NOW)
    decision = RateLimiter.decide(pro, Consumption(True, {"minute": 11, "day": 500}, None, False), NOW)
    assert x_headers(decision) == {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "989",
                                "X-RateLimit-Reset": str(MINUTE_END)}
    free = RateLimiter.windows(FREE, NOW)
    refused = RateLimiter.decide(free, Consumption(False, {"minute": 11, "day": 500}, "minute", False), NOW)
    assert x_headers(refused)["X-RateLimit-Remaining"] == "0" and refused.minute.remaining == 0


# -- the rule, without a store ---------------------------------------------------------------

def test_rule_admits_while_every_window_has_room_and_counts_this_request():
    from app.domain.ratelimit import count_in
    from app.domain.records import StoredWindow, Window

    windows = (Window("minute", 60, 3), Window("day", 0, 100))
    result = count_in(windows, {"minute": StoredWindow(60, 2, False), "day": StoredWindow(0, 50, False)})
    assert result.allowed and result.counts == {"minute": 3, "day": 51} and result.blocked_by is None


def test_rule_restarts_a_window_that_has_moved_on_and_never_drags_one_back():
    from app.domain.ratelimit import count_in
    from app.domain.records import StoredWindow, Window

    fresh = count_in((Window("minute", 120, 3), Window("day", 0, 100)),
                     {"minute": StoredWindow(60, 3, True), "day": StoredWindow(0, 5, False)})
    assert fresh.allowed and fresh.counts["minute"] == 1 and fresh.starts == {"minute": 120, "day": 0}
    late = count_in((Window("minute", 60, 3), Window("day", 0, 100)),
                    {"minute": StoredWindow(120, 3, False), "day": StoredWindow(0, 5, False)})
    assert not late.allowed and late.starts["minute"] == 120


def test_rule_lets_the_longest_exhausted_window_refuse_and_marks_only_its_first_refusal():
    from app.domain.ratelimit import count_in
    from app.domain.records import StoredWindow, Window

    windows = (Window("minute", 60, 3), Window("day", 0, 10))
    both = {"minute": StoredWindow(60, 3, False), "day": StoredWindow(0, 10, False)}
    first = count_in(windows, both)
    assert not first.allowed and first.blocked_by == "day" and first.first_block
    again = count_in(windows, {**both, "day": StoredWindow(0, 10, True)})
    assert not again.first_block and again.counts == {"minute": 3, "day": 10}


# -- the IETF RateLimit fields, and Retry-After, over HTTP ---------------------------------

FREE_POLICY = '"minute";q=10;w=60, "day";q=1000;w=86400'


def seconds_left(end: int, now: float) -> int:
    return math.ceil(end - now)


def test_ratelimit_fields_count_down_both_windows_of_a_free_key(client, mint, clock):
    key = mint()
    clock.now = MINUTE_END - 17.75  # 10:30:42.25 UTC
    for n in range(10):
        response = client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == FREE_POLICY
        assert response.headers["ratelimit"] == f'"minute";r={9 - n};t=18, "day";r={999 - n};t={DAY_END - MINUTE_END + 18}'
    refused = client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    assert refused.status_code == 429
    assert refused.headers["ratelimit-policy"] == FREE_POLICY
    assert refused.headers["ratelimit"] == f'"minute";r=0;t=18, "day";r=990;t={DAY_END - MINUTE_END + 18}'
    assert refused.headers["retry-after"] == "18"


def test_ratelimit_fields_on_key_management_name_the_accounts_management_limits(make_app, session):
    with make_app(management_limit_per_minute=3, management_limit_per_day=50).test_client() as client:
        response = client.get("/api/v1/keys", cookies=session())
        assert response.headers["ratelimit-policy"] == '"minute";q=3;w=60, "day";q=50;w=86400'
        assert response.headers["ratelimit"].startswith('"minute";r=2;t=')


@pytest.mark.parametrize("second", [0, 0.001, 0.5, 0.999, 31.5, 59, 59.999])
def test_a_client_waiting_exactly_retry_after_is_admitted_and_a_second_less_is_not(client, mint, clock, second):
    key = mint()
    clock.now = MINUTE_END - 60 + second
    for _ in range(10):
        assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 200
    refused = client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    retry_after = int(refused.headers["retry-after"])
    assert retry_after == seconds_left(MINUTE_END, clock()) >= 1
    assert clock() + retry_after >= MINUTE_END
    clock.advance(retry_after - 1)
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 429
    clock.advance(1)
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 200


@pytest.mark.parametrize("second", [0.25, 59.999])
def test_retry_after_waits_for_the_day_when_both_windows_are_exhausted(client, app, mint, clock, second):
    from app.domain.ratelimit import tier_subject

    key = mint()
    clock.now = DAY_END - 3600 + second  # 23:00 UTC and a fraction
    limiter = app.app.extensions["services"].limiter
    for _ in range(1000):  # the account's whole day, in this minute
        limiter.admit(tier_subject("user-1"), Limits(1000, 1000), clock())
    refused = client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    assert refused.status_code == 429 and refused.json()["error"]["details"]["window"] == "day"
    retry_after = int(refused.headers["retry-after"])
    assert retry_after == seconds_left(DAY_END, clock())
    assert refused.headers["ratelimit"] == f'"minute";r=0;t={seconds_left(DAY_END - 3540, clock())}, "day";r=0;t={retry_after}'
    clock.advance(60)  # a new minute does not help
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 429
    clock.advance(retry_after - 61)
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 429
    clock.advance(1)
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 200
