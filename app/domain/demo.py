"""Demo data: an account holding a key in every state a key-management UI must render."""

from __future__ import annotations

from app.domain.keys import KeyService
from app.domain.ratelimit import Limits, RateLimiter, tier_subject
from app.domain.store import Store
from app.domain.tiers import get_tier

DEMO_USER = "demo-user"
DAY = 86_400
REQUEST_ID = "req_seeddemo"
LEFT_TODAY = 5  # requests the account's keys have left today once seeded: near its limit


def seed_demo(store: Store, user_id: str, now: float) -> list[str]:
    """Fill `user_id`'s account with demo keys, events and usage; return what was added.

    Idempotent: a key already there (active, expired or revoked, by name) is not added again,
    and the usage comes with the first key, so a second run adds nothing.
    """
    keys = KeyService(store, lambda: now)
    keys.account(user_id)
    present = {record.name for record in keys.list(user_id, 100, None).items}
    present |= {event.key_name for event in keys.events(user_id, 100, None).items if event.type == "revoked"}
    added: list[str] = []

    def at(seconds_ago: float) -> KeyService:
        return KeyService(store, lambda: now - seconds_ago)

    if "prod-splunk-2026q2" not in present:
        minted = at(20 * DAY).mint(user_id, "prod-splunk-2026q2", 90, REQUEST_ID)
        _use(store, keys, minted.secret, user_id, now)
        added.append("prod-splunk-2026q2: active, used, its account near today's limit, one rate-limit refusal")
    if "staging-sentinel" not in present:
        at(85 * DAY).mint(user_id, "staging-sentinel", 90, REQUEST_ID)
        added.append("staging-sentinel: expires within a week")
    if "partner-acme-30d" not in present:
        at(40 * DAY).mint(user_id, "partner-acme-30d", 30, REQUEST_ID)
        added.append("partner-acme-30d: expired")
    if "tom-laptop-dev" not in present:
        revoked = at(10 * DAY).mint(user_id, "tom-laptop-dev", None, REQUEST_ID)
        at(2 * DAY).revoke(user_id, revoked.record.id, REQUEST_ID)
        added.append("tom-laptop-dev: revoked")
    if "partner-acme-iocs" not in present:
        at(6 * DAY).mint(user_id, "partner-acme-iocs", 60, REQUEST_ID, scopes=["iocs:read", "lookup:read"])
        added.append("partner-acme-iocs: restricted to iocs:read and lookup:read")
    if "soc-office-only" not in present:
        at(4 * DAY).mint(user_id, "soc-office-only", None, REQUEST_ID, allowed_ips=["198.51.100.0/24", "2001:db8::/48"])
        added.append("soc-office-only: usable only from 198.51.100.0/24 and 2001:db8::/48")
    if "key1" not in present:
        at(3600).mint(user_id, "key1", None, REQUEST_ID)
        added.append("key1: a name the naming convention calls useless")
    return added


def _use(store: Store, keys: KeyService, secret: str, user_id: str, now: float) -> None:
    """Use the key: a burst an hour ago that hit the minute limit, a few calls since, then the
    account's day window filled to within LEFT_TODAY of its limit."""
    limiter = RateLimiter(store)
    tier = get_tier(keys.account(user_id).tier)

    def at(moment: float) -> KeyService:
        return KeyService(store, lambda: moment, limiter=limiter)

    # Oldest first: the limiter never counts a request in a window older than one it holds.
    burst = now - 3600 - (now % 60)
    for i in range(tier.per_minute + 1):  # the last one is refused, and recorded as an event
        at(burst + i / 100).use(secret, None, REQUEST_ID)
    for minutes_ago in (45, 30, 12, 5, 2):
        at(now - 60 * minutes_ago).use(secret, None, REQUEST_ID)
    day = RateLimiter.windows(Limits(tier.per_minute, tier.per_day), now)[1]
    now_us = int(now * 1_000_000)
    counted = store.consume(tier_subject(user_id), [day], now_us).counts["day"]
    while counted < tier.per_day - LEFT_TODAY:
        counted = store.consume(tier_subject(user_id), [day], now_us).counts["day"]
