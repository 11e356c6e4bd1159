"""Retention: revoked and expired keys, and key events, are deleted once past KEY_RETENTION_DAYS."""

from __future__ import annotations

import time
import uuid

import pytest

from app.domain import retention
from app.domain.retention import DAY_US, RetentionSweeper
from app.store import SQLiteStore
from tests.live import LiveServer
from tests.test_cli import SECRET, run
from tests.test_store import T0, USER, insert, make_event, make_record, raw

# Tests taking `store`, `settings`, `client` or `query` run on SQLite and on PostgreSQL (see conftest).
ENGINES = ("sqlite", "postgresql")

DAYS = 90
NOW = T0 + 200 * DAY_US


def names(query, table: str = "api_keys", column: str = "name") -> set[str]:
    # bandit B608: the table and column are this module's literals.
    return {row[0] for row in query(f"SELECT {column} FROM {table}")}  # nosec B608


def old_and_recent(store) -> dict[str, str]:
    """Keys in every state, some past retention at NOW and some not; their ids by name."""
    past, within = NOW - (DAYS + 1) * DAY_US, NOW - (DAYS - 1) * DAY_US
    keys = {
        "active": insert(store, "active", T0),
        "never-expires-old": insert(store, "never-expires-old", T0 - 400 * DAY_US),
        "revoked-long-ago": insert(store, "revoked-long-ago", T0),
        "revoked-lately": insert(store, "revoked-lately", T0),
        "expired-long-ago": insert(store, "expired-long-ago", T0, expires_us=past),
        "expired-lately": insert(store, "expired-lately", T0, expires_us=within),
        "expires-later": insert(store, "expires-later", T0, expires_us=NOW + DAY_US),
    }
    for name, at in (("revoked-long-ago", past), ("revoked-lately", within)):
        store.revoke_key(USER, keys[name].id, at, make_event(keys[name], "revoked", at))
    return {name: record.id for name, record in keys.items()}


def test_prune_deletes_keys_and_events_past_retention_and_keeps_the_rest(store, query):
    old_and_recent(store)
    keys, events = retention.prune(store, NOW, DAYS)
    assert names(query) == {"active", "never-expires-old", "revoked-lately", "expired-lately", "expires-later"}
    assert keys == 2
    # Every `minted` event is older than 90 days; the one revocation within them stays.
    assert {(row[0], row[1]) for row in query("SELECT key_name, type FROM key_events")} == {
        ("revoked-lately", "revoked")
    }
    assert events == 8
    assert retention.prune(store, NOW, DAYS) == (0, 0)


def test_prune_keeps_everything_within_a_longer_retention(store, query):
    old_and_recent(store)
    assert retention.prune(store, NOW, 700) == (0, 0)
    assert len(names(query)) == 7


def test_prune_deletes_in_batches_of_one_transaction_each(store, query):
    store.ensure_account(USER, T0)
    for i in range(7):
        record = insert(store, f"gone-{i}", T0)
        store.revoke_key(USER, record.id, T0 + 1, make_event(record, "revoked", T0 + 1))
    batches = []
    original = store.prune

    def counted(before_us: int, limit: int) -> tuple[int, int]:
        batches.append(original(before_us, limit))
        return batches[-1]

    store.prune = counted
    assert retention.prune(store, NOW, DAYS, batch=4) == (7, 14)
    assert [sum(batch) for batch in batches] == [4, 4, 4, 4, 4, 1]
    assert query("SELECT count(*) FROM api_keys") == [(0,)] == query("SELECT count(*) FROM key_events")


def test_a_sweep_stopped_between_batches_stops(store, query):
    store.ensure_account(USER, T0)
    for i in range(5):
        record = insert(store, f"gone-{i}", T0)
        store.revoke_key(USER, record.id, T0 + 1, make_event(record, "revoked", T0 + 1))
    assert retention.prune(store, NOW, DAYS, batch=3, pause=lambda: False) == (3, 0)
    assert query("SELECT count(*) FROM api_keys") == [(2,)]


def swept_by(sweeper: RetentionSweeper, query) -> set[str]:
    """The names left once the sweeper has pruned what is past retention (10 s at most); it is stopped."""
    try:
        deadline = time.monotonic() + 10
        while len(names(query)) > 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sweeper.stop()
    return names(query)


KEPT = {"active", "never-expires-old", "revoked-lately", "expired-lately", "expires-later"}


def test_the_sweeper_prunes_at_once_and_stops_when_told(store, query):
    old_and_recent(store)
    assert swept_by(RetentionSweeper(store, lambda: NOW / 1_000_000, DAYS, interval=3600), query) == KEPT


def test_a_sweep_the_store_could_not_answer_is_tried_again_soon_not_in_an_hour(store, query, monkeypatch, caplog):
    from app.domain.errors import StoreUnavailable

    old_and_recent(store)
    real, refusals = store.prune, [StoreUnavailable("read-only")]

    def prune(before_us: int, limit: int) -> tuple[int, int]:
        if refusals:
            raise refusals.pop()
        return real(before_us, limit)

    monkeypatch.setattr(store, "prune", prune)
    sweeper = RetentionSweeper(store, lambda: NOW / 1_000_000, DAYS, interval=3600, retry_interval=0.05)
    assert swept_by(sweeper, query) == KEPT
    assert "retention: the store was unavailable; the sweep is tried again in 0 s" in caplog.text


def test_a_revoked_key_is_listed_until_past_retention_then_is_an_unknown_key(client, session, mint, clock, app):
    minted = mint("ci-runner")
    assert client.delete(f"/api/v1/keys/{minted['id']}", cookies=session()).status_code == 204
    store = app.app.extensions["services"].store

    def listed() -> list[str]:
        page = client.get("/api/v1/keys", params={"include_revoked": "true"}, cookies=session()).json()
        return [key["id"] for key in page["data"]]

    def whoami() -> str:
        response = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {minted['key']}"})
        return response.json()["error"]["code"]

    clock.advance((DAYS - 1) * 86_400)
    assert retention.prune(store, int(clock() * 1_000_000), DAYS) == (0, 0)
    assert listed() == [minted["id"]] and whoami() == "revoked_api_key"
    clock.advance(2 * 86_400)
    assert retention.prune(store, int(clock() * 1_000_000), DAYS) == (1, 2)
    assert listed() == [] and whoami() == "invalid_api_key"
    assert client.get("/api/v1/key-events", cookies=session()).json()["data"] == []
    assert client.get(f"/api/v1/keys/{minted['id']}", cookies=session()).json()["error"]["details"] == {
        "key_id": minted["id"]
    }


def test_the_prune_command_deletes_what_is_past_retention_and_says_how_much(tmp_path):
    store = SQLiteStore(tmp_path / "keys.db")
    now = int(time.time() * 1_000_000)
    old = insert(store, "old", now - 40 * DAY_US)
    store.revoke_key(USER, old.id, now - 31 * DAY_US, make_event(old, "revoked", now - 31 * DAY_US))
    recent = make_record("recent", USER, now)
    store.insert_key(recent, uuid.uuid4().hex * 2, 50, make_event(recent, "minted"))
    store.close()
    result = run(tmp_path, "prune", KEY_RETENTION_DAYS="30")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "prune: deleted 1 keys and 2 key events older than 30 days"
    reopened = SQLiteStore(tmp_path / "keys.db")
    try:
        assert [r.name for r in reopened.list_keys(USER, 10, None, include_revoked=True)] == ["recent"]
    finally:
        reopened.close()


def test_the_prune_command_refuses_a_retention_below_one_day(tmp_path):
    result = run(tmp_path, "prune", KEY_RETENTION_DAYS="0")
    assert result.returncode == 2 and "KEY_RETENTION_DAYS must be at least 1" in result.stderr


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_server_deletes_what_is_past_retention_when_it_starts(tmp_path, command):
    path = tmp_path / "live" / "keys.db"
    store = SQLiteStore(path)
    now = int(time.time() * 1_000_000)
    old = insert(store, "old", now - 100 * DAY_US)
    store.revoke_key(USER, old.id, now - 95 * DAY_US, make_event(old, "revoked", now - 95 * DAY_US))
    insert(store, "recent", now)
    store.close()
    env = {"SUPABASE_JWT_SECRET": SECRET, **({"APP_ENV": "production"} if command == "serve" else {})}
    with LiveServer(command, tmp_path, env) as server:
        deadline = time.monotonic() + 30
        while raw(path, "SELECT count(*) FROM api_keys") != [(1,)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert raw(path, "SELECT name FROM api_keys") == [("recent",)]
        assert raw(path, "SELECT key_name, type FROM key_events") == [("recent", "minted")]
    assert "retention: deleted 1 keys and 2 key events older than 90 days" in server.output()
