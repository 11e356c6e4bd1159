"""The HTTP API through Connexion's test client: what a REST client sees."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta

import pytest

from app.domain import keymaterial
from tests.conftest import START

# Tests taking `client`, `app`, `make_app` or `settings` run on SQLite and PostgreSQL (see conftest).
ENGINES = ("sqlite", "postgresql")

KEYS = "/api/v1/keys"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def parse_time(value: str) -> datetime:
    assert value.endswith("Z")
    return datetime.fromisoformat(value[:-1] + "+00:00")


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert isinstance(error["details"], dict)
    assert error["request_id"] == response.headers["x-request-id"]
    assert re.match(r"^req_[0-9a-f]+$", error["request_id"])
    return error


# -- minting -------------------------------------------------------------------------------


def test_mint_returns_the_secret_once_with_the_contract_shape(client, session, clock):
    response = client.post(KEYS, json={"name": "prod-splunk-2026q2", "expires_in_days": 90}, cookies=session())
    assert response.status_code == 201
    body = response.json()
    data = body["data"]
    assert keymaterial.is_well_formed(data["key"])
    assert data["full_key"] == data["key"]
    assert data["key_preview"].startswith("sk_live_" + data["key"][8:12])
    assert data["key"][12:] not in data["key_preview"]
    assert UUID_RE.match(data["id"])
    assert data["name"] == "prod-splunk-2026q2"
    assert data["tier"] == "free"
    assert "iocs:read" in data["scopes"] and "taxii:read" not in data["scopes"]
    assert (data["rate_limit_per_minute"], data["rate_limit_per_day"]) == (10, 1000)
    assert data["total_requests"] == 0 and data["last_used_at"] is None
    assert data["status"] == "active"
    created = parse_time(data["created_at"])
    assert created.timestamp() == pytest.approx(clock())
    assert parse_time(data["expires_at"]) - created == timedelta(days=90)
    assert body["meta"]["warning"] == "Store this API key securely. It will not be shown again."
    assert "name_hint" not in body["meta"]
    assert response.headers["x-ratelimit-limit"] == "120"


def test_mint_without_expiry_never_expires(mint):
    assert mint(name="staging-sentinel")["expires_at"] is None


@pytest.mark.parametrize("name", ["key1", "my key", "test", "Test2", "api-key"])
def test_mint_hints_at_the_naming_convention_for_useless_names(client, session, name):
    response = client.post(KEYS, json={"name": name}, cookies=session())
    assert response.status_code == 201
    assert "prod-splunk-2026q2" in response.json()["meta"]["name_hint"]


def test_mint_refuses_a_duplicate_active_name_but_allows_it_after_revocation(client, session, mint):
    first = mint(name="staging-sentinel")
    error = assert_error(client.post(KEYS, json={"name": "staging-sentinel"}, cookies=session()), 409, "duplicate_name")
    assert error["details"] == {"field": "name"}
    assert client.delete(f"{KEYS}/{first['id']}", cookies=session()).status_code == 204
    assert client.post(KEYS, json={"name": "staging-sentinel"}, cookies=session()).status_code == 201


def test_same_name_is_fine_for_another_user(mint):
    mint(name="shared-name", user_id="alice")
    mint(name="shared-name", user_id="bob")


def test_mint_stops_at_the_active_key_cap(make_app, session):
    with make_app(max_active_keys=2).test_client() as client:
        for n in range(2):
            assert client.post(KEYS, json={"name": f"ci-{n}"}, cookies=session()).status_code == 201
        error = assert_error(client.post(KEYS, json={"name": "ci-2"}, cookies=session()), 409, "key_limit_reached")
        assert error["details"] == {"limit": 2}


@pytest.mark.parametrize(
    ("body", "field", "constraint"),
    [
        ({"name": ""}, "name", "minLength"),
        ({"name": "x" * 101}, "name", "maxLength"),
        ({"name": "tab\there"}, "name", "pattern"),
        ({"name": "   "}, "name", "pattern"),
        ({"name": 5}, "name", "type"),
        ({}, "name", "required"),
        ({"name": "ok-name", "expires_in_days": 0}, "expires_in_days", "minimum"),
        ({"name": "ok-name", "expires_in_days": 366}, "expires_in_days", "maximum"),
        ({"name": "ok-name", "expires_in_days": "90"}, "expires_in_days", "type"),
        ({"name": "ok-name", "expires_in_day": 90}, "body", "additionalProperties"),
        (["name"], "body", "type"),
    ],
)
def test_mint_rejects_invalid_bodies_naming_the_field_and_rule(client, session, body, field, constraint):
    error = assert_error(client.post(KEYS, json=body, cookies=session()), 400, "invalid_parameter")
    assert error["details"]["field"] == field
    assert error["details"]["constraint"] == constraint


@pytest.mark.parametrize(
    "raw", [b"{not json", b'{"name": "\\ud800"}', b"\xff\xfe\x00", b"null"]
)
def test_mint_rejects_bodies_that_are_not_json_objects(client, session, raw):
    response = client.post(KEYS, content=raw, headers={"Content-Type": "application/json"}, cookies=session())
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_json", "invalid_parameter")


def test_mint_requires_a_json_content_type(client, session):
    response = client.post(KEYS, content=b"name=x", headers={"Content-Type": "text/plain"}, cookies=session())
    assert_error(response, 415, "unsupported_media_type")


def test_mint_is_refused_without_a_session(client):
    assert_error(client.post(KEYS, json={"name": "prod"}), 401, "missing_session")


def test_nothing_is_stored_when_a_mint_is_refused(client, session):
    client.post(KEYS, json={"name": "x" * 101}, cookies=session())
    assert client.get(KEYS, cookies=session()).json()["data"] == []


# -- errors in general --------------------------------------------------------------------


def test_unknown_path_is_a_404_envelope(client):
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_wrong_method_is_a_405_envelope_listing_every_allowed_method(client, session):
    response = client.put(KEYS, cookies=session())
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"
    assert client.put(f"{KEYS}/{uuid.uuid4()}").headers["allow"] == "DELETE, GET, PATCH"


def test_every_response_has_a_fresh_request_id(client):
    first, second = client.get("/healthz"), client.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_a_response_that_breaks_the_contract_is_a_bare_500(client, session, mint, monkeypatch):
    import handlers.keys

    key = mint()
    original = handlers.keys.render_api_key_info
    monkeypatch.setattr(handlers.keys, "render_api_key_info", lambda info: {**original(info), "tier": "platinum"})
    error = assert_error(client.get(f"{KEYS}/{key['id']}", cookies=session()), 500, "internal_error")
    assert "platinum" not in error["message"] and error["details"] == {}


def test_an_unexpected_exception_is_a_500_envelope_without_a_traceback(client, session, monkeypatch):
    from app.domain.keys import KeyService

    def explode(*args, **kwargs):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(KeyService, "list", explode)
    response = client.get(KEYS, cookies=session())
    assert_error(response, 500, "internal_error")
    assert "hunter2" not in response.text and "Traceback" not in response.text


# -- reading, listing, revoking -----------------------------------------------------------


def test_read_returns_only_the_prefix(client, session, mint):
    key = mint()
    response = client.get(f"{KEYS}/{key['id']}", cookies=session())
    assert response.status_code == 200
    data = response.json()["data"]
    assert "key" not in data and "full_key" not in data
    assert key["key"] not in response.text
    assert data["key_preview"] == key["key_preview"]


def test_another_users_key_and_an_unknown_id_are_both_404(client, session, mint):
    key = mint(user_id="alice")
    for key_id in (key["id"], str(uuid.uuid4())):
        error = assert_error(client.get(f"{KEYS}/{key_id}", cookies=session("mallory")), 404, "key_not_found")
        assert client.delete(f"{KEYS}/{key_id}", cookies=session("mallory")).status_code == 404
    assert "alice" not in error["message"]
    assert client.get(f"{KEYS}/{key['id']}", cookies=session("alice")).status_code == 200


def test_malformed_key_id_is_400(client, session):
    error = assert_error(client.get(f"{KEYS}/not-a-uuid", cookies=session()), 400, "invalid_parameter")
    assert error["details"]["field"] == "key_id"


def test_list_is_newest_first_without_secrets_and_marks_expired_keys(client, session, mint, clock):
    old = mint(name="old-key", expires_in_days=1)
    clock.advance(2 * 86400)
    new = mint(name="new-key")
    response = client.get(KEYS, cookies=session())
    data = response.json()["data"]
    assert [k["id"] for k in data] == [new["id"], old["id"]]
    assert [k["status"] for k in data] == ["active", "expired"]
    assert old["key"] not in response.text and new["key"] not in response.text
    assert all("key" not in k and "full_key" not in k for k in data)


def test_list_names_the_signed_in_account_and_its_tier(client, session, app):
    meta = client.get(KEYS, cookies=session("tom@example")).json()["meta"]
    assert meta["account"] == {"user_id": "tom@example", "tier": "free"}
    app.app.extensions["services"].keys.set_tier("tom@example", "pro")
    assert client.get(KEYS, cookies=session("tom@example")).json()["meta"]["account"]["tier"] == "pro"


def test_list_paginates_with_a_cursor(client, session, mint, clock):
    ids = []
    for n in range(5):
        ids.append(mint(name=f"ci-runner-{n}")["id"])
        clock.advance(1)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(KEYS, params=params, cookies=session()).json()
        assert len(page["data"]) <= 2 and page["meta"]["limit"] == 2
        seen += [k["id"] for k in page["data"]]
        cursor = page["meta"]["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"cursor": "bogus"}])
def test_list_rejects_bad_paging_parameters(client, session, params):
    error = assert_error(client.get(KEYS, params=params, cookies=session()), 400, "invalid_parameter")
    assert error["details"]["field"] == next(iter(params))


@pytest.mark.parametrize("value", ["\u0663", "\uff13", "\xb2", "1_0", "+3", " 3", "9" * 5000])
@pytest.mark.parametrize("path", [KEYS, "/api/v1/key-events"])
def test_a_limit_in_other_digits_or_spelling_is_a_400_not_taken_as_a_number(client, session, value, path):
    error = assert_error(client.get(path, params={"limit": value}, cookies=session()), 400, "invalid_parameter")
    assert error["details"]["field"] == "limit" and error["message"] == "limit must be a whole number."


def test_revoke_takes_effect_at_once(client, session, mint):
    key = mint()
    headers = {"X-API-Key": key["key"]}
    assert client.get("/api/v1/whoami", headers=headers).status_code == 200
    response = client.delete(f"{KEYS}/{key['id']}", cookies=session())
    assert response.status_code == 204 and response.content == b""
    assert_error(client.get("/api/v1/whoami", headers=headers), 401, "revoked_api_key")
    assert_error(client.get(f"{KEYS}/{key['id']}", cookies=session()), 404, "key_not_found")
    assert_error(client.delete(f"{KEYS}/{key['id']}", cookies=session()), 404, "key_not_found")
    assert client.get(KEYS, cookies=session()).json()["data"] == []


# -- using a key --------------------------------------------------------------------------


def test_whoami_accepts_all_three_ways_of_sending_a_key(client, mint):
    key = mint()
    for kwargs in (
        {"headers": {"Authorization": f"Bearer {key['key']}"}},
        {"headers": {"X-API-Key": key["key"]}},
        {"params": {"api_key": key["key"]}},
    ):
        response = client.get("/api/v1/whoami", **kwargs)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["id"] == key["id"] and data["name"] == key["name"]
        assert "key" not in data
    assert data["total_requests"] == 3
    reset = (int(START) // 60 + 1) * 60
    assert data["rate_limit"]["minute"] == {"limit": 10, "remaining": 7, "reset": reset}


def test_whoami_without_a_key_is_missing_api_key(client):
    error = assert_error(client.get("/api/v1/whoami"), 401, "missing_api_key")
    assert "Bearer sk_live_" in error["message"]


def test_whoami_with_a_mistyped_key_is_invalid_without_echoing_it(client, mint):
    key = mint()["key"]
    typo = key[:20] + ("A" if key[20] != "A" else "B") + key[21:]
    response = client.get("/api/v1/whoami", headers={"X-API-Key": typo})
    assert_error(response, 401, "invalid_api_key")
    assert typo not in response.text


def test_whoami_with_an_unknown_well_formed_key_is_invalid(client):
    assert_error(client.get("/api/v1/whoami", headers={"X-API-Key": keymaterial.generate()}), 401, "invalid_api_key")


def test_whoami_with_a_malformed_authorization_header_is_invalid(client):
    assert_error(client.get("/api/v1/whoami", headers={"Authorization": "Bearer"}), 401, "invalid_api_key")


@pytest.mark.parametrize("authorization", ["", "Basic dXNlcjpwYXNz", "Token abc"])
def test_an_authorization_header_of_another_scheme_leaves_the_key_header_to_decide(client, mint, authorization):
    key = mint()["key"]
    headers = {"Authorization": authorization}
    assert_error(client.get("/api/v1/whoami", headers=headers), 401, "missing_api_key")
    assert client.get("/api/v1/whoami", headers={**headers, "X-API-Key": key}).status_code == 200


def test_a_bearer_key_is_read_whatever_the_schemes_case(client, mint):
    key = mint()["key"]
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert client.get("/api/v1/whoami", headers={"Authorization": f"{scheme} {key}"}).status_code == 200


def test_expired_key_is_refused_as_expired(client, mint, clock):
    key = mint(expires_in_days=1)
    clock.advance(86400)
    error = assert_error(client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}), 401, "expired_api_key")
    assert error["details"]["key_id"] == key["id"]


def test_usage_counts_are_exact_when_a_key_is_read(client, session, mint, clock):
    key = mint()
    for _ in range(4):
        clock.advance(1)
        client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    for data in (
        client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"],
        client.get(KEYS, cookies=session()).json()["data"][0],
    ):
        assert data["total_requests"] == 4
        assert parse_time(data["last_used_at"]).timestamp() == pytest.approx(clock())


def test_a_tier_change_applies_to_existing_keys_at_once(client, app, mint):
    key = mint()
    app.app.extensions["services"].keys.set_tier("user-1", "pro")
    response = client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    data = response.json()["data"]
    assert data["tier"] == "pro" and data["rate_limit_per_minute"] == 1000 and "taxii:read" in data["scopes"]
    assert response.headers["x-ratelimit-limit"] == "1000"


# -- rate limits --------------------------------------------------------------------------


def test_free_key_gets_ten_requests_a_minute_then_429(client, mint, clock):
    key = mint()
    headers = {"X-API-Key": key["key"]}
    reset = (int(clock()) // 60 + 1) * 60
    for n in range(10):
        response = client.get("/api/v1/whoami", headers=headers)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "10"
        assert response.headers["x-ratelimit-remaining"] == str(9 - n)
        assert response.headers["x-ratelimit-reset"] == str(reset)
    refused = client.get("/api/v1/whoami", headers=headers)
    error = assert_error(refused, 429, "rate_limit_exceeded")
    assert error["details"]["window"] == "minute" and error["details"]["reset"] == reset
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["retry-after"]) == reset - int(clock())
    clock.advance(reset - clock())
    assert client.get("/api/v1/whoami", headers=headers).status_code == 200


def test_refused_requests_are_not_counted_as_usage(client, session, mint):
    key = mint()
    for _ in range(13):
        client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["total_requests"] == 10


def test_key_management_has_its_own_per_account_limit(make_app, session):
    with make_app(management_limit_per_minute=3).test_client() as client:
        for n in range(3):
            response = client.get(KEYS, cookies=session())
            assert response.headers["x-ratelimit-remaining"] == str(2 - n)
        assert_error(client.get(KEYS, cookies=session()), 429, "rate_limit_exceeded")
        assert client.get(KEYS, cookies=session("someone-else")).status_code == 200


def whoami(client, key: dict):
    return client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})


def test_a_free_account_gets_ten_requests_a_minute_across_all_its_keys(client, session, mint, clock):
    keys = [mint(name) for name in ("prod-splunk", "prod-sentinel", "tom-laptop-dev")]
    reset = (int(clock()) // 60 + 1) * 60
    for n in range(10):
        response = whoami(client, keys[n % 3])
        assert response.status_code == 200
        assert (response.headers["x-ratelimit-limit"], response.headers["x-ratelimit-remaining"]) == ("10", str(9 - n))
        assert response.headers["x-ratelimit-reset"] == str(reset)
    assert response.json()["data"]["rate_limit"] == {
        "minute": {"limit": 10, "remaining": 0, "reset": reset},
        "day": {"limit": 1000, "remaining": 990, "reset": (int(clock()) // 86400 + 1) * 86400},
    }
    for key in keys:  # the 11th is refused whichever key sends it
        error = assert_error(whoami(client, key), 429, "rate_limit_exceeded")
        assert error["details"]["window"] == "minute" and "account" in error["message"]
    usage = {k["id"]: k["total_requests"] for k in client.get(KEYS, cookies=session()).json()["data"]}
    assert usage == {keys[0]["id"]: 4, keys[1]["id"]: 3, keys[2]["id"]: 3}  # usage stays per key
    limited = [e for e in client.get("/api/v1/key-events", cookies=session()).json()["data"] if e["type"] == "rate_limited"]
    assert [(e["key_id"], e["details"]) for e in limited] == [(keys[0]["id"], {"window": "minute", "limit": 10, "applies_to": "account"})]
    clock.advance(reset - clock())
    assert whoami(client, keys[2]).headers["x-ratelimit-remaining"] == "9"


def test_revoking_a_key_and_minting_another_does_not_reset_the_accounts_limit(client, session, mint, clock):
    old = mint("rotating")
    for _ in range(10):
        assert whoami(client, old).status_code == 200
    assert client.delete(f"{KEYS}/{old['id']}", cookies=session()).status_code == 204
    new = mint("rotated")
    refused = whoami(client, new)
    assert_error(refused, 429, "rate_limit_exceeded")
    assert refused.headers["x-ratelimit-remaining"] == "0"
    clock.advance(60)
    assert whoami(client, new).json()["data"]["rate_limit"]["day"]["remaining"] == 1000 - 11


def test_two_accounts_do_not_share_a_limit(client, mint):
    alice, bob = mint(user_id="alice"), mint(user_id="bob")
    for _ in range(10):
        whoami(client, alice)
    assert_error(whoami(client, alice), 429, "rate_limit_exceeded")
    response = whoami(client, bob)
    assert response.status_code == 200 and response.headers["x-ratelimit-remaining"] == "9"


def test_key_management_and_key_use_count_against_separate_limits(make_app, session, clock):
    with make_app(management_limit_per_minute=5).test_client() as client:
        key = client.post(KEYS, json={"name": "prod-splunk"}, cookies=session()).json()["data"]
        for _ in range(4):
            listed = client.get(KEYS, cookies=session())
        assert (listed.headers["x-ratelimit-limit"], listed.headers["x-ratelimit-remaining"]) == ("5", "0")
        assert_error(client.get(KEYS, cookies=session()), 429, "rate_limit_exceeded")
        # Management exhausted: the account's keys still have all of the tier's minute.
        assert [whoami(client, key).headers["x-ratelimit-remaining"] for _ in range(10)] == [str(9 - n) for n in range(10)]
        clock.advance(60)
        for _ in range(10):
            assert whoami(client, key).status_code == 200
        assert_error(whoami(client, key), 429, "rate_limit_exceeded")
        # API use exhausted: key management still has all of its own.
        listed = client.get(KEYS, cookies=session())
        assert (listed.status_code, listed.headers["x-ratelimit-remaining"]) == (200, "4")


def test_a_tier_change_keeps_the_windows_count_and_applies_the_new_limit_next(client, app, mint):
    key = mint()
    for _ in range(10):
        whoami(client, key)
    assert_error(whoami(client, key), 429, "rate_limit_exceeded")
    app.app.extensions["services"].keys.set_tier("user-1", "pro")
    response = whoami(client, key)
    assert response.status_code == 200
    assert (response.headers["x-ratelimit-limit"], response.headers["x-ratelimit-remaining"]) == ("1000", "989")


# -- audit trail --------------------------------------------------------------------------


def test_key_events_record_mint_revoke_and_one_block_per_window(client, session, mint):
    created = client.post(KEYS, json={"name": "partner-feed"}, cookies=session())
    key = created.json()["data"]
    for _ in range(12):  # two refusals in one window: one event
        client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    revoked = client.delete(f"{KEYS}/{key['id']}", cookies=session())
    events = client.get("/api/v1/key-events", cookies=session()).json()["data"]
    assert [e["type"] for e in events] == ["revoked", "rate_limited", "minted"]
    assert {e["key_id"] for e in events} == {key["id"]}
    assert {e["key_name"] for e in events} == {"partner-feed"}
    assert events[0]["request_id"] == revoked.headers["x-request-id"]
    assert events[2]["request_id"] == created.headers["x-request-id"]
    assert events[1]["details"] == {"window": "minute", "limit": 10, "applies_to": "account"}
    assert key["key"] not in str(events)


def test_key_events_are_private_to_their_account(client, session, mint):
    mint(user_id="alice")
    assert client.get("/api/v1/key-events", cookies=session("bob")).json()["data"] == []


# -- serving --------------------------------------------------------------------------------


def test_health_spec_and_docs_are_served(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/openapi.json").json()["paths"]["/api/v1/keys"]["post"]["operationId"] == "createAPIKey"
    assert client.get("/ui/").status_code == 200


def test_browser_on_another_localhost_port_may_call_with_cookies(make_app, session):
    from app.config import LOCALHOST_ORIGINS

    with make_app(cors_origin_regex=LOCALHOST_ORIGINS).test_client() as client:
        preflight = client.options(
            KEYS,
            headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        response = client.get(KEYS, headers={"Origin": "http://127.0.0.1:3000"}, cookies=session())
        assert response.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
        exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
        assert {"x-ratelimit-remaining", "ratelimit", "ratelimit-policy", "retry-after"} <= exposed
        other = client.get(KEYS, headers={"Origin": "https://evil.example"}, cookies=session())
        assert "access-control-allow-origin" not in other.headers


def test_access_log_never_contains_the_key(client, mint, caplog):
    key = mint()["key"]
    with caplog.at_level("INFO", logger="app.access"):
        client.get("/api/v1/whoami", params={"api_key": key})
        client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    lines = [r.getMessage() + repr(r.fields) for r in caplog.records if r.name == "app.access"]
    assert len(lines) == 2
    assert all("/api/v1/whoami" in line and key not in line for line in lines)


def test_list_pages_keys_minted_in_the_same_instant_once_each_in_minting_order(client, session, mint):
    ids = [mint(name=f"same-instant-{n}")["id"] for n in range(5)]
    first = client.get(KEYS, params={"limit": 3}, cookies=session()).json()
    rest = client.get(KEYS, params={"limit": 3, "cursor": first["meta"]["next_cursor"]}, cookies=session()).json()
    assert [k["id"] for k in first["data"] + rest["data"]] == list(reversed(ids))
    assert rest["meta"]["next_cursor"] is None


def test_a_cursor_is_a_position_in_time(client, session, mint):
    key = mint()
    later = client.get(KEYS, params={"cursor": "9" * 16 + "0" * 32}, cookies=session()).json()["data"]
    earlier = client.get(KEYS, params={"cursor": "0" * 48}, cookies=session()).json()["data"]
    assert [k["id"] for k in later] == [key["id"]] and earlier == []


def test_an_odd_cookie_header_is_read_as_browsers_do(client, session):
    token = session()["sb-access-token"]
    response = client.get(KEYS, headers={"Cookie": f"; =; theme=dark; sb-access-token={token}; ;"})
    assert response.status_code == 200


# -- hardening ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),  # never guessed: a cross-site form or Blob post carries none
        ("text/plain", 415),
        ("APPLICATION/JSON", 201),
        ("application/json ;charset=utf-8", 201),
        ("application/json; charset=utf-8", 201),
    ],
)
def test_mint_reads_a_body_only_when_it_is_declared_json(client, session, content_type, status):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(KEYS, content=b'{"name": "ci-runner"}', headers=headers, cookies=session())
    assert response.status_code == status, response.text
    if status == 415:
        assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", [
    "application/json; charset=latin-1", "application/json; x=1; charset=latin-1", "application/json; x=1;charset=UTF-16LE",
])
def test_a_body_is_read_as_utf_8_whatever_charset_is_declared(client, session, content_type):
    # RFC 8259 8.1: JSON is UTF-8. Once honoured only where it was not the first parameter.
    response = client.post(KEYS, content='{"name": "café"}'.encode("latin-1"), cookies=session(),
                           headers={"Content-Type": content_type})
    error = assert_error(response, 400, "invalid_json")
    assert error["message"] == "The request body is not valid utf-8 text."
    accepted = client.post(KEYS, content='{"name": "café"}'.encode(), cookies=session(),
                           headers={"Content-Type": "application/json; x=1; charset=<b>bogus</b>"})
    assert accepted.status_code == 201 and accepted.json()["data"]["name"] == "café"
    listed = client.get(KEYS, cookies=session()).json()["data"]
    assert [key["name"] for key in listed] == ["café"]


def test_mint_refuses_two_contradictory_content_types(client, session):
    response = client.post(
        KEYS, content=b'{"name": "ci-runner"}', cookies=session(),
        headers=[("Content-Type", "application/json"), ("Content-Type", "text/plain")],
    )
    assert_error(response, 415, "unsupported_media_type")


def test_mint_refuses_a_body_over_64_kib(client, session):
    body = b'{"name": "' + b"x" * 70_000 + b'"}'
    response = client.post(KEYS, content=body, headers={"Content-Type": "application/json"}, cookies=session())
    error = assert_error(response, 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": 65536}


def test_empty_mint_body_names_the_missing_body(client, session):
    # Connexion refuses an empty required body itself, saying "RequestBody is required";
    # app.web.errors recognises that wording. This pins it: a new wording fails here.
    response = client.post(KEYS, content=b"", headers={"Content-Type": "application/json"}, cookies=session())
    error = assert_error(response, 400, "invalid_parameter")
    assert error["message"] == "A JSON request body is required."
    assert error["details"] == {"field": "body", "constraint": "required"}


@pytest.mark.parametrize("name", ["\u200b", "\u00a0", "\ufeff", "\u2028", "\u202eevil", "prod\u200bsplunk", "\u3000 \u2003"])
def test_mint_refuses_names_that_are_invisible_or_spoof_direction(client, session, name):
    error = assert_error(client.post(KEYS, json={"name": name}, cookies=session()), 400, "invalid_parameter")
    assert error["details"]["constraint"] == "pattern"


def test_every_response_forbids_caching(client, session, mint):
    key = mint()
    for response in (
        client.post(KEYS, json={"name": "another-one"}, cookies=session()),
        client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}),
        client.get("/api/v1/whoami"),
    ):
        assert response.headers["cache-control"] == "no-store"


def test_revoke_answers_204_without_a_content_type(client, session, mint):
    response = client.delete(f"{KEYS}/{mint()['id']}", cookies=session())
    assert response.status_code == 204 and "content-type" not in response.headers


def test_head_is_refused_before_any_work_where_the_contract_has_none(client, session, mint):
    key = mint()
    response = client.head("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert client.head("/healthz").status_code == 200  # the probes define HEAD
    assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["total_requests"] == 0


def test_two_different_keys_in_one_request_are_refused(client, session, mint):
    good, other = mint(name="good-key"), mint(name="other-key")
    for headers, params in (
        ({"Authorization": "Bearer sk_live_garbage", "X-API-Key": good["key"]}, {}),
        ({"X-API-Key": good["key"]}, {"api_key": other["key"]}),
    ):
        response = client.get("/api/v1/whoami", headers=headers, params=params)
        assert_error(response, 401, "invalid_api_key")
    # The query parameter's name percent-encoded is still the same parameter.
    encoded = client.get(f"/api/v1/whoami?api%5Fkey={other['key']}", headers={"X-API-Key": good["key"]})
    assert_error(encoded, 401, "invalid_api_key")
    same = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {good['key']}", "X-API-Key": good["key"]})
    assert same.status_code == 200


def test_cookies_split_over_two_headers_are_read(client, session):
    token = session()["sb-access-token"]
    response = client.get(KEYS, headers=[("Cookie", "theme=dark"), ("Cookie", f"sb-access-token={token}")])
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/keys/%0A", "/api/v1/keys/abc%0A", f"/api/v1/keys/{uuid.uuid4()}%0A"])
def test_paths_with_control_characters_are_client_errors(client, session, path):
    for method in ("GET", "DELETE"):
        response = client.request(method, path, cookies=session())
        assert response.status_code in (400, 404), response.text
        assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


def test_access_log_escapes_control_characters(client, caplog):
    with caplog.at_level("INFO", logger="app.access"):
        client.get("/api/v1/nothing%0A2026-11-28 INFO forged line")
    (line,) = [r.getMessage() + repr(r.fields) for r in caplog.records if r.name == "app.access"]
    assert "\n" not in line and "forged" not in line  # no route matched: nothing of the path is logged


@pytest.mark.parametrize("validate_responses", [True, False])
def test_headers_are_stamped_once_whether_or_not_responses_are_validated(make_app, session, monkeypatch,
                                                                        validate_responses):
    import app.web.headers as headers

    stamped = []
    original = headers.stamp

    def counting_stamp(message, state):
        if not message.get("stamped"):
            stamped.append(message["status"])
        original(message, state)

    monkeypatch.setattr(headers, "stamp", counting_stamp)
    with make_app(validate_responses=validate_responses).test_client() as client:
        created = client.post(KEYS, json={"name": "stamp-check"}, cookies=session())
        stamped.clear()
        response = client.get("/api/v1/whoami", headers={"X-API-Key": created.json()["data"]["key"]})
    assert stamped == [200]
    assert response.headers["x-ratelimit-remaining"] == "9"
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.sqlite_only
def test_a_busy_key_store_is_a_503_and_nothing_is_counted(app, client, session, mint, monkeypatch, settings):
    import fcntl

    key = mint()
    monkeypatch.setattr(app.app.extensions["services"].store._writer, "_timeout", 0.05)
    with open(str(settings.database_path) + ".write-lock", "rb") as another_worker:
        fcntl.flock(another_worker, fcntl.LOCK_EX)
        response = client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
    error = assert_error(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "1" and error["details"] == {}
    assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["total_requests"] == 0


@pytest.mark.postgresql_only
def test_a_key_row_held_past_the_timeout_on_postgresql_is_a_503_and_nothing_is_counted(engine, make_app, session, settings):
    import psycopg

    with make_app(database_timeout_ms=300).test_client() as client:
        key = client.post(KEYS, json={"name": "held"}, cookies=session()).json()["data"]
        with psycopg.connect(settings.database_url) as another_instance:
            another_instance.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (key["id"],))
            response = client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]})
        error = assert_error(response, 503, "service_unavailable")
        assert response.headers["retry-after"] == "1" and error["details"] == {}
        # Released: the same key is admitted again at once, and only that request was counted.
        assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 200
        assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["total_requests"] == 1


@pytest.mark.postgresql_only
def test_pooled_connections_cut_by_the_server_cost_no_request_a_503(engine, client, session, settings, mint):
    # What a PostgreSQL restart or failover does to idle pooled connections, done to this
    # app's connections alone (the test's application_name), not to the shared server.
    import psycopg

    from tests.conftest import TEST_DATABASE_URL

    key = mint()
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 200
    name = psycopg.conninfo.conninfo_to_dict(settings.database_url)["application_name"]
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
        assert cut and all(ok for (ok,) in cut)
        for _ in range(500):  # gone from the server (their sockets closed) before the next request
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchall():
                break
            time.sleep(0.01)
    statuses = [
        client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code,
        client.get(KEYS, cookies=session()).status_code,
        client.post(KEYS, json={"name": "after-the-cut"}, cookies=session()).status_code,
        client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code,
    ]
    assert statuses == [200, 200, 201, 200]
    assert client.get(f"{KEYS}/{key['id']}", cookies=session()).json()["data"]["total_requests"] == 3


def test_a_refused_cors_preflight_is_an_envelope(make_app):
    from app.config import LOCALHOST_ORIGINS

    with make_app(cors_origin_regex=LOCALHOST_ORIGINS).test_client() as client:
        response = client.options(
            KEYS, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
    error = assert_error(response, 400, "cors_not_allowed")
    assert "origin" in error["message"]


@pytest.mark.parametrize("env", ["production", "development"])
@pytest.mark.parametrize("path,method", [(KEYS, "POST"), (KEYS, "GET"), ("/api/v1/whoami", "GET"), ("/healthz", "GET")])
def test_a_preflight_no_allowed_origin_matches_is_the_same_400_in_production_and_development(
    make_app, env, path, method
):
    from app.config import LOCALHOST_ORIGINS

    # Production allows no origin unless CORS_ORIGINS or CORS_ORIGIN_REGEX names one; development localhost.
    regex = LOCALHOST_ORIGINS if env == "development" else ""
    with make_app(env=env, key_page=False, cors_origin_regex=regex, cors_origins=()).test_client() as client:
        response = client.options(
            path, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": method}
        )
    error = assert_error(response, 400, "cors_not_allowed")
    assert error["message"] == "Disallowed CORS origin."
    assert "allow" not in response.headers and "access-control-allow-origin" not in response.headers


def test_an_options_request_that_is_no_preflight_is_still_a_405_in_production(make_app):
    with make_app(env="production", key_page=False).test_client() as client:
        response = client.options(KEYS, headers={"Origin": "https://evil.example"})
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("path", ["/api/v1/keys/", f"/api/v1/keys/{uuid.uuid4()}/", "/healthz/"])
def test_a_trailing_slash_is_not_found_rather_than_redirected(client, session, path):
    assert_error(client.get(path, cookies=session(), follow_redirects=False), 404, "not_found")


# -- hostile input -------------------------------------------------------------------------

INVISIBLE = {
    "zero_width_joiner": "prod\u200dsplunk",
    "zero_width_non_joiner": "prod\u200csplunk",
    "word_joiner": "prod\u2060splunk",
    "invisible_separator": "prod\u2063splunk",
    "left_to_right_mark": "prod\u200esplunk",
    "soft_hyphen": "prod\u00adsplunk",
    "mongolian_vowel_separator": "prod\u180esplunk",
    "combining_grapheme_joiner": "prod\u034fsplunk",
    "variation_selector": "prod\ufe0fsplunk",
    "byte_order_mark": "\ufeffprod-splunk",
    "only_hangul_filler": "\u3164\u3164",
    "only_braille_blank": "\u2800",
    "no_break_space": "prod\u00a0splunk",
    "ideographic_space": "prod\u3000splunk",
    "leading_space": " prod-splunk",
    "trailing_space": "prod-splunk ",
    "two_spaces": "prod  splunk",
    "newline": "prod\nsplunk",
    "only_spaces": "   ",
}


@pytest.mark.parametrize("name", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_mint_refuses_invisible_and_look_alike_names(client, session, name):
    error = assert_error(client.post(KEYS, json={"name": name}, cookies=session()), 400, "invalid_parameter")
    assert error["details"] == {"field": "name", "in": "body", "constraint": "pattern",
                                "expected": error["details"]["expected"]}
    assert client.get(KEYS, cookies=session()).json()["data"] == []


def test_names_are_stored_in_nfc_and_two_spellings_collide(client, session):
    composed, decomposed = "caf\u00e9-prod", "cafe\u0301-prod"
    first = client.post(KEYS, json={"name": decomposed}, cookies=session())
    assert first.status_code == 201
    assert first.json()["data"]["name"] == composed
    assert_error(client.post(KEYS, json={"name": composed}, cookies=session()), 409, "duplicate_name")


def test_invisible_tag_characters_are_removed_so_the_name_collides(client, session):
    assert client.post(KEYS, json={"name": "prod-splunk"}, cookies=session()).status_code == 201
    tagged = "prod-splunk\U000e0041\U000e007f"
    assert_error(client.post(KEYS, json={"name": tagged}, cookies=session()), 409, "duplicate_name")
    assert_error(client.post(KEYS, json={"name": "prod-splunk \U000e0041"}, cookies=session()), 409, "duplicate_name")
    assert_error(client.post(KEYS, json={"name": "\U000e0041"}, cookies=session()), 400, "invalid_parameter")


def test_a_name_that_outgrows_100_characters_in_nfc_is_refused_by_its_length(client, session):
    # U+FB2C is one character as sent and three in NFC, the form names are stored in.
    response = client.post(KEYS, json={"name": "\ufb2c" * 100}, cookies=session())
    error = assert_error(response, 400, "invalid_parameter")
    assert error["details"] == {"field": "name", "in": "body", "constraint": "maxLength", "expected": 100}
    assert "NFC" in error["message"]
    assert client.get(KEYS, cookies=session()).json()["data"] == []


def test_a_name_of_100_characters_in_nfc_is_stored_whole(client, session):
    name = "\ufb2c" * 33 + "a"  # 34 characters as sent, 100 in NFC
    response = client.post(KEYS, json={"name": name}, cookies=session())
    assert response.status_code == 201, response.text
    assert len(response.json()["data"]["name"]) == 100


def test_an_overlong_name_is_refused_by_its_length_not_its_pattern(client, session):
    response = client.post(KEYS, json={"name": "a" * 65_000 + "\u0000"}, cookies=session())
    error = assert_error(response, 400, "invalid_parameter")
    assert error["details"]["constraint"] == "maxLength"


BAD_JSON = {
    "five_thousand_digit_integer": '{"name": "prod-splunk", "expires_in_days": ' + "9" * 5000 + "}",
    "nan": '{"name": "prod-splunk", "expires_in_days": NaN}',
    "infinity": '{"name": "prod-splunk", "expires_in_days": -Infinity}',
    "duplicate_field": '{"name": "prod-splunk", "name": "prod-other"}',
    "nested_33_deep": '{"name": "prod-splunk", "x": ' + "[" * 33 + "]" * 33 + "}",
    "nested_10000_deep": '{"name": "prod-splunk", "x": ' + "[" * 10_000 + "]" * 10_000 + "}",
    "trailing_garbage": '{"name": "prod-splunk"} x',
    "byte_order_mark": '\ufeff{"name": "prod-splunk"}',
}


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_malformed_json_is_a_400_and_writes_nothing(client, session, body):
    response = client.post(KEYS, content=body.encode(), headers={"Content-Type": "application/json"},
                           cookies=session())
    assert_error(response, 400, "invalid_json")
    assert client.get(KEYS, cookies=session()).json()["data"] == []


def test_json_nested_to_the_limit_reaches_schema_validation(client, session):
    body = '{"name": "prod-splunk", "x": ' + "[" * 31 + "]" * 31 + "}"
    response = client.post(KEYS, content=body.encode(), headers={"Content-Type": "application/json"},
                           cookies=session())
    assert assert_error(response, 400, "invalid_parameter")["details"]["constraint"] == "additionalProperties"


def test_a_bearer_key_split_by_a_tab_and_another_key_are_two_keys(client, mint):
    first, second = mint("first-key")["key"], mint("second-key")["key"]
    for auth in (f"Bearer\t{first}", f"Bearer \t {first}", f"bearer  {first}"):
        response = client.get("/api/v1/whoami", headers={"Authorization": auth, "X-API-Key": second})
        assert_error(response, 401, "invalid_api_key")
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Bearer\t{first}"}).status_code == 200


def test_a_cursor_naming_another_accounts_key_reveals_nothing(client, session, mint, clock):
    for i in range(3):
        mint(f"alice-{i}", user_id="alice")
    foreign = mint("bob-key", user_id="bob")
    created_us = int(parse_time(foreign["created_at"]).timestamp() * 1_000_000)
    with_foreign = f"{created_us:016d}{uuid.UUID(foreign['id']).hex}"
    with_unknown = f"{created_us:016d}{uuid.uuid4().hex}"
    pages = [client.get(KEYS, params={"cursor": c}, cookies=session("alice")).json() for c in (with_foreign, with_unknown)]
    assert pages[0] == pages[1]
    events = [client.get("/api/v1/key-events", params={"cursor": c}, cookies=session("alice")).json()
              for c in (with_foreign, with_unknown)]
    assert [e["id"] for e in events[0]["data"]] == [e["id"] for e in events[1]["data"]]


PROTECTIVE = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


@pytest.mark.parametrize("path", ["/healthz", KEYS, "/no/such/path", "/openapi.json"])
def test_every_response_carries_the_protective_headers(client, path):
    response = client.get(path)
    for name, value in PROTECTIVE.items():
        assert response.headers[name] == value
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_the_docs_page_may_run_its_own_scripts_and_nobody_elses(client):
    response = client.get("/ui/")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_path_cannot_forge_the_access_lines_fields(client, caplog):
    with caplog.at_level("INFO", logger="app.access"):
        client.get('/api/v1/keys%22%20201%203.0ms%20req_forged%20%22')
        client.get("/api/v1/keys/%E2%80%AEdesrever")
    forged, reordered = [r for r in caplog.records if r.name == "app.access"]
    assert forged.getMessage() == "GET - 404" and "req_forged" not in repr(forged.fields)
    assert reordered.getMessage() == "GET /api/v1/keys/{key_id} 401"  # the route, not the path
    assert "\u202e" not in repr(reordered.fields) and "desrever" not in repr(reordered.fields)


@pytest.mark.parametrize("path", ["/ui/openapi.json", "/ui/openapi.yaml"])
def test_swagger_uis_copy_of_the_contract_is_rendered_once(app, client, path, monkeypatch):
    from connexion.middleware.swagger_ui import SwaggerUIAPI

    renders = []
    original = SwaggerUIAPI._spec_for_prefix
    monkeypatch.setattr(SwaggerUIAPI, "_spec_for_prefix", lambda self, request: renders.append(1) or original(self, request))
    answers = [client.get(path) for _ in range(3)]
    assert len(renders) <= 1  # not once per request: it costs a tenth of a second and more
    assert all(a.status_code == 200 and a.content == answers[0].content for a in answers)
    assert len({a.headers["x-request-id"] for a in answers}) == 3  # each answer is still its own
    assert all(a.headers["x-content-type-options"] == "nosniff" for a in answers)


def test_noncharacters_beyond_the_first_plane_are_removed_from_a_name(client, session):
    created = client.post(KEYS, json={"name": "cafe-prod\U0001fffe"}, cookies=session())
    assert created.status_code == 201 and created.json()["data"]["name"] == "cafe-prod"
    assert_error(client.post(KEYS, json={"name": "cafe-prod\U0010ffff"}, cookies=session()), 409, "duplicate_name")


def test_a_value_ending_in_a_newline_does_not_pass_a_pattern_that_ends_the_text(client, session, mint):
    # JSON Schema's patterns are ECMA-262's: `$` is the end of the text, not the end of a line.
    assert_error(client.post(KEYS, json={"name": "trail-nl\n"}, cookies=session()), 400, "invalid_parameter")
    key = mint("trail-nl")
    renamed = client.patch(f"{KEYS}/{key['id']}", json={"name": "patched\n"}, cookies=session())
    assert assert_error(renamed, 400, "invalid_parameter")["details"]["field"] == "name"
    report = {"keys": [key["key"]], "source": "https://example.com/a\n"}
    assert assert_error(client.post("/api/v1/leaks", json=report), 400, "invalid_parameter")["details"]["field"] == "source"
    cursor = client.get(KEYS, params={"limit": 1}, cookies=session())
    assert cursor.status_code == 200
    listed = client.get(KEYS, params={"cursor": "0" * 16 + "a" * 32 + "\n"}, cookies=session())
    assert assert_error(listed, 400, "invalid_parameter")["details"]["field"] == "cursor"
    assert client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 200  # not reported
