"""Restricted keys over HTTP: scopes and allowlists at mint, updateAPIKey, and their checks on whoami.

Every test runs on both engines (the `client` fixture's store is SQLite or PostgreSQL).
"""

from __future__ import annotations

import json

import pytest

from app import SPEC_PATH, create_app
from app.domain.tiers import FREE_SCOPES, TIERS

ENGINES = ("sqlite", "postgresql")
KEYS = "/api/v1/keys"
WHOAMI = "/api/v1/whoami"


@pytest.fixture
def proxied(make_app):
    """An app behind a trusted proxy: the client is the address X-Forwarded-For names."""
    app = make_app(forwarded_allow_ips=("*",))
    with app.test_client() as client:
        yield client, app.app.extensions["services"]


def whoami(client, key, address="203.0.113.7"):
    return client.get(WHOAMI, headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": address})


def update(client, session, key_id, user_id="user-1", **body):
    return client.patch(f"{KEYS}/{key_id}", json=body, cookies=session(user_id))


def test_mint_without_scopes_grants_the_tiers_full_set(mint):
    key = mint()
    assert key["scopes"] == list(FREE_SCOPES)
    assert key["granted_scopes"] is None
    assert key["allowed_ips"] is None


def test_mint_with_scopes_restricts_the_key_and_whoami_shows_them(client, mint):
    key = mint(scopes=["lookup:read", "iocs:read"])
    assert key["scopes"] == key["granted_scopes"] == ["iocs:read", "lookup:read"]
    answer = client.get(WHOAMI, headers={"X-API-Key": key["key"]}).json()["data"]
    assert answer["scopes"] == ["iocs:read", "lookup:read"]
    assert answer["granted_scopes"] == ["iocs:read", "lookup:read"]


@pytest.mark.parametrize("scope", ["taxii:read", "export:stix"])
def test_mint_with_a_scope_above_the_tier_is_a_400_naming_it(client, session, scope):
    response = client.post(KEYS, json={"name": "siem", "scopes": ["iocs:read", scope]}, cookies=session())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["details"]["scope"] == scope
    assert scope in error["message"] and "tier" in error["message"]
    assert client.get(KEYS, cookies=session()).json()["data"] == []


def test_mint_with_an_unknown_scope_is_a_400_naming_it(client, session):
    response = client.post(KEYS, json={"name": "siem", "scopes": ["iocs:write"]}, cookies=session())
    assert response.status_code == 400
    assert "iocs:write" in response.json()["error"]["message"]


def test_mint_with_no_scopes_is_a_400(client, session):
    response = client.post(KEYS, json={"name": "siem", "scopes": []}, cookies=session())
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "scopes"


@pytest.mark.parametrize(
    "entry", ["0.0.0.0/0", "::/0", "300.1.1.1", "example.com", "10.0.0.0/33", "fe80::1%eth0", "010.0.0.1", " 10.0.0.1",
              "::ffff:0:0/96", "::ffff:198.51.100.7/96"]
)
def test_mint_with_a_bad_allowlist_entry_is_a_400_naming_it(client, session, entry):
    response = client.post(KEYS, json={"name": "siem", "allowed_ips": ["192.0.2.1", entry]}, cookies=session())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["details"]["field"] == "allowed_ips.1"
    assert repr(entry) in error["message"]


def test_mint_with_an_allowlist_entry_ending_in_a_newline_is_a_400_naming_it(client, session):
    response = client.post(KEYS, json={"name": "siem", "allowed_ips": ["192.0.2.1", "10.0.0.1\n"]}, cookies=session())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["field"] == "allowed_ips.1"


def test_mint_takes_a_block_written_with_host_bits_as_the_block_it_lies_in(mint):
    key = mint(allowed_ips=["10.0.0.1/24", "::ffff:198.51.100.7", "2001:DB8::1/32", "10.0.0.0/24"])
    assert key["allowed_ips"] == ["10.0.0.0/24", "198.51.100.7", "2001:db8::/32"]


def test_mint_with_more_than_twenty_allowlist_entries_is_a_400(client, session):
    entries = [f"192.0.2.{i}" for i in range(21)]
    response = client.post(KEYS, json={"name": "siem", "allowed_ips": entries}, cookies=session())
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "allowed_ips"


def test_an_allowlisted_key_is_refused_elsewhere_uncounted_and_passes_inside(proxied, session):
    client, _ = proxied
    key = client.post(
        KEYS, json={"name": "siem", "allowed_ips": ["198.51.100.0/24", "2001:db8::7"]}, cookies=session()
    ).json()["data"]
    assert key["allowed_ips"] == ["198.51.100.0/24", "2001:db8::7"]
    refused = whoami(client, key["key"], "203.0.113.7")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "ip_not_allowed"
    assert error["details"] == {"key_id": key["id"], "address": "203.0.113.7"}
    assert "X-RateLimit-Remaining" not in refused.headers
    for address in ("198.51.100.42", "2001:db8::7"):
        allowed = whoami(client, key["key"], address)
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["data"]["allowed_ips"] == ["198.51.100.0/24", "2001:db8::7"]
    # The refused use was not counted: the two admitted ones were, and nothing else.
    stored = client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]
    assert stored["total_requests"] == 2
    assert allowed.headers["X-RateLimit-Remaining"] == str(TIERS["free"].per_minute - 2)


def test_an_allowlist_is_checked_before_the_rate_limit(proxied, session):
    client, _ = proxied
    key = client.post(KEYS, json={"name": "siem", "allowed_ips": ["198.51.100.7"]}, cookies=session()).json()["data"]
    for _ in range(TIERS["free"].per_minute):
        assert whoami(client, key["key"], "198.51.100.7").status_code == 200
    assert whoami(client, key["key"], "198.51.100.7").status_code == 429
    assert whoami(client, key["key"], "203.0.113.9").json()["error"]["code"] == "ip_not_allowed"


def test_a_tier_drop_takes_away_the_scopes_it_no_longer_grants_and_a_rise_gives_them_back(proxied, session):
    client, services = proxied
    services.keys.set_tier("user-1", "pro")
    key = client.post(KEYS, json={"name": "siem", "scopes": ["iocs:read", "taxii:read"]}, cookies=session()).json()
    key = key["data"]
    assert key["scopes"] == ["iocs:read", "taxii:read"]
    services.keys.set_tier("user-1", "free")
    shown = client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]
    assert shown["scopes"] == ["iocs:read"]
    assert shown["granted_scopes"] == ["iocs:read", "taxii:read"]
    assert whoami(client, key["key"]).json()["data"]["scopes"] == ["iocs:read"]
    services.keys.set_tier("user-1", "pro")
    assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["scopes"] == ["iocs:read", "taxii:read"]


def test_a_restricted_key_lacking_the_operations_scope_is_a_403_naming_it(settings, clock, session):
    spec = json.loads(SPEC_PATH.read_text())
    spec["paths"][WHOAMI]["get"]["security"] = [{"BearerAuth": ["lookup:read"]}]
    with create_app(settings, clock=clock, spec=spec).test_client() as client:
        narrow = client.post(KEYS, json={"name": "iocs-only", "scopes": ["iocs:read"]}, cookies=session()).json()
        full = client.post(KEYS, json={"name": "everything"}, cookies=session()).json()
        refused = client.get(WHOAMI, headers={"Authorization": f"Bearer {narrow['data']['key']}"})
        assert refused.status_code == 403
        assert refused.json()["error"]["details"]["missing_scopes"] == ["lookup:read"]
        assert "lookup:read" in refused.json()["error"]["message"]
        assert client.get(WHOAMI, headers={"Authorization": f"Bearer {full['data']['key']}"}).status_code == 200


def test_update_renames_narrows_and_sets_the_allowlist_each_an_event(client, session, mint, settings):
    key = mint(scopes=["iocs:read", "lookup:read", "export:csv"])
    response = update(
        client, session, key["id"], name="partner-acme-iocs", scopes=["iocs:read"], allowed_ips=["198.51.100.0/24"]
    )
    assert response.status_code == 200, response.text
    # Counted against the account's key-management limit, as every cookie operation is.
    assert response.headers["X-RateLimit-Limit"] == str(settings.management_limit_per_minute)
    data = response.json()["data"]
    assert (data["name"], data["scopes"], data["granted_scopes"], data["allowed_ips"]) == (
        "partner-acme-iocs",
        ["iocs:read"],
        ["iocs:read"],
        ["198.51.100.0/24"],
    )
    assert data["key_preview"] == key["key_preview"]
    events = client.get("/api/v1/key-events", cookies=session()).json()["data"]
    changes = {e["type"]: e["details"] for e in events if e["type"] != "minted"}
    assert changes == {
        "renamed": {"previous_name": "prod-splunk-2026q2"},
        "scopes_changed": {"previous_scopes": ["iocs:read", "lookup:read", "export:csv"], "scopes": ["iocs:read"]},
        "allowlist_changed": {"previous_allowed_ips": None, "allowed_ips": ["198.51.100.0/24"]},
    }
    # The key still works, under its new name.
    answer = client.get(WHOAMI, headers={"X-API-Key": key["key"]})
    assert answer.status_code == 403  # the test client's address is outside the new allowlist
    assert answer.json()["error"]["code"] == "ip_not_allowed"


def test_update_cannot_widen_scopes_beyond_those_minted(client, session, mint):
    key = mint(scopes=["iocs:read"])
    response = update(client, session, key["id"], scopes=["iocs:read", "export:csv"])
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "scope_not_granted"
    assert error["details"]["scope"] == "export:csv"
    assert "narrowed" in error["message"]
    assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["scopes"] == ["iocs:read"]


def test_update_of_an_unrestricted_key_narrows_within_its_tier(client, session, mint):
    key = mint()
    assert update(client, session, key["id"], scopes=["taxii:read"]).status_code == 400
    narrowed = update(client, session, key["id"], scopes=["export:json"]).json()["data"]
    assert narrowed["scopes"] == narrowed["granted_scopes"] == ["export:json"]


def test_update_with_null_removes_the_allowlist(client, session, mint):
    key = mint(allowed_ips=["198.51.100.7"])
    data = update(client, session, key["id"], allowed_ips=None).json()["data"]
    assert data["allowed_ips"] is None
    assert client.get(WHOAMI, headers={"X-API-Key": key["key"]}).status_code == 200


def test_update_that_changes_nothing_records_nothing(client, session, mint):
    key = mint(allowed_ips=["198.51.100.7"])
    assert update(client, session, key["id"], name=key["name"], allowed_ips=["198.51.100.7"]).status_code == 200
    types = [e["type"] for e in client.get("/api/v1/key-events", cookies=session()).json()["data"]]
    assert types == ["minted"]


def test_update_to_another_active_keys_name_is_a_409(client, session, mint):
    mint("staging-sentinel")
    key = mint("prod-splunk-2026q2")
    response = update(client, session, key["id"], name="staging-sentinel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "duplicate_name"


def test_update_of_another_accounts_or_a_revoked_key_is_a_404(client, session, mint):
    key = mint()
    assert update(client, session, key["id"], user_id="mallory", name="mine-now").status_code == 404
    client.delete(f"{KEYS}/{key['id']}", cookies=session())
    gone = update(client, session, key["id"], name="back")
    assert gone.status_code == 404
    assert gone.json()["error"]["details"]["revoked"] is True


def test_update_with_an_empty_body_or_unknown_field_is_a_400(client, session, mint):
    key = mint()
    assert update(client, session, key["id"]).status_code == 400
    assert update(client, session, key["id"], expires_in_days=3).status_code == 400


def test_update_from_a_foreign_origin_is_refused_and_changes_nothing(client, session, mint):
    key = mint()
    response = client.patch(
        f"{KEYS}/{key['id']}", json={"name": "hijacked"}, cookies=session(), headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["name"] == key["name"]


def test_rolling_keeps_scopes_and_allowlist(client, session, mint):
    key = mint(scopes=["iocs:read"], allowed_ips=["198.51.100.7"])
    rolled = client.post(f"{KEYS}/{key['id']}/roll", json={}, cookies=session()).json()["data"]
    assert rolled["scopes"] == rolled["granted_scopes"] == ["iocs:read"]
    assert rolled["allowed_ips"] == ["198.51.100.7"]


def test_a_key_sent_as_a_scope_or_an_allowlist_entry_is_never_repeated_back(client, session, mint):
    secret = mint("source")["key"]
    for body in ({"scopes": [secret]}, {"allowed_ips": [secret]}, {"allowed_ips": [secret + "/24"]}):
        response = client.post(KEYS, json={"name": "leaky", **body}, cookies=session())
        assert response.status_code == 400
        assert secret not in response.text
