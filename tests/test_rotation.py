"""Rolling a key with a grace period, and revoking leaked keys: the domain and the HTTP API."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from app.domain import keymaterial
from app.domain.errors import ExpiredAPIKey, KeyLimitReached, KeyNotRollable
from app.domain.keys import KeyService, check_room_for_roll
from app.domain.records import KeyRecord, Rolled
from tests.test_api import assert_error, parse_time

# Tests taking `client`, `app`, `make_app`, `store` or `settings` run on SQLite and PostgreSQL.
ENGINES = ("sqlite", "postgresql")

KEYS = "/api/v1/keys"
LEAKS = "/api/v1/leaks"
WHOAMI = "/api/v1/whoami"
SOURCE = "https://github.com/example/repo/blob/main/.env"


def roll(client, session, key_id: str, grace: int | None = None, user: str = "user-1"):
    body = {} if grace is None else {"grace_period_minutes": grace}
    return client.post(f"{KEYS}/{key_id}/roll", json=body, cookies=session(user))


def whoami(client, key: str):
    return client.get(WHOAMI, headers={"X-API-Key": key})


def events(client, session, user: str = "user-1") -> list[dict]:
    return client.get("/api/v1/key-events", cookies=session(user)).json()["data"]


# -- the domain, on the injected clock -------------------------------------------------------


def test_grace_period_admits_the_old_key_until_its_last_microsecond(store, clock):
    keys = KeyService(store, clock)
    old = keys.mint("user-1", "prod-splunk", None, "req_mint")
    rolled = keys.roll("user-1", old.record.id, 5, "req_roll")
    boundary = rolled.old.expires_us
    assert boundary == keys.now_us() + 5 * 60 * 1_000_000

    clock.now = (boundary - 1) / 1_000_000  # the last microsecond admitted
    record, decision = keys.use(old.secret, None, "req_last")
    assert decision.allowed and record.id == old.record.id

    clock.now = boundary / 1_000_000
    with pytest.raises(ExpiredAPIKey) as refused:
        keys.use(old.secret, None, "req_first_refused")
    assert refused.value.details["rolled"] is True
    assert refused.value.details["replaced_by"] == rolled.minted.record.id
    new_record, _ = keys.use(rolled.minted.secret, None, "req_new")
    assert new_record.id == rolled.minted.record.id


def test_grace_period_never_outlives_the_old_keys_own_expiry(store, clock):
    keys = KeyService(store, clock)
    old = keys.mint("user-1", "ci-runner", 1, "req_mint")
    clock.advance(86_400 - 60)  # one minute left
    rolled = keys.roll("user-1", old.record.id, 600, "req_roll")
    assert rolled.old.expires_us == old.record.expires_us
    assert rolled.minted.record.expires_us == old.record.expires_us  # the same remaining lifetime


def test_a_key_can_be_rolled_once(store, clock):
    keys = KeyService(store, clock)
    old = keys.mint("user-1", "prod-splunk", None, "req_mint")
    rolled = keys.roll("user-1", old.record.id, 60, "req_roll")
    with pytest.raises(KeyNotRollable) as refused:
        keys.roll("user-1", old.record.id, 60, "req_again")
    assert refused.value.details == {"key_id": old.record.id, "reason": "rolled", "replaced_by": rolled.minted.record.id}


class CountingStore:
    """A store that only counts the leak lookups asked of it."""

    def __init__(self) -> None:
        self.lookups: list[list[str]] = []

    def revoke_leaked(self, digests, now_us, event):
        self.lookups.append(list(digests))
        return []


def test_malformed_leak_candidates_cost_no_database_read(clock):
    store = CountingStore()
    keys = KeyService(store, clock)  # type: ignore[arg-type]
    real = keymaterial.generate()
    mistyped = real[:-1] + ("A" if real[-1] != "A" else "B")
    assert keys.report_leaks(["not a key", mistyped, "sk_live_" + "x" * 38], SOURCE, "req_1") == (3, 0)
    assert store.lookups == []
    assert keys.report_leaks([real, real, "junk"], SOURCE, "req_2") == (3, 0)  # this store revokes nothing
    assert store.lookups == [[keymaterial.digest(real)]]


# -- rolling over HTTP -----------------------------------------------------------------------


def test_roll_mints_a_replacement_with_the_same_name_tier_and_expiry(client, session, mint, clock):
    old = mint(name="prod-splunk-2026q2", expires_in_days=90)
    clock.advance(86_400)
    response = roll(client, session, old["id"], 60)
    assert response.status_code == 201, response.text
    body = response.json()
    new = body["data"]
    assert new["id"] != old["id"]
    assert (new["name"], new["tier"], new["scopes"]) == (old["name"], old["tier"], old["scopes"])
    assert new["expires_at"] == old["expires_at"]
    assert keymaterial.is_well_formed(new["key"]) and new["full_key"] == new["key"] != old["key"]
    assert new["total_requests"] == 0 and new["status"] == "active"
    assert body["meta"]["warning"] == "Store this API key securely. It will not be shown again."
    assert body["meta"]["rolled_from"]["id"] == old["id"]
    stops = parse_time(body["meta"]["rolled_from"]["expires_at"])
    assert stops - parse_time(new["created_at"]) == timedelta(minutes=60)
    assert response.headers["cache-control"] == "no-store"
    assert whoami(client, old["key"]).status_code == 200
    assert whoami(client, new["key"]).status_code == 200
    listed = {k["id"]: k for k in client.get(KEYS, cookies=session()).json()["data"]}
    assert listed[old["id"]]["replaced_by"] == new["id"] and listed[old["id"]]["expires_at"] == body["meta"]["rolled_from"]["expires_at"]
    assert "replaced_by" not in listed[new["id"]]


def test_rolled_key_answers_expired_naming_its_replacement_after_the_grace_period(client, session, mint, clock):
    old = mint()
    assert whoami(client, old["key"]).status_code == 200
    new = roll(client, session, old["id"], 10).json()["data"]
    clock.advance(10 * 60 - 0.001)
    assert whoami(client, old["key"]).status_code == 200
    clock.advance(0.001)
    error = assert_error(whoami(client, old["key"]), 401, "expired_api_key")
    assert error["details"]["rolled"] is True
    assert error["details"]["replaced_by"] == new["id"]
    assert error["details"]["key_id"] == old["id"]
    assert whoami(client, new["key"]).status_code == 200
    kept = client.get(f"{KEYS}/{old['id']}", cookies=session()).json()["data"]
    assert kept["total_requests"] == 2 and kept["status"] == "expired"


def test_roll_without_a_grace_period_stops_the_old_key_at_once(client, session, mint):
    old = mint()
    response = roll(client, session, old["id"])
    assert response.status_code == 201
    assert response.json()["meta"]["rolled_from"]["expires_at"] == response.json()["data"]["created_at"]
    error = assert_error(whoami(client, old["key"]), 401, "expired_api_key")
    assert error["details"]["replaced_by"] == response.json()["data"]["id"]


def test_roll_refuses_revoked_expired_and_rolled_keys_saying_why(client, session, mint, clock):
    revoked, expiring, rolled = mint(name="revoked-one"), mint(name="expiring-one", expires_in_days=1), mint(name="rolled-one")
    client.delete(f"{KEYS}/{revoked['id']}", cookies=session())
    replacement = roll(client, session, rolled["id"], 60).json()["data"]
    clock.advance(86_400)
    for key, reason in ((revoked, "revoked"), (expiring, "expired"), (rolled, "rolled")):
        error = assert_error(roll(client, session, key["id"], 5), 409, "key_not_rollable")
        assert error["details"]["reason"] == reason
        assert error["details"]["key_id"] == key["id"]
    assert error["details"]["replaced_by"] == replacement["id"]


def test_roll_of_another_accounts_key_or_an_unknown_id_is_not_found(client, session, mint):
    theirs = mint(user_id="bob")
    assert_error(roll(client, session, theirs["id"], 5), 404, "key_not_found")
    assert_error(roll(client, session, "3fa85f64-5717-4562-b3fc-2c963f66afa6", 5), 404, "key_not_found")
    assert whoami(client, theirs["key"]).status_code == 200


def test_roll_events_name_both_keys_with_one_request_id(client, session, mint):
    old = mint()
    response = roll(client, session, old["id"], 30)
    new = response.json()["data"]
    latest = events(client, session)[:2]
    by_type = {e["type"]: e for e in latest}
    assert set(by_type) == {"rolled", "minted"}
    assert by_type["rolled"]["key_id"] == old["id"]
    assert by_type["rolled"]["details"]["replaced_by"] == new["id"]
    assert by_type["minted"]["key_id"] == new["id"]
    assert by_type["minted"]["details"] == {"rolled_from": old["id"]}
    assert by_type["rolled"]["request_id"] == by_type["minted"]["request_id"] == response.headers["x-request-id"]


def test_both_keys_of_a_roll_count_against_the_cap_while_both_are_active(make_app, session, clock):
    with make_app(max_active_keys=2).test_client() as client:
        first = client.post(KEYS, json={"name": "ci-0"}, cookies=session()).json()["data"]
        client.post(KEYS, json={"name": "ci-1"}, cookies=session())
        error = assert_error(roll(client, session, first["id"], 60), 409, "key_limit_reached")
        assert error["details"] == {"limit": 2}
        assert whoami(client, first["key"]).status_code == 200  # nothing changed
        assert roll(client, session, first["id"], 0).status_code == 201


def rolled_at(stops_us: int | None, now_us: int = 1_000) -> Rolled:
    old = KeyRecord(id="old", user_id="user-1", name="ci", preview="sk_live_Ab12••••••••", tier="free",
                    created_us=0, expires_us=stops_us, revoked_us=None, total_requests=0, last_used_us=None)
    return Rolled(old, replace(old, id="new", created_us=now_us, expires_us=None), ())


def test_the_roll_cap_rule_refuses_a_grace_roll_at_the_cap_and_never_a_roll_that_swaps_keys():
    """The rule is the domain's, one function: each store counts, and asks it."""
    with pytest.raises(KeyLimitReached) as refused:
        check_room_for_roll(rolled_at(stops_us=61_000), active=2, max_active=2)  # both active for a minute
    assert refused.value.details == {"limit": 2}
    with pytest.raises(KeyLimitReached):
        check_room_for_roll(rolled_at(stops_us=None), active=2, max_active=2)  # an old key that never stops
    check_room_for_roll(rolled_at(stops_us=1_000), active=2, max_active=2)  # the old key stops as the new starts
    check_room_for_roll(rolled_at(stops_us=61_000), active=1, max_active=2)  # room for both


def test_the_pair_may_share_a_name_but_a_third_key_may_not(client, session, mint):
    old = mint(name="staging-sentinel")
    assert roll(client, session, old["id"], 60).status_code == 201
    listed = client.get(KEYS, cookies=session()).json()["data"]
    assert [k["name"] for k in listed] == ["staging-sentinel", "staging-sentinel"]
    assert_error(client.post(KEYS, json={"name": "staging-sentinel"}, cookies=session()), 409, "duplicate_name")


@pytest.mark.parametrize(
    ("body", "field", "constraint"),
    [
        ({"grace_period_minutes": -1}, "grace_period_minutes", "minimum"),
        ({"grace_period_minutes": 10081}, "grace_period_minutes", "maximum"),
        ({"grace_period_minutes": "5"}, "grace_period_minutes", "type"),
        ({"grace_minutes": 5}, "body", "additionalProperties"),
    ],
)
def test_roll_rejects_invalid_bodies(client, session, mint, body, field, constraint):
    old = mint()
    error = assert_error(client.post(f"{KEYS}/{old['id']}/roll", json=body, cookies=session()), 400, "invalid_parameter")
    assert (error["details"]["field"], error["details"]["constraint"]) == (field, constraint)
    assert whoami(client, old["key"]).status_code == 200


def test_roll_is_refused_without_a_session_or_from_a_foreign_page(client, session, mint):
    old = mint()
    assert_error(client.post(f"{KEYS}/{old['id']}/roll", json={}), 401, "missing_session")
    response = client.post(f"{KEYS}/{old['id']}/roll", json={}, cookies=session(),
                           headers={"Origin": "https://evil.example"})
    assert_error(response, 403, "origin_not_allowed")
    assert len(client.get(KEYS, cookies=session()).json()["data"]) == 1


# -- leak reports over HTTP ------------------------------------------------------------------


def test_leak_report_revokes_an_active_key_and_tells_its_owner(client, session, mint):
    leaked, kept = mint(name="leaked-one"), mint(name="kept-one")
    response = client.post(LEAKS, json={"keys": [leaked["key"]], "source": SOURCE})
    assert response.status_code == 202
    assert response.json() == {"data": {"received": 1}}
    assert_error(whoami(client, leaked["key"]), 401, "revoked_api_key")
    assert whoami(client, kept["key"]).status_code == 200
    assert_error(client.get(f"{KEYS}/{leaked['id']}", cookies=session()), 404, "key_not_found")
    event = events(client, session)[0]
    assert (event["type"], event["key_id"]) == ("leaked", leaked["id"])
    assert event["details"] == {"source": SOURCE}
    assert event["request_id"] == response.headers["x-request-id"]


def test_leak_report_revokes_a_rolled_key_still_in_its_grace_period(client, session, mint):
    old = mint()
    new = roll(client, session, old["id"], 60).json()["data"]
    assert client.post(LEAKS, json={"keys": [old["key"]]}).status_code == 202
    assert_error(whoami(client, old["key"]), 401, "revoked_api_key")
    assert whoami(client, new["key"]).status_code == 200
    assert events(client, session)[0]["details"] == {"source": None}


def test_leak_report_answers_the_same_whatever_was_found(client, session, mint):
    real, revoked = mint(name="real-one"), mint(name="revoked-one")
    client.delete(f"{KEYS}/{revoked['id']}", cookies=session())
    candidates = [real["key"], revoked["key"], "sk_live_not-even-close", keymaterial.generate()]
    answers = [client.post(LEAKS, json={"keys": [c], "source": SOURCE}) for c in candidates]
    assert len({(a.status_code, a.content) for a in answers}) == 1
    assert answers[0].status_code == 202 and answers[0].json() == {"data": {"received": 1}}
    names = {tuple(sorted(set(a.headers) - {"x-request-id"})) for a in answers}
    assert len(names) == 1
    assert [e["type"] for e in events(client, session)].count("leaked") == 1


def test_leak_report_is_rate_limited_per_client_address_and_says_how_much_is_left(make_app, clock):
    minute_ends = str(int(clock()) - int(clock()) % 60 + 60)
    with make_app(leak_report_limit_per_minute=2).test_client() as client:
        accepted = [client.post(LEAKS, json={"keys": ["junk"]}) for _ in range(2)]
        assert [a.status_code for a in accepted] == [202, 202]
        assert [a.headers["x-ratelimit-remaining"] for a in accepted] == ["1", "0"]
        assert {(a.headers["x-ratelimit-limit"], a.headers["x-ratelimit-reset"]) for a in accepted} == {("2", minute_ends)}
        # The IETF fields describe the same windows, each by name.
        assert accepted[1].headers["ratelimit-policy"] == '"minute";q=2;w=60, "day";q=1000;w=86400'
        assert accepted[1].headers["ratelimit"].startswith('"minute";r=0;t=')
        assert ', "day";r=998;t=' in accepted[1].headers["ratelimit"]
        response = client.post(LEAKS, json={"keys": ["junk"]})
        error = assert_error(response, 429, "rate_limit_exceeded")
        assert error["details"]["limit"] == 2 and error["details"]["window"] == "minute"
        assert int(response.headers["retry-after"]) >= 1
        assert (response.headers["x-ratelimit-limit"], response.headers["x-ratelimit-remaining"]) == ("2", "0")
        assert response.headers["x-ratelimit-reset"] == minute_ends


# -- why a key was revoked -------------------------------------------------------------------

WAYS = {
    "bearer": lambda key: {"headers": {"Authorization": f"Bearer {key}"}},
    "header": lambda key: {"headers": {"X-API-Key": key}},
    "query": lambda key: {"params": {"api_key": key}},
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_a_revoked_key_is_told_why_and_when_however_it_is_sent(client, session, mint, clock, way):
    leaked, dropped = mint(name="leaked-one"), mint(name="dropped-one")
    client.post(LEAKS, json={"keys": [leaked["key"]], "source": SOURCE})
    clock.advance(5)
    client.delete(f"{KEYS}/{dropped['id']}", cookies=session())
    trail = {e["key_id"]: e for e in events(client, session) if e["type"] != "minted"}
    for key, reason, event in ((leaked, "leaked", "leaked"), (dropped, "owner", "revoked")):
        error = assert_error(client.get(WHOAMI, **WAYS[way](key["key"])), 401, "revoked_api_key")
        assert error["details"] == {"key_id": key["id"], "reason": reason, "revoked_at": trail[key["id"]]["occurred_at"]}
        assert trail[key["id"]]["type"] == event
    assert "leaked" in assert_error(client.get(WHOAMI, **WAYS[way](leaked["key"])), 401, "revoked_api_key")["message"]


def test_the_owner_lists_revoked_keys_with_the_reason_only_when_asking_for_them(client, session, mint, clock):
    leaked, dropped, kept = mint(name="leaked-one"), mint(name="dropped-one"), mint(name="kept-one")
    reported = client.post(LEAKS, json={"keys": [leaked["key"]], "source": SOURCE})
    clock.advance(60)
    client.delete(f"{KEYS}/{dropped['id']}", cookies=session())
    assert [k["id"] for k in client.get(KEYS, cookies=session()).json()["data"]] == [kept["id"]]
    for value in ("false", "FALSE"):
        listed = client.get(KEYS, params={"include_revoked": value}, cookies=session()).json()["data"]
        assert [k["id"] for k in listed] == [kept["id"]]

    listed = client.get(KEYS, params={"include_revoked": "true"}, cookies=session()).json()["data"]
    by_id = {k["id"]: k for k in listed}
    assert [k["id"] for k in listed] == [kept["id"], dropped["id"], leaked["id"]]  # newest first, as ever
    assert (by_id[leaked["id"]]["status"], by_id[leaked["id"]]["revoked_reason"]) == ("revoked", "leaked")
    assert (by_id[dropped["id"]]["status"], by_id[dropped["id"]]["revoked_reason"]) == ("revoked", "owner")
    assert parse_time(by_id[dropped["id"]]["revoked_at"]) - parse_time(by_id[leaked["id"]]["revoked_at"]) == timedelta(seconds=60)
    assert reported.status_code == 202
    assert by_id[kept["id"]]["status"] == "active"
    assert "revoked_at" not in by_id[kept["id"]] and "revoked_reason" not in by_id[kept["id"]]
    assert "key" not in by_id[leaked["id"]] and by_id[leaked["id"]]["key_preview"] == leaked["key_preview"]


def test_revoked_keys_page_on_like_any_other(client, session, mint):
    minted = [mint(name=f"sensor-{n}") for n in range(5)]
    for key in minted[::2]:
        client.delete(f"{KEYS}/{key['id']}", cookies=session())
    seen, cursor = [], None
    while True:
        params = {"include_revoked": "true", "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get(KEYS, params=params, cookies=session()).json()
        seen += [(k["name"], k["status"]) for k in body["data"]]
        if not (cursor := body["meta"]["next_cursor"]):
            break
    assert seen == [(f"sensor-{n}", "revoked" if n % 2 == 0 else "active") for n in reversed(range(5))]


def test_reading_ones_own_revoked_key_is_a_404_that_says_when_and_why(client, session, mint):
    leaked = mint(name="leaked-one")
    client.post(LEAKS, json={"keys": [leaked["key"]]})
    leaked_at = events(client, session)[0]["occurred_at"]
    error = assert_error(client.get(f"{KEYS}/{leaked['id']}", cookies=session()), 404, "key_not_found")
    assert error["details"] == {"key_id": leaked["id"], "revoked": True, "reason": "leaked", "revoked_at": leaked_at}
    again = assert_error(client.delete(f"{KEYS}/{leaked['id']}", cookies=session()), 404, "key_not_found")
    assert again["details"]["reason"] == "leaked"  # revoking it again changes nothing
    assert [e["type"] for e in events(client, session)] == ["leaked", "minted"]
    # To anyone else the key does not exist.
    theirs = assert_error(client.get(f"{KEYS}/{leaked['id']}", cookies=session("bob")), 404, "key_not_found")
    assert theirs["details"] == {"key_id": leaked["id"]}


@pytest.mark.parametrize(
    ("body", "field", "constraint"),
    [
        ({"keys": []}, "keys", "minItems"),
        ({"keys": ["k"] * 101}, "keys", "maxItems"),
        ({"keys": ["k" * 257]}, "keys", "maxLength"),
        ({"keys": ["k"], "source": "ftp://example.com/x"}, "source", "pattern"),
        ({"source": SOURCE}, "keys", "required"),
        ({"keys": ["k"], "found_at": SOURCE}, "body", "additionalProperties"),
    ],
)
def test_leak_report_rejects_invalid_bodies(client, body, field, constraint):
    error = assert_error(client.post(LEAKS, json=body), 400, "invalid_parameter")
    assert error["details"]["constraint"] == constraint
    assert error["details"]["field"].split("[")[0].split("/")[0].split(".")[0] == field


def test_leak_report_source_is_stored_with_any_key_in_it_masked(client, session, mint, query):
    leaked, bystander = mint(name="leaked-one"), mint(name="bystander")
    source = f"https://paste.example/raw?k={leaked['key']}&other={bystander['key']}"
    assert client.post(LEAKS, json={"keys": [leaked["key"]], "source": source}).status_code == 202
    shown = events(client, session)[0]["details"]["source"]
    assert shown == "https://paste.example/raw?k=sk_live_[REDACTED]&other=sk_live_[REDACTED]"
    stored = str(query("SELECT * FROM key_events"))
    assert leaked["key"] not in stored and bystander["key"] not in stored


@pytest.mark.parametrize("form", ["percent_upper", "percent_lower", "double", "base64"])
def test_leak_report_source_with_an_encoded_key_is_stored_and_shown_masked(client, session, mint, query, form):
    from tests.test_keymaterial import encoded_forms

    leaked, bystander = mint(name="leaked-one"), mint(name="bystander")
    source = f"https://paste.example/raw?k={encoded_forms(bystander['key'])[form]}&n=1"
    assert client.post(LEAKS, json={"keys": [leaked["key"]], "source": source}).status_code == 202
    shown = events(client, session)[0]["details"]["source"]
    assert shown.startswith("https://paste.example/raw?k=") and shown.endswith("&n=1") and "[REDACTED]" in shown
    stored = str(query("SELECT * FROM key_events"))
    secret = bystander["key"][len(keymaterial.PREFIX) :]
    for text in (shown, stored):
        assert secret not in text and encoded_forms(bystander["key"])[form] not in text


def test_readme_names_every_header_that_differs_between_two_leak_reports(client, clock):
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Reporting a leaked key")[1].split("\n## ")[0]
    said = section[section.index("Between two reports only"):].split("\n\n")[0].replace("\n", " ").lower()
    first = client.post(LEAKS, json={"keys": ["junk"]})
    clock.advance(1)
    second = client.post(LEAKS, json={"keys": ["junk"]})
    differing = {h for h in set(first.headers) | set(second.headers) if first.headers.get(h) != second.headers.get(h)}
    assert differing >= {"x-request-id", "x-ratelimit-remaining", "ratelimit"}
    assert {h for h in differing if f"`{h}`" not in said} == set()
