"""The contract's schemas rendered from the domain's records, where the contract is known."""

from __future__ import annotations

import json
from pathlib import Path

from app.domain.keys import KeyService
from app.domain.ratelimit import Decision, WindowState
from app.domain.records import KeyEvent
from handlers.render import render_api_key_created, render_api_key_info, render_current_key, render_key_event

SCHEMAS = json.loads((Path(__file__).resolve().parent.parent / "openapi.json").read_text())["components"]["schemas"]
NOW = 1_795_000_000.0


def fields_of(name: str) -> tuple[set[str], set[str]]:
    """The required and the allowed properties of a contract schema (its allOf parts joined)."""
    schema = SCHEMAS[name]
    parts = [SCHEMAS[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p for p in schema.get("allOf", [schema])]
    required = {f for part in parts for f in part.get("required", ())}
    allowed = {f for part in parts for f in part.get("properties", {})}
    return required, allowed


def assert_fits(rendered: dict, name: str) -> None:
    required, allowed = fields_of(name)
    assert required <= set(rendered) <= allowed, (name, sorted(set(rendered) ^ allowed))


def test_render_api_key_info_of_an_active_key_states_its_tiers_terms(store):
    keys = KeyService(store, lambda: NOW)
    minted = keys.mint("user-1", "prod-splunk", 30, "req_mint")
    rendered = render_api_key_info(keys.info(minted.record))
    assert_fits(rendered, "APIKeyInfo")
    assert rendered["status"] == "active" and rendered["tier"] == "free"
    assert (rendered["rate_limit_per_minute"], rendered["rate_limit_per_day"]) == (10, 1_000)
    assert "iocs:read" in rendered["scopes"] and "export:stix" not in rendered["scopes"]
    assert rendered["created_at"] == "2026-11-18T11:06:40.000000Z" and rendered["last_used_at"] is None
    assert "revoked_at" not in rendered and "replaced_by" not in rendered


def test_render_api_key_info_of_a_rolled_then_revoked_key_says_when_why_and_by_what(store):
    keys = KeyService(store, lambda: NOW)
    minted = keys.mint("user-1", "prod-splunk", None, "req_mint")
    rolled = keys.roll("user-1", minted.record.id, 60, "req_roll")
    keys.revoke("user-1", minted.record.id, "req_revoke")
    rendered = render_api_key_info(keys.info(store.get_key("user-1", minted.record.id, include_revoked=True)))
    assert_fits(rendered, "APIKeyInfo")
    assert rendered["status"] == "revoked" and rendered["revoked_reason"] == "owner"
    assert rendered["revoked_at"] == "2026-11-18T11:06:40.000000Z"
    assert rendered["replaced_by"] == rolled.minted.record.id


def test_render_api_key_info_says_expired_by_the_services_clock(store):
    minted = KeyService(store, lambda: NOW).mint("user-1", "ci-runner", 1, "req_mint")
    assert render_api_key_info(KeyService(store, lambda: NOW + 86_399).info(minted.record))["status"] == "active"
    assert render_api_key_info(KeyService(store, lambda: NOW + 86_400).info(minted.record))["status"] == "expired"


def test_render_api_key_created_carries_the_secret_under_both_names(store):
    keys = KeyService(store, lambda: NOW)
    minted = keys.mint("user-1", "prod-splunk", None, "req_mint")
    rendered = render_api_key_created(keys.info(minted.record), minted.secret)
    assert_fits(rendered, "APIKeyCreated")
    assert rendered["key"] == rendered["full_key"] == minted.secret
    assert rendered["key_preview"] == minted.record.preview


def test_render_current_key_describes_both_windows(store):
    keys = KeyService(store, lambda: NOW)
    minted = keys.mint("user-1", "prod-splunk", None, "req_mint")
    decision = Decision(True, WindowState(10, 7, 1_795_000_020), WindowState(1_000, 990, 1_795_046_400), None, NOW)
    rendered = render_current_key(keys.info(minted.record), decision)
    assert_fits(rendered, "CurrentKey")
    assert rendered["rate_limit"] == {
        "minute": {"limit": 10, "remaining": 7, "reset": 1_795_000_020},
        "day": {"limit": 1_000, "remaining": 990, "reset": 1_795_046_400},
    }
    for window in rendered["rate_limit"].values():
        assert_fits(window, "RateLimitWindow")


def test_render_key_event_names_the_key_as_it_was():
    event = KeyEvent(
        "6f1c3e4e-8f4b-4c1e-9d1e-1a2b3c4d5e6f",
        "user-1",
        "0b7e3a52-1d6b-4c6f-8e1c-2a3b4c5d6e7f",
        "leaked",
        "prod-splunk",
        "sk_live_abcd...wxyz",
        "req_report",
        int(NOW * 1_000_000) + 5,
        {"source": "https://github.com/example/repo"},
    )
    rendered = render_key_event(event)
    assert_fits(rendered, "KeyEvent")
    assert rendered == {
        "id": event.id,
        "type": "leaked",
        "occurred_at": "2026-11-18T11:06:40.000005Z",
        "key_id": event.key_id,
        "key_name": "prod-splunk",
        "key_preview": "sk_live_abcd...wxyz",
        "request_id": "req_report",
        "details": {"source": "https://github.com/example/repo"},
    }
