"""Every earlier schema, on either engine, upgrades in place to the current one with nothing lost.

Each earlier version is built by the migration chain's own steps, stopped at that version: the
steps are kept as they ran when their version was current (app/store/migrations.py,
app/store/postgres_migrations.py). Rows go into every table as that version held them; the
current code then opens the database, migrates it, and must find every row, and serve it; and
the upgraded schema must equal the declared one (app/store/schema.py, read back as in
tests/test_schema.py) in every respect, as a new database does.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from app.domain.records import Window
from app.store import migrations, postgres_migrations
from app.store.schema import TABLES
from app.store.sqlite import SQLiteStore
from tests.test_schema import declared, postgresql_schema, sqlite_schema

ENGINES = ("sqlite", "postgresql")

T0 = 1_795_000_000_000_000
MINUTE, DAY = 1_795_000_020, 1_794_960_000  # window starts, in seconds
DIGESTS = {name: name * 16 for name in ("aaaa", "bbbb", "cccc", "dddd")}
# The version that added each column, per engine.
ADDED = {
    "sqlite": {"replaced_by": 3, "revoked_reason": 4, "scopes": 6, "allowed_ips": 6},
    "postgresql": {"replaced_by": 2, "revoked_reason": 3, "scopes": 5, "allowed_ips": 5},
}
# What the restricted keys hold once the schema has their columns (k-live: narrowed scopes;
# k-rolled: an allowlist).
RESTRICTIONS = {"k-live": ('["iocs:read", "taxii:read"]', None), "k-rolled": (None, '["10.0.0.0/8", "2001:db8::1"]')}


def old_rows(engine: str, version: int) -> dict[str, list[dict[str, Any]]]:
    """Rows for every table, with the columns `version` of `engine`'s schema had."""
    has = {column: version >= since for column, since in ADDED[engine].items()}
    keys = [
        # id, user, name, digest, created, expires, revoked, requests, last used, replaced by, reason
        ("k-live", "alice", "live", "aaaa", T0, None, None, 7, T0 + 9, None, None),
        ("k-gone", "alice", "gone", "bbbb", T0 + 1, None, T0 + 5, 2, T0 + 4, None, "owner"),
        ("k-leaked", "alice", "leaked", "cccc", T0 + 2, None, T0 + 6, 0, None, None, "leaked"),
        ("k-rolled", "bob", "rolled", "dddd", T0 + 3, T0 + 3_600_000_000, None, 1, T0 + 8, "k-live", None),
    ]
    api_keys = []
    for key_id, user, name, digest, created, expires, revoked, requests, used, replaced_by, reason in keys:
        row = {
            "id": key_id,
            "user_id": user,
            "name": name,
            "digest": DIGESTS[digest],
            "preview": f"sk_live_{digest}",
            "created_us": created,
            "expires_us": expires,
            "revoked_us": revoked,
            "total_requests": requests,
            "last_used_us": used,
        }
        if has["replaced_by"]:
            row["replaced_by"] = replaced_by
        if has["revoked_reason"]:
            row["revoked_reason"] = reason
        if has["scopes"]:
            row["scopes"], row["allowed_ips"] = RESTRICTIONS.get(key_id, (None, None))
        api_keys.append(row)
    events = [
        (f"e-{kind}-{key[0]}", key[1], key[0], kind, key[2], f"sk_live_{key[3]}", f"req-{i}", key[4] + i, "{}")
        for i, (kind, key) in enumerate([("minted", k) for k in keys] + [("revoked", keys[1]), ("leaked", keys[2])])
    ]
    blocked = False if engine == "postgresql" else 0
    if engine == "sqlite" and version < 2:  # version 1 counted each key on its own
        windows = [
            ("key:k-live", "minute", MINUTE, 4, blocked),
            ("key:k-live", "day", DAY, 30, blocked),
            ("key:k-gone", "minute", MINUTE, 2, blocked),
            ("key:k-gone", "day", DAY, 10, blocked),
        ]
    else:
        windows = [("tier:alice", "minute", MINUTE, 6, blocked), ("tier:alice", "day", DAY, 40, blocked)]
    return {
        "accounts": [
            {"user_id": "alice", "tier": "pro", "created_us": T0},
            {"user_id": "bob", "tier": "free", "created_us": T0},
        ],
        "api_keys": api_keys,
        "key_events": [dict(zip(TABLES["key_events"], event, strict=True)) for event in events],
        "rate_windows": [dict(zip(TABLES["rate_windows"], window, strict=True)) for window in windows],
    }


def fill(conn: Any, marker: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    for table, table_rows in rows.items():
        for row in table_rows:
            columns = ", ".join(f'"{c}"' for c in row)
            conn.execute(
                f"INSERT INTO {table} ({columns}) VALUES ({', '.join([marker] * len(row))})", list(row.values())
            )


def every_row(conn: Any) -> dict[str, list[tuple]]:
    """Every row of every table, the current schema's columns, in a fixed order."""
    return {
        table: sorted(
            (
                tuple(bool(v) if c == "blocked" else v for c, v in zip(columns, row, strict=True))
                for row in conn.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in columns)} FROM {table}")
            ),
            key=repr,
        )
        for table, columns in TABLES.items()
    }


def expected(engine: str, version: int) -> dict[str, list[tuple]]:
    """What the current schema must hold after the upgrade: every old row, the new columns filled in."""
    rows = old_rows(engine, version)
    full = {"sqlite": migrations.SCHEMA_VERSION, "postgresql": postgres_migrations.SCHEMA_VERSION}[engine]
    after = old_rows(engine, full)
    # The reason a key was revoked is filled in from its events; a column added later starts empty.
    for old, new in zip(rows["api_keys"], after["api_keys"], strict=True):
        old.setdefault("replaced_by", None)
        old.setdefault("revoked_reason", new["revoked_reason"])
        old.setdefault("scopes", None)  # a key from before restrictions: its tier's full set
        old.setdefault("allowed_ips", None)  # and any address
    if engine == "sqlite" and version < 2:  # each account's current windows hold its keys' counts
        rows["rate_windows"] = after["rate_windows"]
    return {
        table: sorted(
            (tuple(bool(row[c]) if c == "blocked" else row[c] for c in columns) for row in rows[table]), key=repr
        )
        for table, columns in TABLES.items()
    }


def serves(store: Any, restricted: bool) -> None:
    """The upgraded store finds and counts a key, and lists the history, as if it had always been current."""
    assert store.get_key("alice", "k-gone") is None
    assert store.get_key("alice", "k-gone", include_revoked=True).revoked_reason == "owner"
    assert [k.id for k in store.list_keys("alice", 10, None)] == ["k-live"]
    used = store.use_key(
        DIGESTS["aaaa"],
        MINUTE * 1_000_000 + 1,
        lambda key: [Window("minute", MINUTE, 100), Window("day", DAY, 1_000)],
        "req-after",
    )
    assert used is not None
    key, counted = used
    assert (key.total_requests, counted.counts) == (8, {"minute": 7, "day": 41})
    assert len(store.list_events("alice", 10, None)) == 5
    # A key restricted before the upgrade stays so; one from before restrictions is unrestricted.
    assert key.scopes == (("iocs:read", "taxii:read") if restricted else None)
    rolled = store.get_key("bob", "k-rolled")
    assert rolled.allowed_ips == (("10.0.0.0/8", "2001:db8::1") if restricted else None)


@pytest.mark.parametrize("version", range(1, migrations.SCHEMA_VERSION + 1))
def test_every_sqlite_schema_version_upgrades_in_place_with_every_row(tmp_path, version):
    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    migrations.migrate(conn, target=version)
    fill(conn, "?", old_rows("sqlite", version))
    conn.execute("COMMIT")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    conn.close()

    store = SQLiteStore(path)
    try:
        assert store.schema_version() == migrations.SCHEMA_VERSION
        assert store.migrated == (version, migrations.SCHEMA_VERSION)  # what `migrate` reports
        conn = sqlite3.connect(path)
        try:
            assert every_row(conn) == expected("sqlite", version)
            assert sqlite_schema(conn) == declared("sqlite")
        finally:
            conn.close()
        serves(store, version >= ADDED["sqlite"]["scopes"])
    finally:
        store.close()


@pytest.mark.parametrize("version", range(1, postgres_migrations.SCHEMA_VERSION + 1))
def test_every_postgresql_schema_version_upgrades_in_place_with_every_row(pg_schema, version):
    import psycopg

    from app.store.postgres import PostgresStore
    from tests.conftest import schema_url

    url = schema_url(pg_schema)
    with psycopg.connect(url, autocommit=True) as conn:
        assert postgres_migrations.migrate(conn, target=version) == (0, version)
        fill(conn, "%s", old_rows("postgresql", version))

    store = PostgresStore(url, pool_size=2)
    try:
        assert store.schema_version() == postgres_migrations.SCHEMA_VERSION
        assert store.migrated == (version, postgres_migrations.SCHEMA_VERSION)
        with psycopg.connect(url) as conn:
            assert every_row(conn) == expected("postgresql", version)
            assert postgresql_schema(conn) == declared("postgresql")
        serves(store, version >= ADDED["postgresql"]["scopes"])
    finally:
        store.close()

