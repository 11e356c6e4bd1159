"""The key service: verifying a presented key with the collaborators it was given once."""

from __future__ import annotations

import pytest

from app.domain import keymaterial
from app.domain.errors import ExpiredAPIKey, InvalidAPIKey, RevokedAPIKey
from app.domain.keys import KeyService
from app.domain.ratelimit import RateLimiter

# Tests taking `store` run on SQLite and PostgreSQL.
ENGINES = ("sqlite", "postgresql")


def test_use_counts_the_key_on_the_services_clock_and_limiter(store, clock):
    keys = KeyService(store, clock, limiter=RateLimiter(store))
    minted = keys.mint("user-1", "prod-splunk", None, "req_mint")
    used = keys.use(minted.secret, None, "req_use")
    assert used.key.id == minted.record.id and used.key.user_id == "user-1"
    assert used.decision.allowed and used.decision.at == clock()
    assert used.decision.minute.remaining == used.decision.minute.limit - 1


def test_use_refusal_names_the_key_it_found(store, clock):
    keys = KeyService(store, clock)
    revoked = keys.mint("user-1", "old-laptop", None, "req_mint")
    keys.revoke("user-1", revoked.record.id, "req_revoke")
    expiring = keys.mint("user-1", "ci-runner", 1, "req_mint")
    clock.advance(86_400)
    with pytest.raises(RevokedAPIKey) as refused:
        keys.use(revoked.secret, None, "req_use")
    assert refused.value.key is not None and refused.value.key.id == revoked.record.id
    with pytest.raises(ExpiredAPIKey) as refused_expired:
        keys.use(expiring.secret, None, "req_use")
    assert refused_expired.value.key is not None and refused_expired.value.key.id == expiring.record.id


def test_use_refusal_of_an_unknown_key_names_none(store, clock):
    keys = KeyService(store, clock)
    keys.mint("user-1", "prod-splunk", None, "req_mint")
    with pytest.raises(InvalidAPIKey) as refused:
        keys.use(keymaterial.generate(), None, "req_use")  # well formed, never minted
    assert refused.value.key is None


def test_evolve_makes_what_dataclasses_replace_makes_and_leaves_the_record_alone() -> None:
    import dataclasses

    from app.domain import records
    from app.domain.records import Consumption, KeyRecord, evolve

    key = KeyRecord("k1", "u1", "prod", "sk_live_ab…", "pro", 1, None, None, 5, None, None, None, ("iocs:read",), None)
    used = evolve(key, total_requests=6, last_used_us=99)
    assert used == dataclasses.replace(key, total_requests=6, last_used_us=99)
    assert (key.total_requests, key.last_used_us) == (5, None)
    counted = Consumption(True, {"minute": 1}, None, False)
    assert evolve(counted, usage=(6, 99)) == dataclasses.replace(counted, usage=(6, 99))
    with pytest.raises(TypeError, match="no field total"):
        evolve(key, total=6)
    # evolve skips __init__: it holds only while no record checks or derives anything there.
    for record in vars(records).values():
        if dataclasses.is_dataclass(record):
            assert not hasattr(record, "__post_init__"), record
