from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from app.domain import keymaterial
from app.domain.errors import DuplicateName, KeyLimitReached, RevokedAPIKey
from app.domain.keys import KeyService
from app.domain.ratelimit import tier_subject
from app.domain.records import KeyEvent, KeyRecord, Window
from app.store import SCHEMA_VERSION, SQLiteStore, writer

# Tests taking `store`, `settings` or `query` run on SQLite and on PostgreSQL (see conftest).
ENGINES = ("sqlite", "postgresql")

T0 = 1_795_000_000_000_000  # microseconds
SECOND = 1_000_000
USER = "user-1"


def make_record(name: str = "prod-splunk", user: str = USER, created_us: int = T0,
                expires_us: int | None = None) -> KeyRecord:
    return KeyRecord(
        id=str(uuid.uuid4()), user_id=user, name=name, preview="sk_live_Ab12••••••••", tier="free",
        created_us=created_us, expires_us=expires_us, revoked_us=None, total_requests=0, last_used_us=None,
    )


def make_event(record: KeyRecord, kind: str, at: int | None = None) -> KeyEvent:
    return KeyEvent(
        id=str(uuid.uuid4()), user_id=record.user_id, key_id=record.id, type=kind, key_name=record.name,
        key_preview=record.preview, request_id="req_test", occurred_us=record.created_us if at is None else at,
        details={},
    )


def insert(store: SQLiteStore, name: str = "prod-splunk", created_us: int = T0, max_active: int = 50,
           user: str = USER, expires_us: int | None = None) -> KeyRecord:
    store.ensure_account(user, created_us)
    record = make_record(name, user, created_us, expires_us)
    store.insert_key(record, uuid.uuid4().hex + uuid.uuid4().hex, max_active, make_event(record, "minted"))
    return record


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- schema -------------------------------------------------------------------------------


def test_migrate_sets_user_version_and_creates_tables(tmp_path):
    path = tmp_path / "keys.db"
    SQLiteStore(path)
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "api_keys", "key_events", "rate_windows"} <= tables


def test_migrate_is_idempotent_and_keeps_data(tmp_path):
    path = tmp_path / "keys.db"
    first = SQLiteStore(path)
    record = insert(first)
    first.close()
    second = SQLiteStore(path)
    second.migrate()
    assert second.get_key(USER, record.id) == record
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_store_creates_missing_parent_directory(tmp_path):
    path = tmp_path / "a" / "b" / "keys.db"
    SQLiteStore(path).ping()
    assert path.exists()


def test_store_works_on_an_open_connection(tmp_path):
    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    store = SQLiteStore(conn)
    store.ping()
    record = insert(store)
    assert store.get_key(USER, record.id) == record
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    # Migrating again on the same connection is harmless.
    SQLiteStore(conn)
    assert store.get_key(USER, record.id) == record


# -- accounts -----------------------------------------------------------------------------


def main_file_holds_account(path: Path, user: str) -> bool:
    """Whether the database file alone, without its write-ahead log, already holds `user`."""
    copy = path.with_name("main-only.db")
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT 1 FROM accounts WHERE user_id = ?", (user,)).fetchone() is not None
    except sqlite3.DatabaseError:  # no tables yet: the schema itself is still only in the log
        return False
    finally:
        conn.close()


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_background_checkpointer_copies_commits_into_the_database_file(tmp_path):
    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    store.ensure_account("before", T0)
    # A few pages, far below SQLite's own 1,000-page checkpoint: they stay in the log.
    assert not main_file_holds_account(path, "before")
    store.checkpoint_in_background(interval=0.01)
    try:
        store.ensure_account("after", T0)
        assert wait_for(lambda: main_file_holds_account(path, "after"))
        assert main_file_holds_account(path, "before")
    finally:
        store.close()


def test_closing_the_store_stops_its_checkpointer(tmp_path):
    store = SQLiteStore(tmp_path / "keys.db")
    store.checkpoint_in_background(interval=0.01)
    store.checkpoint_in_background(interval=0.01)  # once per store, however often asked
    running = [t for t in threading.enumerate() if t.name == "sqlite-checkpointer"]
    assert len(running) == 1
    store.close()
    assert not running[0].is_alive()


def test_ensure_account_creates_free_tier_once(store):
    created = store.ensure_account(USER, T0)
    assert (created.user_id, created.tier, created.created_us) == (USER, "free", T0)
    again = store.ensure_account(USER, T0 + 10 * SECOND)
    assert again == created


def test_ensure_account_keeps_an_upgraded_tier(store):
    store.ensure_account(USER, T0)
    store.set_tier(USER, "pro", T0 + SECOND)
    assert store.ensure_account(USER, T0 + 2 * SECOND).tier == "pro"


def test_set_tier_creates_missing_account(store):
    account = store.set_tier("new-user", "pro", T0)
    assert (account.user_id, account.tier, account.created_us) == ("new-user", "pro", T0)


def test_set_tier_updates_existing_account_and_keeps_created_time(store):
    store.ensure_account(USER, T0)
    account = store.set_tier(USER, "pro", T0 + SECOND)
    assert (account.tier, account.created_us) == ("pro", T0)
    assert store.set_tier(USER, "free", T0 + 2 * SECOND).tier == "free"


def test_key_tier_follows_account_tier(store):
    record = insert(store)
    store.set_tier(USER, "pro", T0 + SECOND)
    assert store.get_key(USER, record.id).tier == "pro"


# -- keys ---------------------------------------------------------------------------------


def test_insert_then_get_key_round_trips(store):
    record = insert(store, expires_us=T0 + 86_400 * SECOND)
    assert store.get_key(USER, record.id) == record


def test_get_key_of_another_user_is_none(store):
    record = insert(store)
    store.ensure_account("user-2", T0)
    assert store.get_key("user-2", record.id) is None


def test_get_unknown_key_is_none(store):
    store.ensure_account(USER, T0)
    assert store.get_key(USER, str(uuid.uuid4())) is None


def test_insert_key_records_minted_event(store):
    record = insert(store)
    (event,) = store.list_events(USER, 10, None)
    assert (event.type, event.key_id, event.key_name, event.occurred_us) == ("minted", record.id, record.name, T0)


def test_insert_key_rejects_active_duplicate_name(store):
    insert(store, "prod-splunk")
    with pytest.raises(DuplicateName):
        insert(store, "prod-splunk", T0 + SECOND)
    assert len(store.list_keys(USER, 10, None)) == 1
    assert len(store.list_events(USER, 10, None)) == 1


def test_duplicate_name_is_per_user(store):
    insert(store, "prod-splunk")
    insert(store, "prod-splunk", user="user-2")
    assert len(store.list_keys("user-2", 10, None)) == 1


def test_insert_key_allows_name_again_after_revocation(store):
    first = insert(store, "prod-splunk")
    store.revoke_key(USER, first.id, T0 + SECOND, make_event(first, "revoked", T0 + SECOND))
    second = insert(store, "prod-splunk", T0 + 2 * SECOND)
    assert store.get_key(USER, second.id) == second


def test_insert_key_allows_name_again_after_expiry(store):
    insert(store, "prod-splunk", expires_us=T0 + 10 * SECOND)
    with pytest.raises(DuplicateName):
        insert(store, "prod-splunk", T0 + 9 * SECOND)
    second = insert(store, "prod-splunk", T0 + 10 * SECOND)
    assert store.get_key(USER, second.id) == second


def test_insert_key_raises_key_limit_reached_at_max_active(store):
    for i in range(3):
        insert(store, f"key-{i}", T0 + i, max_active=3)
    with pytest.raises(KeyLimitReached) as caught:
        insert(store, "one-too-many", T0 + 10, max_active=3)
    assert caught.value.details == {"limit": 3}
    assert len(store.list_keys(USER, 10, None)) == 3


def test_key_limit_ignores_revoked_and_expired_keys(store):
    revoked = insert(store, "revoked", T0, max_active=2)
    store.revoke_key(USER, revoked.id, T0 + 1, make_event(revoked, "revoked", T0 + 1))
    insert(store, "expiring", T0 + 2, max_active=2, expires_us=T0 + 5)
    insert(store, "live", T0 + 3, max_active=2)
    insert(store, "another", T0 + 10, max_active=2)  # the expiring key no longer counts
    with pytest.raises(KeyLimitReached):
        insert(store, "too-many", T0 + 11, max_active=2)


def test_list_keys_newest_first(store):
    records = [insert(store, f"key-{i}", T0 + i * SECOND) for i in range(3)]
    assert [r.id for r in store.list_keys(USER, 10, None)] == [r.id for r in reversed(records)]


def test_list_keys_respects_limit_and_before_cursor(store):
    records = [insert(store, f"key-{i}", T0 + i * SECOND) for i in range(5)]
    newest_first = list(reversed(records))
    page = store.list_keys(USER, 2, None)
    assert page == newest_first[:2]
    page = store.list_keys(USER, 2, (page[-1].created_us, page[-1].id))
    assert page == newest_first[2:4]
    page = store.list_keys(USER, 2, (page[-1].created_us, page[-1].id))
    assert page == newest_first[4:]


def test_list_keys_pages_through_time_ties_without_gaps_or_repeats(store):
    records = [insert(store, f"key-{i}", T0) for i in range(5)]
    insert(store, "newer", T0 + SECOND)
    whole = store.list_keys(USER, 10, None)
    assert whole[0].name == "newer"
    assert sorted(r.id for r in whole[1:]) == sorted(r.id for r in records)
    paged, before = [], None
    while page := store.list_keys(USER, 2, before):
        paged += page
        before = (page[-1].created_us, page[-1].id)
    assert paged == whole


def test_list_keys_excludes_revoked_and_other_users(store):
    kept = insert(store, "kept", T0)
    gone = insert(store, "gone", T0 + 1)
    insert(store, "theirs", T0 + 2, user="user-2")
    store.revoke_key(USER, gone.id, T0 + 3, make_event(gone, "revoked", T0 + 3))
    assert store.list_keys(USER, 10, None) == [kept]


def test_revoke_key_hides_key_and_records_event(store):
    record = insert(store)
    revoked = store.revoke_key(USER, record.id, T0 + SECOND, make_event(record, "revoked", T0 + SECOND))
    assert revoked is not None and revoked.id == record.id
    assert store.get_key(USER, record.id) is None
    types = [e.type for e in store.list_events(USER, 10, None)]
    assert types == ["revoked", "minted"]


def test_revoke_key_twice_returns_none_and_records_no_second_event(store):
    record = insert(store)
    store.revoke_key(USER, record.id, T0 + SECOND, make_event(record, "revoked", T0 + SECOND))
    assert store.revoke_key(USER, record.id, T0 + 2 * SECOND, make_event(record, "revoked", T0 + 2 * SECOND)) is None
    assert len(store.list_events(USER, 10, None)) == 2


def test_revoke_key_of_another_user_returns_none(store):
    record = insert(store)
    store.ensure_account("user-2", T0)
    assert store.revoke_key("user-2", record.id, T0 + 1, make_event(record, "revoked", T0 + 1)) is None
    assert store.get_key(USER, record.id) == record


def test_a_revoked_key_keeps_why_it_was_revoked_and_is_read_only_when_asked_for(store):
    by_owner, leaked, kept = insert(store, "by-owner", T0), insert(store, "leaked", T0 + 1), insert(store, "kept", T0 + 2)
    store.revoke_key(USER, by_owner.id, T0 + 3, make_event(by_owner, "revoked", T0 + 3))
    digest = stored_digest(store, leaked.id)
    assert [r.id for r in store.revoke_leaked([digest], T0 + 4, lambda r: make_event(r, "leaked", T0 + 4))] == [leaked.id]

    assert store.get_key(USER, leaked.id) is None
    seen = store.get_key(USER, leaked.id, include_revoked=True)
    assert (seen.revoked_us, seen.revoked_reason) == (T0 + 4, "leaked")
    listed = {r.name: r for r in store.list_keys(USER, 10, None, include_revoked=True)}
    assert [r.name for r in store.list_keys(USER, 10, None, include_revoked=True)] == ["kept", "leaked", "by-owner"]
    assert (listed["by-owner"].revoked_us, listed["by-owner"].revoked_reason) == (T0 + 3, "owner")
    assert (listed["kept"].revoked_us, listed["kept"].revoked_reason) == (None, None)
    assert store.list_keys(USER, 10, None) == [kept]
    assert store.get_key("user-2", leaked.id, include_revoked=True) is None


def stored_digest(store, key_id: str) -> str:
    """The digest a key is stored under, read back through a lookup that finds it."""
    with store._conn() as conn:
        return conn.execute(store.sql("SELECT digest FROM api_keys WHERE id = ?"), (key_id,)).fetchone()[0]


def test_upgrading_a_version_3_database_keeps_why_each_revoked_key_was_revoked(tmp_path):
    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    by_owner, leaked = insert(store, "by-owner"), insert(store, "leaked")
    insert(store, "kept")
    store.revoke_key(USER, by_owner.id, T0 + 1, make_event(by_owner, "revoked", T0 + 1))
    store.revoke_leaked([stored_digest(store, leaked.id)], T0 + 2, lambda r: make_event(r, "leaked", T0 + 2))
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE api_keys DROP COLUMN revoked_reason")  # as version 3 had it
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    SQLiteStore(path)
    assert raw(path, "SELECT name, revoked_reason FROM api_keys ORDER BY name") == [
        ("by-owner", "owner"), ("kept", None), ("leaked", "leaked"),
    ]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_upgrading_a_version_2_postgresql_schema_keeps_why_each_revoked_key_was_revoked(pg_schema):
    import psycopg

    from app.store.postgres import PostgresStore
    from app.store.postgres_migrations import STEPS
    from tests.conftest import schema_url

    url = schema_url(pg_schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_us bigint NOT NULL)")
        for version, sql in STEPS[:2]:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
        conn.execute("INSERT INTO accounts VALUES (%s, 'free', 0)", (USER,))
        for name, revoked in (("by-owner", T0), ("leaked", T0), ("kept", None)):
            conn.execute(
                "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, revoked_us) "
                "VALUES (%s, %s, %s, %s, 'sk_live_Ab12', 0, %s)",
                (name, USER, name, name, revoked),
            )
        conn.execute(
            "INSERT INTO key_events (id, user_id, key_id, type, key_name, key_preview, request_id, occurred_us, details) "
            "VALUES ('e1', %s, 'leaked', 'leaked', 'leaked', 'sk_live_Ab12', 'req_1', %s, '{}')",
            (USER, T0),
        )
    store = PostgresStore(url, pool_size=2)
    try:
        assert store.schema_version() == STEPS[-1][0]
        with store._conn() as conn:
            rows = conn.execute("SELECT name, revoked_reason FROM api_keys ORDER BY name").fetchall()
    finally:
        store.close()
    assert rows == [("by-owner", "owner"), ("kept", None), ("leaked", "leaked")]


HISTORY_INDEXES = {"api_keys_active", "api_keys_unrevoked", "api_keys_revoked", "api_keys_expires", "key_events_occurred"}


def every_row(conn) -> dict[str, list[tuple]]:
    """Every row of every table, in a fixed order."""
    return {
        table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        for table in ("accounts", "api_keys", "key_events", "rate_windows")
    }


def fill_every_table(store) -> None:
    """Keys in every state, their events, and an account's rate windows."""
    live, gone, ending = insert(store, "live"), insert(store, "gone"), insert(store, "ending", expires_us=T0 + 5)
    insert(store, "theirs", user="user-2")
    store.revoke_key(USER, gone.id, T0 + 1, make_event(gone, "revoked", T0 + 1))
    store.consume(tier_subject(USER), windows(60), T0 + 2)
    assert live and ending


def test_upgrading_a_version_4_database_adds_the_history_indexes_and_keeps_every_row(tmp_path):
    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    fill_every_table(store)
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for index in HISTORY_INDEXES:  # as version 4 had it
        conn.execute(f"DROP INDEX {index}")
    conn.execute("PRAGMA user_version = 4")
    before = every_row(conn)
    conn.close()
    assert all(before.values())
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert every_row(conn) == before
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + SQLiteStore.compiled()["active_keys"], ("live", USER, T0)
        ).fetchall()
    finally:
        conn.close()
    assert indexes >= HISTORY_INDEXES
    assert "USING INDEX api_keys_active" in plan[-1][-1] or "USING COVERING INDEX api_keys_active" in plan[-1][-1]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(6,)]


def test_upgrading_a_version_3_postgresql_schema_adds_the_history_indexes_and_keeps_every_row(pg_schema):
    import psycopg

    from app.store.postgres import PostgresStore
    from app.store.postgres_migrations import STEPS
    from tests.conftest import schema_url

    url = schema_url(pg_schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_us bigint NOT NULL)")
        for version, sql in STEPS[:3]:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
        conn.execute(dict(STEPS)[5])  # for today's store code to fill it; taken away again below
    old = PostgresStore(url, pool_size=2, migrate=False)
    try:
        fill_every_table(old)
    finally:
        old.close()
    with psycopg.connect(url, autocommit=True) as conn:
        before = every_row(conn)
        conn.execute("ALTER TABLE api_keys DROP COLUMN scopes, DROP COLUMN allowed_ips")  # as version 3 had it
    assert all(before.values())
    store = PostgresStore(url, pool_size=2)
    try:
        assert store.schema_version() == STEPS[-1][0] == 5
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        assert every_row(conn) == before
        indexes = {name for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s",
                                                    (pg_schema,))}
    assert indexes >= HISTORY_INDEXES


# -- costs that must not grow with an account's history ---------------------------------------

HISTORY = 3000  # revoked and expired keys of one account, all newer than its active keys


def add_history(store, user: str, count: int, created_us: int, ended_us: int, expired: bool = True) -> None:
    """Give `user` `count` keys revoked at `ended_us` (with `expired`, half of them expired then
    instead), straight into the table."""
    rows = [
        (str(uuid.uuid4()), user, f"old-{i}", uuid.uuid4().hex + uuid.uuid4().hex, "sk_live_Ab12••••••••",
         created_us + i, *((ended_us, None, None) if expired and i % 2 else (None, ended_us, "owner")))
        for i in range(count)
    ]
    sql = ("INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us, revoked_us, "
           "revoked_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    with store.transaction() as conn:
        conn.cursor().executemany(store.sql(sql), rows)
        conn.execute("ANALYZE api_keys")  # the planner sees the table as it now is


@contextlib.contextmanager
def work_done(store, settings):
    """Count the work the store's statements do in the block, in `counted[0]`.

    SQLite: the virtual machine's instructions (a row examined costs several). PostgreSQL: the
    rows of `api_keys` each read statement examines, from EXPLAIN ANALYZE of the statement
    as the store sent it.
    """
    counted = [0]
    if isinstance(store, SQLiteStore):
        def step() -> int:
            counted[0] += 1
            return 0

        with store._conn() as conn:
            conn.set_progress_handler(step, 1)
            try:
                yield counted
            finally:
                conn.set_progress_handler(None, 1)
        return
    import json as jsonlib

    import psycopg

    sent: list[tuple[str, tuple]] = []
    execute = psycopg.Connection.execute

    def recording(self, query, params=None, **kwargs):
        if isinstance(query, str) and query.lstrip().upper().startswith("SELECT") and "api_keys" in query:
            sent.append((query, params))
        return execute(self, query, params, **kwargs)

    psycopg.Connection.execute = recording
    try:
        yield counted
    finally:
        psycopg.Connection.execute = execute
    with psycopg.connect(settings.database_url) as conn:  # rolled back on leaving: EXPLAIN ANALYZE changes nothing
        for query, params in sent:
            (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()
            counted[0] += rows_examined(plan[0]["Plan"] if isinstance(plan, list) else jsonlib.loads(plan)[0]["Plan"])


def rows_examined(node: dict) -> int:
    """Rows of `api_keys` a plan node and those under it read: returned or filtered out."""
    own = 0
    if node.get("Relation Name") == "api_keys":
        own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
               + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
    return own + sum(rows_examined(child) for child in node.get("Plans", []))


def test_minting_costs_an_account_with_a_long_history_what_it_costs_one_without(store, settings):
    now = T0 + 10 * SECOND
    for user in ("light", "heavy"):
        for i in range(3):
            insert(store, f"live-{i}", T0, user=user)
    add_history(store, "heavy", HISTORY, T0 + 1, T0 + 2)
    cost = {}
    for user in ("light", "heavy"):
        minted = make_record("new-key", user, now)
        duplicate = make_record("live-1", user, now)
        with work_done(store, settings) as counted:
            store.insert_key(minted, uuid.uuid4().hex * 2, 50, make_event(minted, "minted"))
            with pytest.raises(DuplicateName):
                store.insert_key(duplicate, uuid.uuid4().hex * 2, 50, make_event(duplicate, "minted"))
        cost[user] = counted[0]
    assert cost["heavy"] <= cost["light"] * 1.2 + 10, cost


def test_listing_active_keys_costs_an_account_with_a_long_history_what_it_costs_one_without(store, settings):
    for user in ("light", "heavy"):
        for i in range(3):
            insert(store, f"live-{i}", T0, user=user)
    add_history(store, "heavy", HISTORY, T0 + 1, T0 + 2, expired=False)  # expired keys are listed
    cost = {}
    for user in ("light", "heavy"):
        with work_done(store, settings) as counted:
            listed = store.list_keys(user, 21, None)
            assert [r.name for r in listed] == ["live-2", "live-1", "live-0"]
            assert store.list_keys(user, 21, (listed[0].created_us, listed[0].id)) == listed[1:]
        cost[user] = counted[0]
    assert cost["heavy"] <= cost["light"] * 1.2 + 10, cost


def test_the_key_cap_still_counts_only_active_keys_among_a_long_history(store):
    store.ensure_account(USER, T0)
    add_history(store, USER, 40, T0, T0 + 1)
    for i in range(3):
        insert(store, f"live-{i}", T0 + 2, max_active=4)
    insert(store, "expiring", T0 + 2, max_active=4, expires_us=T0 + 5)
    with pytest.raises(KeyLimitReached):
        insert(store, "one-too-many", T0 + 3, max_active=4)
    insert(store, "after-expiry", T0 + 5, max_active=4)  # the expiring key stopped at T0 + 5
    insert(store, "old-0", T0 + 6, max_active=5)  # a revoked key's name is free again
    with pytest.raises(DuplicateName):
        insert(store, "old-0", T0 + 7, max_active=9)


def admit_all(record: KeyRecord) -> list[Window]:
    return windows(60)


def stored_key(store: SQLiteStore, name: str = "prod-splunk", user: str = USER) -> tuple[KeyRecord, str]:
    """A new key of `user`'s, and the digest it is stored under."""
    store.ensure_account(user, T0)
    record = make_record(name, user)
    digest = keymaterial.digest(keymaterial.generate())
    store.insert_key(record, digest, 50, make_event(record, "minted"))
    return record, digest


def test_use_key_sees_the_key_as_stored_revoked_or_not(store):
    record, digest = stored_key(store)
    seen: list[KeyRecord] = []
    found, counted = store.use_key(digest, T0, lambda r: seen.append(r) or windows(60), "req_1")
    assert seen == [record]  # as stored, before this request
    assert counted.allowed and counted.usage == (1, T0)
    assert (found.id, found.total_requests, found.last_used_us) == (record.id, 1, T0)  # counted with it
    store.revoke_key(USER, record.id, T0 + SECOND, make_event(record, "revoked", T0 + SECOND))
    store.use_key(digest, T0 + 2 * SECOND, lambda r: seen.append(r) or windows(60), "req_2")
    assert seen[-1].id == record.id and seen[-1].revoked_us == T0 + SECOND


def test_use_key_refused_by_admit_writes_nothing(store, query):
    record, digest = stored_key(store)

    def refuse(_: KeyRecord) -> list[Window]:
        raise RevokedAPIKey("no")

    with pytest.raises(RevokedAPIKey):
        store.use_key(digest, T0, refuse, "req_1")
    assert store.get_key(USER, record.id).total_requests == 0
    assert query("SELECT count(*) FROM rate_windows") == [(0,)]


def test_use_key_sees_a_tier_change_at_once(store):
    record, digest = stored_key(store)
    tiers: list[str] = []
    store.use_key(digest, T0, lambda r: tiers.append(r.tier) or windows(60), "req_1")
    store.set_tier(USER, "pro", T0)
    store.use_key(digest, T0, lambda r: tiers.append(r.tier) or windows(60), "req_2")
    assert tiers == ["free", "pro"]


def test_use_key_records_one_rate_limited_event_with_the_request_id(store):
    record, digest = stored_key(store)
    results = [store.use_key(digest, T0, admit_all, f"req_{i}")[1] for i in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    limited = [e for e in store.list_events(USER, 10, None) if e.type == "rate_limited"]
    assert [(e.request_id, e.key_id) for e in limited] == [("req_3", record.id)]


def test_use_key_with_unknown_digest_is_none(store):
    assert store.use_key(keymaterial.digest(keymaterial.generate()), T0, admit_all, "req_1") is None


@pytest.mark.sqlite_only
def test_database_never_contains_the_raw_key(settings, clock):
    store = SQLiteStore(settings.database_path)
    minted = KeyService(store, clock).mint(USER, "prod-splunk", 30, "req_test")
    secret = minted.secret
    assert keymaterial.is_well_formed(secret)

    def assert_files_clean() -> None:
        files = [p for p in settings.database_path.parent.iterdir() if p.name.startswith("keys.db")]
        assert settings.database_path in files
        for path in files:  # the database and, while open, its WAL
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert secret[len("sk_live_"):].encode() not in data, path

    assert_files_clean()
    store.close()
    assert_files_clean()

    conn = sqlite3.connect(settings.database_path)
    texts = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for row in conn.execute(f'SELECT * FROM "{table}"'):
            texts += [v for v in row if isinstance(v, str)]
    conn.close()
    assert keymaterial.digest(secret) in texts  # the rows were really read
    assert not any(secret[len("sk_live_"):len("sk_live_") + 8] in t for t in texts)


# -- rate windows -------------------------------------------------------------------------


def windows(minute_start: int, day_start: int = 0, per_minute: int = 3, per_day: int = 100) -> list[Window]:
    return [Window("minute", minute_start, per_minute), Window("day", day_start, per_day)]


def test_consume_counts_per_window(store):
    results = [store.consume("acct", windows(60), T0) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, True]
    assert [r.counts for r in results] == [
        {"minute": 1, "day": 1}, {"minute": 2, "day": 2}, {"minute": 3, "day": 3}
    ]


def test_consume_refuses_at_limit_without_incrementing(store, query):
    for _ in range(3):
        store.consume("acct", windows(60), T0)
    refused = store.consume("acct", windows(60), T0)
    assert (refused.allowed, refused.blocked_by, refused.counts) == (False, "minute", {"minute": 3, "day": 3})
    again = store.consume("acct", windows(60), T0)
    assert again.counts == {"minute": 3, "day": 3}
    rows = query('SELECT "window", count FROM rate_windows WHERE subject = \'acct\' ORDER BY "window"')
    assert rows == [("day", 3), ("minute", 3)]


def test_consume_resets_count_when_window_starts_anew(store):
    for _ in range(3):
        store.consume("acct", windows(60), T0)
    assert not store.consume("acct", windows(60), T0).allowed
    admitted = store.consume("acct", windows(120), T0 + 60 * SECOND)
    assert admitted.allowed
    assert admitted.counts == {"minute": 1, "day": 4}


def test_consume_keeps_one_row_per_subject_and_window_kind(store, query):
    for minute in range(5):
        store.consume("acct", windows(60 * minute, day_start=86_400 * (minute // 2)), T0)
    rows = query('SELECT "window", start, count FROM rate_windows WHERE subject = \'acct\' ORDER BY "window"')
    assert rows == [("day", 86_400 * 2, 1), ("minute", 240, 1)]


def test_consume_subjects_are_counted_separately(store):
    for _ in range(3):
        store.consume("a", windows(60), T0)
    assert store.consume("b", windows(60), T0).counts == {"minute": 1, "day": 1}


def test_consume_blocked_by_day_when_minute_has_room(store):
    ws = windows(0, per_minute=10, per_day=2)
    store.consume("acct", ws, T0)
    store.consume("acct", ws, T0)
    refused = store.consume("acct", windows(60, per_minute=10, per_day=2), T0)
    assert (refused.allowed, refused.blocked_by) == (False, "day")


def test_use_key_records_rate_limited_event_once_per_window(store):
    record, digest = stored_key(store)
    for _ in range(3):
        store.use_key(digest, T0, admit_all, "req_ok")
    first = store.use_key(digest, T0 + 1, admit_all, "req_1")[1]
    second = store.use_key(digest, T0 + 2, admit_all, "req_2")[1]
    assert (first.first_block, second.first_block) == (True, False)
    limited = [e for e in store.list_events(USER, 10, None) if e.type == "rate_limited"]
    assert len(limited) == 1
    assert (limited[0].request_id, limited[0].key_id, limited[0].occurred_us) == ("req_1", record.id, T0 + 1)
    assert limited[0].details == {"window": "minute", "limit": 3, "applies_to": "account"}


def test_use_key_records_a_new_rate_limited_event_in_the_next_window(store):
    record, digest = stored_key(store)
    for minute_start in (60, 120):
        for _ in range(4):
            store.use_key(digest, T0, lambda r, start=minute_start: windows(start), "req_x")
    limited = [e for e in store.list_events(USER, 10, None) if e.type == "rate_limited"]
    assert len(limited) == 2


def test_use_key_bumps_key_usage_only_when_admitted(store):
    record, digest = stored_key(store)
    for i in range(3):
        store.use_key(digest, T0 + i * SECOND, admit_all, "req_ok")
    used = store.get_key(USER, record.id)
    assert (used.total_requests, used.last_used_us) == (3, T0 + 2 * SECOND)
    store.use_key(digest, T0 + 9 * SECOND, admit_all, "req_refused")
    refused = store.get_key(USER, record.id)
    assert (refused.total_requests, refused.last_used_us) == (3, T0 + 2 * SECOND)


def test_consume_without_usage_key_leaves_keys_untouched(store):
    record = insert(store)
    store.consume("account:user-1", windows(60), T0)
    assert store.get_key(USER, record.id).total_requests == 0


def test_use_key_counts_every_key_of_an_account_in_one_pair_of_windows(store, query):
    digests = [stored_key(store, name)[1] for name in ("siem", "soar", "laptop")]
    results = [store.use_key(digests[i % 3], T0, admit_all, f"req_{i}")[1] for i in range(9)]
    assert [r.allowed for r in results] == [True] * 3 + [False] * 6  # 3 a minute for the account, not per key
    assert [r.counts for r in results[:3]] == [{"minute": n, "day": n} for n in (1, 2, 3)]
    sql = 'SELECT subject, "window", count FROM rate_windows ORDER BY "window"'
    assert query(sql) == [("tier:user-1", "day", 3), ("tier:user-1", "minute", 3)]


def test_use_key_keeps_usage_per_key_while_the_windows_are_the_accounts(store):
    (first, first_digest), (second, second_digest) = stored_key(store, "siem"), stored_key(store, "soar")
    store.use_key(first_digest, T0, admit_all, "req_1")
    store.use_key(second_digest, T0 + 1, admit_all, "req_2")
    store.use_key(second_digest, T0 + 2, admit_all, "req_3")
    store.use_key(first_digest, T0 + 3, admit_all, "req_refused")
    assert (store.get_key(USER, first.id).total_requests, store.get_key(USER, first.id).last_used_us) == (1, T0)
    assert (store.get_key(USER, second.id).total_requests, store.get_key(USER, second.id).last_used_us) == (2, T0 + 2)


def test_use_key_records_one_rate_limited_event_per_account_window_about_the_refused_key(store):
    (_, first_digest), (second, second_digest) = stored_key(store, "siem"), stored_key(store, "soar")
    for _ in range(3):
        store.use_key(first_digest, T0, admit_all, "req_ok")
    assert store.use_key(second_digest, T0 + 1, admit_all, "req_b")[1].first_block
    assert not store.use_key(first_digest, T0 + 2, admit_all, "req_a")[1].first_block
    limited = [e for e in store.list_events(USER, 10, None) if e.type == "rate_limited"]
    assert [(e.key_id, e.request_id) for e in limited] == [(second.id, "req_b")]
    assert limited[0].details == {"window": "minute", "limit": 3, "applies_to": "account"}


def test_accounts_do_not_share_windows(store):
    _, mine = stored_key(store, user="alice")
    _, theirs = stored_key(store, user="bob")
    for _ in range(3):
        store.use_key(mine, T0, admit_all, "req_ok")
    assert not store.use_key(mine, T0, admit_all, "req_refused")[1].allowed
    assert store.use_key(theirs, T0, admit_all, "req_bob")[1].counts == {"minute": 1, "day": 1}


def test_key_use_and_key_management_count_in_separate_windows(store):
    _, digest = stored_key(store)
    for _ in range(3):
        assert store.consume("account:user-1", windows(60), T0).allowed  # key management's own budget
    assert not store.consume("account:user-1", windows(60), T0).allowed
    assert store.use_key(digest, T0, admit_all, "req_1")[1].counts == {"minute": 1, "day": 1}
    for _ in range(2):
        store.use_key(digest, T0, admit_all, "req_ok")
    assert not store.use_key(digest, T0, admit_all, "req_refused")[1].allowed
    assert store.consume("account:someone", windows(60), T0).allowed
    assert store.consume("account:user-1", windows(120), T0 + 60 * SECOND).counts == {"minute": 1, "day": 4}
    assert tier_subject(USER) != "account:user-1"


def test_revoking_a_key_and_minting_another_keeps_the_accounts_windows(store):
    record, digest = stored_key(store, "rotating")
    for _ in range(3):
        store.use_key(digest, T0, admit_all, "req_ok")
    store.revoke_key(USER, record.id, T0 + 1, make_event(record, "revoked", T0 + 1))
    _, fresh = stored_key(store, "rotated")
    refused = store.use_key(fresh, T0 + 2, admit_all, "req_new_key")[1]
    assert (refused.allowed, refused.counts) == (False, {"minute": 3, "day": 3})
    admitted = store.use_key(fresh, T0 + 60 * SECOND, lambda r: windows(120), "req_next_minute")[1]
    assert admitted.counts == {"minute": 1, "day": 4}  # the day kept counting across the rotation


def test_a_new_tiers_limits_apply_to_the_counts_already_in_the_window(store):
    _, digest = stored_key(store)
    for _ in range(3):
        store.use_key(digest, T0, admit_all, "req_ok")
    assert not store.use_key(digest, T0, admit_all, "req_refused")[1].allowed
    upgraded = store.use_key(digest, T0, lambda r: windows(60, per_minute=5), "req_up")[1]
    assert (upgraded.allowed, upgraded.counts) == (True, {"minute": 4, "day": 4})
    assert not store.use_key(digest, T0, lambda r: windows(60, per_minute=2), "req_down")[1].allowed


def test_upgrading_a_version_1_database_moves_key_windows_to_their_accounts(tmp_path):
    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    siem, soar = insert(store, "siem"), insert(store, "soar")
    other = insert(store, "theirs", user="bob")
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executemany(
        "INSERT INTO rate_windows (subject, window, start, count, blocked) VALUES (?, ?, ?, ?, ?)",
        [
            (f"key:{siem.id}", "minute", 120, 4, 0), (f"key:{siem.id}", "day", 0, 40, 0),
            (f"key:{soar.id}", "minute", 60, 9, 1), (f"key:{soar.id}", "day", 0, 2, 1),  # its minute is over
            (f"key:{other.id}", "minute", 120, 1, 0), (f"key:{other.id}", "day", 0, 1, 0),
            ("account:user-1", "minute", 120, 7, 0),
        ],
    )
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    SQLiteStore(path)
    sql = "SELECT subject, window, start, count, blocked FROM rate_windows ORDER BY subject, window"
    assert raw(path, sql) == [
        ("account:user-1", "minute", 120, 7, 0),
        ("tier:bob", "day", 0, 1, 0), ("tier:bob", "minute", 120, 1, 0),
        ("tier:user-1", "day", 0, 42, 1), ("tier:user-1", "minute", 120, 4, 0),
    ]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_keys_of_one_account_used_through_two_stores_are_admitted_exactly_to_the_limit(open_stores):
    """Two stores stand for two worker processes (or instances), each using different keys of one account."""
    from concurrent.futures import ThreadPoolExecutor

    stores = [open_stores(), open_stores()]
    digests = [stored_key(stores[0], f"key-{n}")[1] for n in range(4)]
    limits = [Window("minute", 60, 25), Window("day", 0, 1000)]

    def hammer(n: int) -> int:
        return sum(stores[n % 2].use_key(digests[n % 4], T0, lambda r: limits, "req_x")[1].allowed for _ in range(20))

    with ThreadPoolExecutor(max_workers=8) as pool:
        admitted = sum(pool.map(hammer, range(8)))
    assert admitted == 25
    assert sum(stores[0].get_key(USER, r.id).total_requests for r in stores[0].list_keys(USER, 10, None)) == 25


def test_requests_of_one_account_counted_at_once_through_two_stores_are_all_counted_and_none_refused(open_stores):
    """Two of an account's keys (or two key-management calls) in flight together: none may
    fail on the other's locks (a deadlock would be a 503), and every one is counted."""
    from concurrent.futures import ThreadPoolExecutor

    stores = [open_stores(), open_stores()]
    roomy = [Window("minute", 60, 10**9), Window("day", 0, 10**9)]

    def hammer(n: int) -> int:
        return sum(stores[n % 2].consume("tier:busy", roomy, T0).allowed for _ in range(150))

    with ThreadPoolExecutor(max_workers=8) as pool:
        admitted = sum(pool.map(hammer, range(8)))
    assert admitted == 1200
    assert stores[0].consume("tier:busy", roomy, T0).counts == {"minute": 1201, "day": 1201}


def test_writers_on_two_stores_of_one_file_take_turns_and_lose_nothing(tmp_path):
    """Two stores stand for two worker processes: each has its own write-lock file handle."""
    from concurrent.futures import ThreadPoolExecutor


    stores = [SQLiteStore(tmp_path / "k.db"), SQLiteStore(tmp_path / "k.db")]
    window = (Window("minute", 0, 10_000), Window("day", 0, 100_000))

    def hammer(n: int) -> int:
        store = stores[n % 2]
        return sum(store.consume("key:shared", window, n).allowed for _ in range(50))

    with ThreadPoolExecutor(max_workers=8) as pool:
        admitted = sum(pool.map(hammer, range(8)))
    assert admitted == 400
    final = stores[0].consume("key:shared", window, 0)
    assert final.counts == {"minute": 401, "day": 401}
    assert oct((tmp_path / "k.db.write-lock").stat().st_mode & 0o777) == "0o600"


def test_a_writer_stuck_behind_a_held_lock_fails_closed(tmp_path, monkeypatch):
    import fcntl

    from app.domain.errors import StoreUnavailable

    store = SQLiteStore(tmp_path / "k.db")
    monkeypatch.setattr(store._writer, "_timeout", 0.05)
    with open(tmp_path / "k.db.write-lock", "rb") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        with pytest.raises(StoreUnavailable):
            store.consume("key:x", (Window("minute", 0, 10), Window("day", 0, 100)), 0)
    # Released: the next writer goes through, and nothing was counted while refused.
    assert store.consume("key:x", (Window("minute", 0, 10), Window("day", 0, 100)), 0).counts == {"minute": 1, "day": 1}


def test_a_request_that_read_the_clock_before_a_boundary_counts_in_the_newer_window(store):

    newer = (Window("minute", 120, 3), Window("day", 0, 100))
    late = (Window("minute", 60, 3), Window("day", 0, 100))
    for _ in range(3):
        assert store.consume("key:x", newer, 0).allowed
    refused = store.consume("key:x", late, 0)
    assert not refused.allowed and refused.starts["minute"] == 120
    assert not store.consume("key:x", newer, 0).allowed  # the newer window was not dragged back


def test_a_key_revoked_in_another_worker_is_refused_and_not_counted(open_stores, query, clock):
    """Two stores stand for two workers: a revocation through one is seen by the next use in the other."""
    from app.domain.keys import KeyService

    first, second = open_stores(), open_stores()
    minted = KeyService(first, clock).mint(USER, "racy", None, "req_0")
    other = KeyService(second, clock)
    other.use(minted.secret, None, "req_1")
    first.revoke_key(USER, minted.record.id, T0, make_event(minted.record, "revoked"))
    with pytest.raises(RevokedAPIKey):
        other.use(minted.secret, None, "req_2")
    sql = "SELECT total_requests FROM api_keys WHERE id = ?"
    assert query(sql, (minted.record.id,)) == [(1,)]


def test_a_writer_waits_for_the_lock_without_polling_and_goes_the_moment_it_is_free(tmp_path, monkeypatch):
    import fcntl
    import threading
    import time as time_module

    from app.store import writer as writer_module

    lock = writer_module.WriterLock(tmp_path / "w.lock", timeout_s=5)
    sleeps: list[float] = []
    monkeypatch.setattr(writer_module, "time", type("T", (), {"sleep": sleeps.append}), raising=False)
    order: list[str] = []
    with open(tmp_path / "w.lock", "rb") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)

        def write() -> None:
            with lock.held():
                order.append("writer")

        waiting = threading.Thread(target=write)
        waiting.start()
        time_module.sleep(0.2)  # the writer is queued behind the other process by now
        order.append("released")
        fcntl.flock(other_process, fcntl.LOCK_UN)
        waiting.join(timeout=5)
    assert order == ["released", "writer"]
    assert sleeps == []  # waited in the kernel, not in a polling loop
    with lock.held():  # and the lock is free again afterwards
        pass
    lock.close()


def test_a_writer_that_gave_up_leaves_the_lock_usable(tmp_path):
    import fcntl

    from app.domain.errors import StoreUnavailable
    from app.store.writer import WriterLock

    lock = WriterLock(tmp_path / "w.lock", timeout_s=0.05)
    with open(tmp_path / "w.lock", "rb") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        for _ in range(3):
            with pytest.raises(StoreUnavailable), lock.held():
                pass
    # The abandoned turns are granted and released in turn; then this process writes again.
    for _ in range(3):
        with lock.held():
            pass
    with open(tmp_path / "w.lock", "rb") as other_process:  # and other processes can, too
        # Once the thread that took the abandoned turns has let the last go: it may have been
        # granted the lock only after this process's writes above (through the same open file).
        deadline = time.monotonic() + 5
        while True:
            try:
                fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the lock was never let go"
                time.sleep(0.01)
    lock.close()


# -- PostgreSQL away and back -------------------------------------------------------------


class Proxy:
    """A TCP relay to PostgreSQL that a test can take down (cutting every connection) and bring back."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket

        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._sockets: list = []
        self._listener = None

    def start(self) -> None:
        import socket

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        import socket

        # Shut down first: a close alone leaves the socket bound while the accepting thread
        # is still blocked in accept(), and the restart could not bind the port again.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._sockets.clear()


def test_postgresql_away_is_store_unavailable_and_the_store_recovers_when_it_returns(pg_schema):
    from urllib.parse import urlsplit

    from app.domain.errors import StoreUnavailable
    from app.store.postgres import PostgresStore
    from tests.conftest import TEST_DATABASE_URL

    target = urlsplit(TEST_DATABASE_URL)
    proxy = Proxy((target.hostname or "127.0.0.1", target.port or 5432))
    proxy.start()
    url = TEST_DATABASE_URL.replace(target.netloc, f"{target.username}@127.0.0.1:{proxy.port}" if target.username
                                    else f"127.0.0.1:{proxy.port}")
    store = PostgresStore(url, schema=pg_schema, timeout_ms=1000, pool_size=2)
    try:
        _, digest = stored_key(store)
        assert store.use_key(digest, T0, admit_all, "req_1")[1].allowed
        proxy.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):  # fail closed: refused, not admitted uncounted
            store.use_key(digest, T0, admit_all, "req_2")
        with pytest.raises(StoreUnavailable):
            store.use_key(digest, T0, admit_all, "req_3")
        assert time.monotonic() - started < 10
        proxy.start()
        assert wait_for(lambda: _admitted(store, digest), seconds=15)  # back without a restart
        assert store.get_key(USER, store.list_keys(USER, 1, None)[0].id).total_requests == 2
    finally:
        store.close()
        proxy.stop()


def test_pooled_connections_the_server_ended_are_replaced_before_a_request_gets_one(pg_schema):
    # A restart or failover of PostgreSQL ends every idle connection of every pool; here the
    # server ends this store's own (found by the application_name schema_url gives them).
    import psycopg

    from app.store.postgres import PostgresStore
    from tests.conftest import TEST_DATABASE_URL, schema_url

    store = PostgresStore(schema_url(pg_schema), timeout_ms=1000, pool_size=4)
    try:
        _, digest = stored_key(store)
        lent = [store._pool.getconn() for _ in range(4)]  # four connections open and idle in the pool
        for conn in lent:
            store._pool.putconn(conn)
        with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (pg_schema,)
            ).fetchall()
            assert len(ended) == 4
            assert wait_for(lambda: not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (pg_schema,)).fetchall())
        # Each of the next requests is served (none lent a dead connection, none kept waiting
        # past the 1 s timeout behind them), and each is counted once.
        assert store.use_key(digest, T0, admit_all, "req_1")[1].allowed
        assert store.use_key(digest, T0, admit_all, "req_2")[1].allowed
        assert store.list_keys(USER, 1, None)[0].total_requests == 2
    finally:
        store.close()


def _admitted(store, digest: str) -> bool:
    from app.domain.errors import StoreUnavailable

    try:
        return store.use_key(digest, T0, admit_all, "req_back")[1].allowed
    except StoreUnavailable:
        return False


@pytest.mark.postgresql_only
def test_ensure_account_returns_the_account_another_instance_was_creating_meanwhile(store, settings):
    # Another instance's transaction has inserted the account and not yet committed: this
    # insert waits for it, finds the row taken, and must still return the account.
    import psycopg

    with psycopg.connect(settings.database_url) as other:
        other.execute("INSERT INTO accounts (user_id, tier, created_us) VALUES (%s, 'free', %s)", ("racer", T0))
        result: list[object] = []
        waiting = threading.Thread(target=lambda: result.append(_outcome(store.ensure_account, "racer", T0 + SECOND)))
        waiting.start()
        time.sleep(0.5)  # the insert is now waiting on the other transaction's row
        other.commit()
        waiting.join(10)
    assert result and not isinstance(result[0], BaseException), result
    assert (result[0].user_id, result[0].tier, result[0].created_us) == ("racer", "free", T0)


def _outcome(function, *args):
    try:
        return function(*args)
    except BaseException as error:  # noqa: BLE001 -- reported by the test
        return error


# -- one behaviour on both engines -------------------------------------------------------


def test_what_an_owner_did_is_durable_on_both_engines_and_counting_is_not(store, monkeypatch):
    """Which writes are synced to disk before they return is one rule, the same on either engine."""
    asked: list[bool] = []
    write = type(store)._write

    def recording(self, *, durable):
        asked.append(durable)
        return write(self, durable=durable)

    monkeypatch.setattr(type(store), "_write", recording)

    def durability(operation) -> list[bool]:
        asked.clear()
        operation()
        return list(asked)

    record = make_record()
    digest = uuid.uuid4().hex + uuid.uuid4().hex
    assert durability(lambda: store.ensure_account(USER, T0)) == [True]
    assert durability(lambda: store.set_tier(USER, "pro", T0)) == [True]
    assert durability(lambda: store.set_tier("nobody", "pro", T0, create=False)) == [True]
    assert durability(lambda: store.insert_key(record, digest, 50, make_event(record, "minted"))) == [True]
    assert durability(lambda: store.use_key(digest, T0, lambda key: windows(T0 // SECOND), "req_1")) == [False]
    assert durability(lambda: store.consume("ip:192.0.2.1", windows(60), T0)) == [False]
    assert durability(lambda: store.revoke_key(USER, record.id, T0 + 1, make_event(record, "revoked"))) == [True]
    assert durability(lambda: store.revoke_leaked([digest], T0 + 2, lambda key: make_event(key, "leaked"))) == [True]
    assert durability(lambda: store.prune(T0, 100)) == [False]
    assert set(durability(lambda: store.expire_windows(windows(T0 // SECOND + 60, T0 // SECOND + 86_400)))) == {False}


def test_a_durable_write_is_on_disk_before_it_returns_and_a_count_is_not(store, settings, monkeypatch):
    """What `durable` asks each engine for: on SQLite, its log synced (every connection commits at
    NORMAL); on PostgreSQL, a synchronous commit."""
    if settings.engine != "sqlite":
        seen = {}
        for durable in (True, False):
            with store._write(durable=durable) as conn:
                seen[durable] = str(conn.execute("SHOW synchronous_commit").fetchone()[0])
        assert seen == {True: "on", False: "off"}
        return
    synced = record_syncs(monkeypatch)
    log = Path(f"{settings.database_path}-wal")
    for durable in (False, True):
        synced.clear()
        with store._write(durable=durable) as conn:
            assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: COMMIT does not sync
            conn.execute("INSERT INTO accounts (user_id, tier, created_us) VALUES (?, 'free', 1)", (f"u{durable}",))
        # Synced before `_write` returned (nothing defers it here): the database's log, once.
        assert synced == ([(log.stat().st_dev, log.stat().st_ino)] if durable else [])


def record_syncs(monkeypatch) -> list[tuple[int, int]]:
    """Record the file (device, inode) of every fdatasync the store's log sync makes, then make it."""

    synced: list[tuple[int, int]] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    return synced


class FailingOnce:
    """A connection on which one statement (`failing`) fails, once, as a failing disk makes it fail."""

    def __init__(self, conn: sqlite3.Connection, failing: str) -> None:
        self.conn, self.closed, self.failing = conn, False, failing

    def execute(self, sql: str, *args):
        if sql == self.failing:
            self.failing = ""
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR
            raise error
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.closed = True
        self.conn.close()

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


@pytest.mark.parametrize("durable", [False, True])
def test_a_write_that_cannot_be_rolled_back_keeps_its_own_error_and_the_next_write_gets_a_new_connection(
    tmp_path, durable
):
    store = SQLiteStore(tmp_path / "keys.db")
    broken = store._local.conn = FailingOnce(store._connection(), "ROLLBACK")
    with pytest.raises(sqlite3.IntegrityError, match="the write fails"), store._write(durable=durable) as conn:
        conn.execute("INSERT INTO accounts (user_id, tier, created_us) VALUES ('lost', 'free', 1)")
        raise sqlite3.IntegrityError("the write fails")  # a bug, a 500: not hidden by the failed ROLLBACK
    assert broken.closed  # left inside its transaction, the connection is not used again
    record = insert(store)  # the next writes work, on a new connection, which counts at NORMAL again
    store.consume("ip:192.0.2.1", [Window("minute", T0 // 1_000_000, 10)], T0)
    assert store.get_key(USER, record.id) == record
    assert raw(tmp_path / "keys.db", "SELECT count(*) FROM accounts WHERE user_id = 'lost'") == [(0,)]
    with store._write(durable=False) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)


def test_a_connection_found_read_only_is_replaced_once_the_database_can_be_written_again(tmp_path):
    from app.domain.errors import StoreUnavailable

    store = SQLiteStore(tmp_path / "keys.db")
    read_only = store._local.conn = sqlite3.connect(f"file:{tmp_path / 'keys.db'}?mode=ro", uri=True,
                                                    isolation_level=None, check_same_thread=False)
    with pytest.raises(StoreUnavailable):
        insert(store)  # as a connection opened while the file could not be written answers: 503
    assert store._local.conn is None  # not used again: the next write opens another
    record = insert(store)
    assert store.get_key(USER, record.id) == record
    with pytest.raises(sqlite3.ProgrammingError):
        read_only.execute("SELECT 1")  # closed


@pytest.mark.parametrize(("immutable_file", "reason"), [
    ("keys.db-shm", "read_only"), ("keys.db", "read_only"), ("keys.db-wal", "read_only"),
])
def test_a_store_opened_on_files_it_cannot_write_is_not_ready_and_writes_again_once_it_can(
    tmp_path, immutable_file, reason
):
    """As a worker started while a file could not be written: refused writes, not ready (a
    reading check alone would pass), then writing and ready again, though SQLite maps `-shm`
    read-only for every connection of a process while any one opened it so is open (the
    checkpointer's and the readiness check's must not keep it)."""
    from app.domain.errors import StoreUnavailable
    from tests.test_faults import immutable, require_chattr

    require_chattr(tmp_path)
    path = tmp_path / "keys.db"
    SQLiteStore(path).close()
    # Another process keeps the log and its index there (as a server's other workers do).
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('SELECT 1 FROM accounts').fetchall(); print(flush=True); time.sleep(60)",
                               str(path)], stdout=subprocess.PIPE, text=True)
    store = None
    try:
        holder.stdout.readline()
        with immutable(tmp_path / immutable_file):
            store = SQLiteStore(path)
            store.checkpoint_in_background(interval=0.01)
            store.check_ready(1.0)  # reads work
            with pytest.raises(StoreUnavailable):
                insert(store)
            for _ in range(2):  # not ready while it cannot write, however often asked
                with pytest.raises(StoreUnavailable) as not_ready:
                    store.check_ready(1.0)
                assert not_ready.value.details == {"reason": reason}
            time.sleep(0.1)  # the checkpointer meets it too

        def soon(call: Callable[[], object]) -> object:
            # The checkpointer tries again every 10 ms, on a connection open for a moment: one
            # opened in that moment maps the index as it found it, and the next try does not.
            deadline = time.monotonic() + 5
            while True:
                try:
                    return call()
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store never wrote again"
                    time.sleep(0.05)

        soon(lambda: store.check_ready(1.0))  # ready again, as soon as the files can be written
        record = soon(lambda: insert(store))
        assert store.get_key(USER, record.id) == record
    finally:
        holder.kill()
        holder.wait()
        if store is not None:
            store.close()


def test_a_store_whose_log_becomes_unwritable_while_it_runs_is_not_ready_until_it_writes_again(tmp_path):
    from app.domain.errors import StoreUnavailable
    from tests.test_faults import immutable, require_chattr

    require_chattr(tmp_path)
    store = SQLiteStore(tmp_path / "keys.db")
    store.checkpoint_in_background(interval=0.01)
    try:
        insert(store, "before")
        with immutable(tmp_path / "keys.db-wal"):
            with pytest.raises(StoreUnavailable):
                insert(store, "during")  # a disk I/O error: the log cannot be written
            with pytest.raises(StoreUnavailable) as not_ready:
                store.check_ready(1.0)  # its reads work: before, it answered ready
            assert not_ready.value.details["reason"] in {"io_error", "read_only"}
        store.check_ready(1.0)
        after = insert(store, "after")
        assert store.get_key(USER, after.id) == after
        assert sorted(r.name for r in store.list_keys(USER, 10, None)) == ["after", "before"]  # "during" was not kept
    finally:
        store.close()


def test_the_readiness_check_of_a_store_that_found_it_could_not_write_never_waits_for_the_write_lock(tmp_path):
    from app.domain.errors import StoreUnavailable

    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailable), store._write(durable=False):  # a write the disk refuses
        error = sqlite3.OperationalError("disk I/O error")
        error.sqlite_errorcode = sqlite3.SQLITE_IOERR
        raise error
    writer_conn = sqlite3.connect(path, isolation_level=None)
    writer_conn.execute("BEGIN IMMEDIATE")  # another worker writing
    try:
        started = time.monotonic()
        store.check_ready(1.0)  # it can write: ready at once, not after the busy timeout
        assert time.monotonic() - started < 0.5
    finally:
        writer_conn.execute("ROLLBACK")
        writer_conn.close()
    store.check_ready(1.0)  # then its own write goes through, and the store is writable again
    assert store._unwritable is None
    store.close()


def test_after_a_failed_sync_the_log_is_copied_into_the_database_before_any_write_is_confirmed(
    tmp_path, monkeypatch, caplog
):
    """A sync that succeeds after one that failed says nothing of the pages the failure lost:
    the store copies the whole log into the database (synced) and empties it first."""
    from app.domain.errors import StoreUnavailable

    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    wal = tmp_path / "keys.db-wal"
    real_sync, real_checkpoint = os.fdatasync, store._checkpoint_all
    failing_syncs: list[OSError] = []
    failing_checkpoints: list[Exception] = []
    checkpoints: list[int] = []  # the log's size at each copy

    def fdatasync(fd: int) -> None:
        if failing_syncs:
            raise failing_syncs.pop()
        real_sync(fd)

    def checkpoint_all() -> None:
        checkpoints.append(wal.stat().st_size)
        if failing_checkpoints:
            raise failing_checkpoints.pop()
        real_checkpoint()

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    monkeypatch.setattr(store, "_checkpoint_all", checkpoint_all)
    first = insert(store, "first")
    assert checkpoints == []  # a sync that works copies nothing
    failing_syncs.append(OSError(5, "Input/output error"))
    with pytest.raises(StoreUnavailable) as refused:
        insert(store, "second")
    assert refused.value.details == {"reason": "unconfirmed"}  # maybe saved: not confirmed by the recovery
    # Recovered at once: every commit, the unconfirmed one included, is in the database file.
    assert len(checkpoints) == 1 and checkpoints[0] > 0 and wal.stat().st_size == 0
    stored_names = {row[0] for row in raw(path, "SELECT name FROM api_keys")}
    assert stored_names == {"first", "second"}

    # A recovery that cannot be done yet (readers of an older snapshot, a failing disk)
    # confirms nothing: each later write tries it again first.
    failing_checkpoints.append(StoreUnavailable("readers held it"))
    failing_syncs.append(OSError(5, "Input/output error"))
    with pytest.raises(StoreUnavailable):
        insert(store, "third")  # the sync fails; the recovery tried at once fails too
    with pytest.raises(StoreUnavailable):
        failing_checkpoints.append(StoreUnavailable("readers held it"))
        insert(store, "fourth")  # the sync itself would work now: not trusted before a recovery
    fifth = insert(store, "fifth")  # the recovery works: confirmed
    assert len(checkpoints) == 4 and wal.stat().st_size == 0
    insert(store, "sixth")  # then syncs as before, without copying
    assert len(checkpoints) == 4 and wal.stat().st_size > 0
    assert store.get_key(USER, first.id) == first and store.get_key(USER, fifth.id) == fifth
    messages = [r.getMessage() for r in caplog.records if "SQLite log" in r.getMessage()]
    assert sum("failed: Input/output error" in m and m.startswith("syncing") for m in messages) == 2
    assert sum(m.startswith("recovered the SQLite log") for m in messages) == 2
    assert sum(m.startswith("recovering the SQLite log") for m in messages) == 2
    store.close()


def test_a_durable_write_lets_others_write_while_the_disk_syncs_it(tmp_path, monkeypatch):

    store = SQLiteStore(tmp_path / "keys.db")
    syncing, release = threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        syncing.set()
        assert release.wait(10)

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    minted: list[object] = []
    minting = threading.Thread(target=lambda: minted.append(insert(store)))
    minting.start()
    assert syncing.wait(10)
    # The key is committed and its write lock let go: another write goes through meanwhile.
    done = threading.Event()
    threading.Thread(target=lambda: (store.consume("ip:192.0.2.1", windows(60), T0), done.set())).start()
    assert done.wait(10)
    assert minted == []  # ... while the mint itself is not answered until the disk is done
    release.set()
    minting.join(10)
    assert len(minted) == 1
    store.close()


@pytest.fixture
def log_sync(tmp_path):
    """A `LogSync` on a log with commits in it (the syncs are faked by each test)."""
    from app.store.writer import LogSync

    log = tmp_path / "keys.db-wal"
    log.write_bytes(b"frames")
    sync = LogSync(log)
    yield sync
    sync.close()


def test_syncs_asked_for_while_one_is_under_way_share_the_next_one(log_sync, monkeypatch):
    sync = log_sync
    returned: list[str] = []
    began_after: list[int] = []  # for each sync, how many writers had been answered when it began
    first_syncing, release = threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        began_after.append(len(returned))
        if len(began_after) == 1:
            first_syncing.set()
            assert release.wait(10)

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    first = threading.Thread(target=lambda: (sync.sync(), returned.append("first")))
    first.start()
    assert first_syncing.wait(10)
    # Four writers commit while that sync is under way; none of them is covered by it.
    others = [threading.Thread(target=lambda: (sync.sync(), returned.append("later"))) for _ in range(4)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while sync._asked < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sync._asked == 5 and returned == []
    release.set()
    for thread in (first, *others):
        thread.join(10)
    # One more sync answered all four, and it began only after the first writer was answered.
    assert began_after == [0, 1]
    assert returned == ["first", "later", "later", "later", "later"]


def test_a_database_reached_through_a_symlink_has_its_real_log_synced(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").mkdir()
    SQLiteStore(tmp_path / "real" / "keys.db").close()
    (tmp_path / "link" / "keys.db").symlink_to(tmp_path / "real" / "keys.db")
    store = SQLiteStore(tmp_path / "link" / "keys.db")
    synced = record_syncs(monkeypatch)
    insert(store)
    log = (tmp_path / "real" / "keys.db-wal").stat()  # SQLite keeps the log beside the real file
    assert synced and set(synced) == {(log.st_dev, log.st_ino)}
    store.close()


def test_a_durable_write_that_changed_nothing_is_not_synced(tmp_path, monkeypatch):
    store = SQLiteStore(tmp_path / "keys.db")
    record = insert(store)
    synced = record_syncs(monkeypatch)
    assert store.revoke_key(USER, str(uuid.uuid4()), T0 + 1, make_event(record, "revoked")) is None
    assert store.set_tier("nobody", "pro", T0, create=False) is None
    assert synced == []  # nothing was written: no sync to wait for, and none that could fail
    assert store.revoke_key(USER, record.id, T0 + 1, make_event(record, "revoked")) is not None
    assert len(synced) == 1
    store.close()


def test_many_threads_writing_durably_share_syncs(log_sync, monkeypatch):
    sync = log_sync
    syncs = []

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        time.sleep(0.001)  # a disk's sync: the other threads ask meanwhile

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    threads = [threading.Thread(target=lambda: [sync.sync() for _ in range(100)]) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sync._asked == 1600 and sync._done == 1600
    # A writer covered by a finished sync returns at once, and a waiting crowd is synced
    # together: far fewer syncs than writes (one each would be 1,600).
    assert len(syncs) < 800, len(syncs)


def test_a_failed_sync_fails_every_write_it_was_to_confirm(log_sync, monkeypatch):
    from app.domain.errors import StoreUnavailable

    sync = log_sync
    calls = 0

    def fdatasync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # under way while two more writers commit and ask
            deadline = time.monotonic() + 10
            while sync._asked < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
        elif calls == 2:  # one of them syncs for both, and the disk fails
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    outcomes: list[str] = []

    def write() -> None:
        try:
            sync.sync()
            outcomes.append("synced")
        except StoreUnavailable as error:
            outcomes.append(error.details["reason"])

    first = threading.Thread(target=write)
    first.start()
    while calls < 1:
        time.sleep(0.001)
    later = [threading.Thread(target=write) for _ in range(2)]
    for thread in later:
        thread.start()
    for thread in (first, *later):
        thread.join(10)
    # Neither of the two is answered by a sync retried on its behalf after the failure.
    assert outcomes == ["synced", "unconfirmed", "unconfirmed"] and calls == 2
    sync.sync()  # a write after the failure syncs afresh
    assert calls == 3


def count_window_writes(store, settings) -> Callable[[], int]:
    """Count every row update of rate_windows from now on, with a trigger; return the counter."""
    with store.transaction() as conn:
        conn.execute("CREATE TABLE window_writes (n integer)")
        if settings.engine == "sqlite":
            conn.execute(
                "CREATE TRIGGER window_written AFTER UPDATE ON rate_windows "
                "BEGIN INSERT INTO window_writes VALUES (1); END"
            )
        else:
            conn.execute(
                "CREATE FUNCTION window_written() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO window_writes VALUES (1); RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER window_written AFTER UPDATE ON rate_windows "
                "FOR EACH ROW EXECUTE FUNCTION window_written()"
            )

    def writes() -> int:
        with store._conn() as conn:
            return conn.execute("SELECT count(*) FROM window_writes").fetchone()[0]

    return writes


def test_a_refusal_after_the_first_in_a_window_writes_nothing_on_either_engine(store, settings):
    """The first refusal marks the window blocked; the ones after it find it so and leave it alone."""
    writes = count_window_writes(store, settings)
    for _ in range(3):
        store.consume("ip:192.0.2.1", windows(60), T0)
    first = writes()
    refused = store.consume("ip:192.0.2.1", windows(60), T0)
    assert not refused.allowed and refused.first_block
    assert writes() == first + 1  # the window marked blocked
    for _ in range(5):
        again = store.consume("ip:192.0.2.1", windows(60), T0)
        assert not again.allowed and not again.first_block
    assert writes() == first + 1


def test_a_refused_key_after_the_first_refusal_writes_nothing_on_either_engine(store, settings):
    record = insert(store)
    digest = stored_digest(store, record.id)
    writes = count_window_writes(store, settings)
    admit = lambda key: windows(60, per_minute=1)  # noqa: E731
    assert store.use_key(digest, T0, admit, "req_1")[1].allowed
    before = writes()
    assert store.use_key(digest, T0, admit, "req_2")[1].first_block
    assert [store.use_key(digest, T0, admit, f"req_{i}")[1].allowed for i in range(3, 6)] == [False] * 3
    assert writes() == before + 1
    assert [e.type for e in store.list_events(USER, 10, None)].count("rate_limited") == 1


def test_a_failed_sync_fails_only_the_writes_it_was_to_confirm(log_sync, monkeypatch):
    from app.domain.errors import StoreUnavailable

    sync = log_sync
    failing = [False]

    def fdatasync(fd: int) -> None:
        if failing[0]:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    first = sync.ticket()
    sync.wait(first)
    second = sync.ticket()
    failing[0] = True
    with pytest.raises(StoreUnavailable):
        sync.wait(second)
    # The first was confirmed by a sync of its own before the failure: it stays confirmed.
    assert sync.settled(first) is True
    with pytest.raises(StoreUnavailable):
        sync.settled(second)
    failing[0] = False
    third = sync.ticket()
    assert sync.settled(third) is False
    sync.wait(third)
    assert sync.settled(third) is True


def test_a_durable_write_made_after_its_request_was_answered_syncs_before_it_returns(tmp_path, monkeypatch):
    store = SQLiteStore(tmp_path / "keys.db")
    synced = record_syncs(monkeypatch)
    with writer.syncs_deferred() as pending:
        insert(store)
        assert pending and synced == []  # numbered, for the answer to wait for
    numbered = len(pending)
    # A write after the block (a thread or task started in it) has no answer holding for it.
    insert(store, name="second")
    assert len(pending) == numbered and synced
    store.close()
