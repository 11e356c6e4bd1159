"""The store's schema, declared once for both engines: its tables and columns, its shared indexes.

Each engine's migration chain (`app.store.migrations` for SQLite, `app.store.postgres_migrations`
for PostgreSQL) builds these tables step by step, from the first version to this one; every
step is kept as it ran, so a database of any earlier version upgrades in place. A test holds
both engines' tables to the columns below (tests/test_store.py), and `app.store.transfer`
moves exactly these columns between engines.
"""

from __future__ import annotations

from app.domain.records import REVOKED_AS_LEAKED, REVOKED_BY_OWNER

# Each table's columns, in order. Both engines hold these and no others, apart from PostgreSQL's
# `seq` (insertion order; SQLite's is its rowid).
TABLES: dict[str, tuple[str, ...]] = {
    "accounts": ("user_id", "tier", "created_us"),
    "api_keys": (
        "id",
        "user_id",
        "name",
        "digest",
        "preview",
        "created_us",
        "expires_us",
        "revoked_us",
        "total_requests",
        "last_used_us",
        "replaced_by",
        "revoked_reason",
        "scopes",  # JSON array of the scopes it was granted; NULL: its tier's full set
        "allowed_ips",  # JSON array of addresses and CIDR blocks; NULL: any address
    ),
    "key_events": (
        "id",
        "user_id",
        "key_id",
        "type",
        "key_name",
        "key_preview",
        "request_id",
        "occurred_us",
        "details",
    ),
    "rate_windows": ("subject", "window", "start", "count", "blocked"),
}

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
# Why each key revoked before the reason was kept was revoked, from its events: a `leaked`
# event says a leak report did it, anything else was its owner. The same statement on either
# engine, and after importing an export written before the reason was kept.
# bandit B608: SQL from this module's constants; no input reaches it.
REVOKED_REASON_BACKFILL = (
    f"UPDATE api_keys SET revoked_reason = CASE WHEN EXISTS (SELECT 1 FROM key_events e "  # nosec B608
    f"WHERE e.key_id = api_keys.id AND e.type = 'leaked') THEN '{REVOKED_AS_LEAKED}' ELSE '{REVOKED_BY_OWNER}' END "
    "WHERE revoked_us IS NOT NULL AND revoked_reason IS NULL"
)
