"""What a key may do, decided in plain Python: its scopes in force and its allowlist (app/domain/grants.py)."""

from __future__ import annotations

import pytest

from app.domain.errors import InvalidParameter, ScopeNotGranted
from app.domain.grants import address_allowed, allowed_networks, allowlist, effective_scopes, granted_scopes
from app.domain.records import KeyRecord
from app.domain.tiers import FREE_SCOPES, TIERS


def key(tier: str = "free", scopes=None, allowed_ips=None) -> KeyRecord:
    return KeyRecord(
        "k", "u", "name", "sk_live_Ab12", tier, 0, None, None, 0, None, scopes=scopes, allowed_ips=allowed_ips
    )


def test_effective_scopes_of_an_unrestricted_key_follow_its_tier():
    assert effective_scopes(key("free")) == FREE_SCOPES
    assert effective_scopes(key("pro")) == TIERS["pro"].scopes


def test_effective_scopes_of_a_restricted_key_are_those_its_tier_still_grants():
    restricted = ("iocs:read", "taxii:read")
    assert effective_scopes(key("pro", restricted)) == restricted
    assert effective_scopes(key("free", restricted)) == ("iocs:read",)


def test_granted_scopes_are_kept_in_the_tiers_order():
    assert granted_scopes(["lookup:read", "iocs:read"], FREE_SCOPES, "free") == ("iocs:read", "lookup:read")


@pytest.mark.parametrize(
    ("requested", "error"),
    [
        ([], InvalidParameter),
        (["iocs:write"], InvalidParameter),
        (["taxii:read"], InvalidParameter),
    ],
)
def test_granted_scopes_refuse_none_unknown_and_above_the_tier(requested, error):
    with pytest.raises(error):
        granted_scopes(requested, FREE_SCOPES, "free")


def test_narrowing_refuses_a_scope_of_the_tier_the_key_was_not_granted():
    with pytest.raises(ScopeNotGranted) as refused:
        granted_scopes(["export:csv"], ("iocs:read",), "free", widening=True)
    assert refused.value.details["scope"] == "export:csv"


def test_allowlist_is_canonical_and_refuses_every_address_and_zones():
    assert allowlist(["10.0.0.1/24", "10.0.0.0/24", "::FFFF:10.1.2.3", "2001:db8::1/128"]) == (
        "10.0.0.0/24",
        "10.1.2.3",
        "2001:db8::1",
    )
    for bad in (["0.0.0.0/0"], ["::ffff:0:0/96"], ["fe80::1%eth0"], ["example.com"], [], [f"10.0.0.{i}" for i in range(21)]):
        with pytest.raises(InvalidParameter):
            allowlist(bad)


def test_an_allowlisted_key_passes_only_addresses_inside_it():
    networks = allowed_networks(key(allowed_ips=("198.51.100.0/24", "2001:db8::7")))
    assert address_allowed("198.51.100.9", networks)
    assert address_allowed("::ffff:198.51.100.9", networks)
    assert address_allowed("2001:db8::7", networks)
    assert not address_allowed("203.0.113.1", networks)
    assert not address_allowed(None, networks)
    assert allowed_networks(key()) is None


def test_a_refused_scope_or_entry_that_is_a_key_is_masked():
    secret = "sk_live_" + "A" * 38
    for refuse in (lambda: granted_scopes([secret], FREE_SCOPES, "free"), lambda: allowlist([secret])):
        with pytest.raises(InvalidParameter) as refused:
            refuse()
        assert secret not in str(refused.value) and secret not in repr(refused.value.details)
