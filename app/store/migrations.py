"""SQLite: a new database created from the declared schema, an older one upgraded step by step.

The schema is the one declared in `app.store.schema`. A new database (no tables, version 0)
is created from it (`sqlite_ddl()`) and stamped with SCHEMA_VERSION in `PRAGMA user_version`.
A database of an earlier version is upgraded by the steps below, each kept as it ran when its
version was current; tests/test_migrations.py requires every earlier version, so upgraded, to
equal the declaration. Adding a column: declare it, add a step here (and one to
`app.store.postgres_migrations`), and raise SCHEMA_VERSION to it.
"""

from __future__ import annotations

import sqlite3

import sqlite_utils

from app.domain.ratelimit import tier_subject
from app.store.errors import Migrated, SchemaTooNew
from app.store.schema import ACTIVE_KEYS_INDEX, RETENTION_INDEXES, REVOKED_REASON_BACKFILL, sqlite_ddl

SCHEMA_VERSION = 6


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> Migrated:
    """Bring the schema up to SCHEMA_VERSION (or the older `target`); call inside a write transaction.

    A new database is created at SCHEMA_VERSION from the declared schema; one of an earlier
    version runs each step after its own. Each step is kept as it ran when its version was
    current, so a database of any earlier version upgrades in place, and the tests build each
    earlier version (a `target` below SCHEMA_VERSION) with the same steps.

    A database of a newer version (the code was rolled back) raises SchemaTooNew and is left
    as it is: stamping it older would let this code misread what the newer one wrote.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version, SCHEMA_VERSION)
    if version == 0 and target >= SCHEMA_VERSION and _empty(conn):
        for statement in sqlite_ddl():
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return Migrated(0, SCHEMA_VERSION)
    steps = {
        1: lambda: _create_v1(sqlite_utils.Database(conn)),
        2: lambda: _account_windows_v2(conn),
        3: lambda: _replaced_by_v3(conn),
        4: lambda: _revoked_reason_v4(conn),
        5: lambda: _history_indexes_v5(conn),
        6: lambda: _restrictions_v6(conn),
    }
    for step in range(version + 1, min(target, SCHEMA_VERSION) + 1):
        steps[step]()
    now = max(version, min(target, SCHEMA_VERSION))
    conn.execute(f"PRAGMA user_version = {now}")
    return Migrated(version, now)


def _empty(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is None


def _create_v1(db: sqlite_utils.Database) -> None:
    db.table("accounts").create(
        {"user_id": str, "tier": str, "created_us": int}, pk="user_id", not_null={"tier", "created_us"}
    )
    db.table("api_keys").create(
        {
            "id": str,
            "user_id": str,
            "name": str,
            "digest": str,
            "preview": str,
            "created_us": int,
            "expires_us": int,
            "revoked_us": int,
            "total_requests": int,
            "last_used_us": int,
        },
        pk="id",
        not_null={"user_id", "name", "digest", "preview", "created_us", "total_requests"},
        defaults={"total_requests": 0},
        foreign_keys=[("user_id", "accounts", "user_id")],
    )
    db.table("api_keys").create_index(["digest"], unique=True)
    db.table("api_keys").create_index(["user_id", "created_us"])
    db.table("key_events").create(
        {
            "id": str,
            "user_id": str,
            "key_id": str,
            "type": str,
            "key_name": str,
            "key_preview": str,
            "request_id": str,
            "occurred_us": int,
            "details": str,
        },
        pk="id",
        not_null={"user_id", "key_id", "type", "key_name", "key_preview", "request_id", "occurred_us", "details"},
    )
    db.table("key_events").create_index(["user_id", "occurred_us"])
    db.table("rate_windows").create(
        {"subject": str, "window": str, "start": int, "count": int, "blocked": int},
        pk=("subject", "window"),
        not_null={"start", "count", "blocked"},
    )


def _account_windows_v2(conn: sqlite3.Connection) -> None:
    """Move each key's rate windows to its account, so an upgrade resets no one's limits.

    Version 1 counted every key on its own (`key:{id}`). Each account now gets the current
    window of each kind with the counts of all its keys in it, and the per-key rows go.
    """
    merged: dict[tuple[str, str], tuple[int, int, int]] = {}
    for user_id, kind, start, count, blocked in conn.execute(
        "SELECT k.user_id, w.window, w.start, w.count, w.blocked FROM rate_windows w "
        "JOIN api_keys k ON k.id = substr(w.subject, 5) WHERE w.subject >= 'key:' AND w.subject < 'key;'"
    ):
        latest = merged.get((user_id, kind))
        if latest is None or start > latest[0]:
            merged[(user_id, kind)] = (start, count, blocked)
        elif start == latest[0]:
            merged[(user_id, kind)] = (start, latest[1] + count, max(latest[2], blocked))
    conn.executemany(
        "INSERT OR REPLACE INTO rate_windows (subject, window, start, count, blocked) VALUES (?, ?, ?, ?, ?)",
        [(tier_subject(user_id), kind, *window) for (user_id, kind), window in merged.items()],
    )
    conn.execute("DELETE FROM rate_windows WHERE subject >= 'key:' AND subject < 'key;'")


def _replaced_by_v3(conn: sqlite3.Connection) -> None:
    """Add the key that replaced a rolled one (its expiry is when it stops), unless it is there."""
    if "replaced_by" not in {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}:
        conn.execute("ALTER TABLE api_keys ADD COLUMN replaced_by TEXT")


def _revoked_reason_v4(conn: sqlite3.Connection) -> None:
    """Keep why a key was revoked (its owner, or a leak report), filled in for keys revoked already."""
    if "revoked_reason" not in {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}:
        conn.execute("ALTER TABLE api_keys ADD COLUMN revoked_reason TEXT")
    conn.execute(REVOKED_REASON_BACKFILL)


def _history_indexes_v5(conn: sqlite3.Connection) -> None:
    """Index what costs must not grow with an account's history: its active keys (the key cap,
    unique names), its unrevoked keys newest first (the listing), and what the retention sweep
    deletes. Indexes only: no row changes."""
    conn.execute(ACTIVE_KEYS_INDEX)
    # Newest first, ties in insertion order: SQLite appends the rowid to every index.
    conn.execute(
        "CREATE INDEX IF NOT EXISTS api_keys_unrevoked ON api_keys (user_id, created_us) WHERE revoked_us IS NULL"
    )
    for statement in RETENTION_INDEXES:
        conn.execute(statement)


def _restrictions_v6(conn: sqlite3.Connection) -> None:
    """Add what a key may do: its granted scopes and its address allowlist (NULL: unrestricted, as every key was)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
    for column in ("scopes", "allowed_ips"):
        if column not in present:
            conn.execute(f"ALTER TABLE api_keys ADD COLUMN {column} TEXT")
