"""The SQLite schema, versioned in `PRAGMA user_version`, and the steps between versions."""

from __future__ import annotations

import sqlite3

import sqlite_utils

from app.domain.ratelimit import tier_subject
from app.domain.records import REVOKED_AS_LEAKED, REVOKED_BY_OWNER
from app.store.errors import SchemaTooNew

SCHEMA_VERSION = 5
# When an unrevoked key stops being active: its expiry, or never (the largest 64-bit integer).
# Written once for both engines, in the indexes below and in the queries that must use them:
# a planner uses an index on an expression only for the same expression.
NEVER_US = 9223372036854775807
ACTIVE_UNTIL = f"coalesce(expires_us, {NEVER_US})"
# An account's active keys, whatever its history: a range of one index, the revoked keys left
# out of it and the expired ones before the range. Its name rides along for the uniqueness check.
# bandit B608: SQL from this module's constants; no input reaches it.
ACTIVE_KEYS_INDEX = (
    f"CREATE INDEX IF NOT EXISTS api_keys_active ON api_keys (user_id, ({ACTIVE_UNTIL}), name) "  # nosec B608
    "WHERE revoked_us IS NULL"
)
# What the retention sweep looks for: keys revoked, or expired, before a time; events before one.
RETENTION_INDEXES = (
    "CREATE INDEX IF NOT EXISTS api_keys_revoked ON api_keys (revoked_us) WHERE revoked_us IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS api_keys_expires ON api_keys (expires_us) WHERE expires_us IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS key_events_occurred ON key_events (occurred_us)",
)
# Why each key revoked before version 4 was revoked, from its events: a `leaked` event says a
# leak report did it, anything else was its owner. The same statement on either engine, and
# after importing an export written before the reason was kept.
# bandit B608: SQL from this module's constants; no input reaches it.
REVOKED_REASON_BACKFILL = (
    f"UPDATE api_keys SET revoked_reason = CASE WHEN EXISTS (SELECT 1 FROM key_events e "  # nosec B608
    f"WHERE e.key_id = api_keys.id AND e.type = 'leaked') THEN '{REVOKED_AS_LEAKED}' ELSE '{REVOKED_BY_OWNER}' END "
    "WHERE revoked_us IS NOT NULL AND revoked_reason IS NULL"
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to SCHEMA_VERSION; call inside a write transaction.

    A database of a newer version (the code was rolled back) raises SchemaTooNew and is left
    as it is: stamping it older would let this code misread what the newer one wrote.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version, SCHEMA_VERSION)
    if version < 1:
        _create_v1(sqlite_utils.Database(conn))
    if version < 2:
        _account_windows_v2(conn)
    if version < 3:
        _replaced_by_v3(conn)
    if version < 4:
        _revoked_reason_v4(conn)
    if version < 5:
        _history_indexes_v5(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _create_v1(db: sqlite_utils.Database) -> None:
    db.table("accounts").create({"user_id": str, "tier": str, "created_us": int}, pk="user_id", not_null={"tier", "created_us"})
    db.table("api_keys").create(
        {
            "id": str, "user_id": str, "name": str, "digest": str, "preview": str,
            "created_us": int, "expires_us": int, "revoked_us": int,
            "total_requests": int, "last_used_us": int,
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
            "id": str, "user_id": str, "key_id": str, "type": str, "key_name": str,
            "key_preview": str, "request_id": str, "occurred_us": int, "details": str,
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
    conn.execute("CREATE INDEX IF NOT EXISTS api_keys_unrevoked ON api_keys (user_id, created_us) WHERE revoked_us IS NULL")
    for statement in RETENTION_INDEXES:
        conn.execute(statement)
