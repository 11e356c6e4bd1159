"""The schema declared in app/store/schema.py is what either engine holds, new or upgraded.

Each engine's schema is read back from the database itself (SQLite's pragmas and the index SQL
in `sqlite_master`; PostgreSQL's information_schema and `pg_indexes`) into one normalised
form, and compared with what the declaration says that engine holds: tables, columns in order
with their types, NOT NULL and defaults, primary keys, unique constraints, foreign keys, the
insertion-order column, and indexes with their keys (columns or expressions) and partial
predicates. A new database must equal it (tests here), and so must every earlier version once
the chain has upgraded it (tests/test_migrations.py).
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from typing import Any

from app.store import migrations, postgres_migrations, schema
from app.store.schema import POSTGRESQL_TYPES, SEQ, SQLITE_TYPES, TEXT, Column, Table

# -- reading a schema back, normalised ---------------------------------------------------------


def normalise(sql: str) -> str:
    """An expression or predicate as either engine may write it back: quotes, case, spacing,
    PostgreSQL's casts of integer literals and enclosing parentheses taken away."""
    sql = " ".join(re.sub(r"'(-?\d+)'::bigint", r"\1", sql.replace('"', "")).lower().split())
    while sql.startswith("(") and split_list(sql, 0)[1] == "":
        sql = sql[1:-1].strip()
    return sql


def split_list(sql: str, start: int) -> tuple[list[str], str]:
    """The comma-separated items in the parentheses opening at `sql[start]`, and what follows them."""
    depth, item, items = 0, start + 1, []
    for i in range(start, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if depth == 0:
                return [*items, sql[item:i]], sql[i + 1:].strip()
        elif sql[i] == "," and depth == 1:
            items.append(sql[item:i])
            item = i + 1
    raise AssertionError(f"unbalanced parentheses: {sql}")


def index_sql(sql: str) -> tuple[list[str], str | None]:
    """An index's keys and its partial predicate (or None), from its CREATE INDEX statement."""
    on = re.search(r"\sON\s+\S+(\s+USING\s+\w+)?\s*\(", sql, re.IGNORECASE)
    assert on, sql
    keys, rest = split_list(sql, on.end() - 1)
    where = re.fullmatch(r"WHERE\s+(.*)", rest, re.IGNORECASE | re.DOTALL)
    assert rest == "" or where, sql
    return [normalise(key) for key in keys], normalise(where.group(1)) if where else None


def sqlite_schema(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    found = {}
    for table, table_sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall():
        info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
        unique, indexes = set(), {}
        for _, name, is_unique, origin, partial in conn.execute(f'PRAGMA index_list("{table}")').fetchall():
            xinfo = [row for row in conn.execute(f'PRAGMA index_xinfo("{name}")') if row[5]]  # its keys
            if origin in ("pk", "u"):
                if origin == "u":
                    unique.add(tuple(row[2] for row in xinfo))
                continue
            (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)).fetchone()
            keys, where = index_sql(sql)
            assert len(keys) == len(xinfo) and bool(partial) == (where is not None), sql
            columns = [normalise(row[2]) if row[1] >= 0 else key for row, key in zip(xinfo, keys, strict=True)]
            assert columns == keys, sql
            indexes[name] = (bool(is_unique), tuple(keys), where)
        found[table] = {
            "columns": [(name, kind, bool(not_null), default) for _, name, kind, not_null, default, _ in info],
            "primary_key": tuple(row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]),
            "unique": unique,
            "foreign_keys": {
                (row[3], row[2], row[4]) for row in conn.execute(f'PRAGMA foreign_key_list("{table}")')
            },
            "insertion_order": None if "WITHOUT ROWID" in table_sql.upper() else "rowid",
            "indexes": indexes,
        }
    return found


def postgresql_schema(conn: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for table, column, kind, not_null, default, identity in conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable = 'NO', column_default, identity_generation "
        "FROM information_schema.columns WHERE table_schema = current_schema() AND table_name <> 'schema_version' "
        "ORDER BY table_name, ordinal_position"
    ):
        entry = found.setdefault(table, {
            "columns": [], "primary_key": (), "unique": set(), "foreign_keys": set(), "insertion_order": None,
            "indexes": {},
        })
        entry["columns"].append((column, kind, not_null, default))
        if identity == "BY DEFAULT":
            entry["insertion_order"] = column
    constraints: dict[tuple[str, str, str], list[str]] = {}
    for table, name, kind, column in conn.execute(
        "SELECT tc.table_name, tc.constraint_name, tc.constraint_type, kcu.column_name "
        "FROM information_schema.table_constraints tc JOIN information_schema.key_column_usage kcu "
        "ON kcu.constraint_schema = tc.constraint_schema AND kcu.constraint_name = tc.constraint_name "
        "WHERE tc.table_schema = current_schema() AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE') "
        "AND tc.table_name <> 'schema_version' ORDER BY kcu.ordinal_position"
    ):
        constraints.setdefault((table, name, kind), []).append(column)
    for (table, _, kind), columns in constraints.items():
        if kind == "PRIMARY KEY":
            found[table]["primary_key"] = tuple(columns)
        else:
            found[table]["unique"].add(tuple(columns))
    for table, column, target, target_column in conn.execute(
        "SELECT kcu.table_name, kcu.column_name, ccu.table_name, ccu.column_name "
        "FROM information_schema.referential_constraints rc JOIN information_schema.key_column_usage kcu "
        "ON kcu.constraint_schema = rc.constraint_schema AND kcu.constraint_name = rc.constraint_name "
        "JOIN information_schema.constraint_column_usage ccu "
        "ON ccu.constraint_schema = rc.unique_constraint_schema AND ccu.constraint_name = rc.unique_constraint_name "
        "WHERE rc.constraint_schema = current_schema()"
    ):
        found[table]["foreign_keys"].add((column, target, target_column))
    for table, name, sql in conn.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename <> 'schema_version'"
    ):
        if not any(constraint[1] == name for constraint in constraints):  # a key's or a UNIQUE column's own
            keys, where = index_sql(sql)
            found[table]["indexes"][name] = (sql.startswith("CREATE UNIQUE "), tuple(keys), where)
    return found


# -- what the declaration says each engine holds -----------------------------------------------


def declared(engine: str, tables: tuple[Table, ...] | None = None) -> dict[str, dict[str, Any]]:
    """The normalised form `engine` holds the declared schema in (see app/store/schema.py)."""
    sqlite = engine == "sqlite"
    types = SQLITE_TYPES if sqlite else POSTGRESQL_TYPES
    expected = {}
    for table in schema.SCHEMA if tables is None else tables:
        columns = [
            (c.name, types[c.kind], c.not_null or (not sqlite and c.name in table.primary_key),
             None if c.default is None else str(c.default))
            for c in table.columns
        ]
        indexes = {}
        if sqlite:  # a unique column is a unique index; SEQ is the rowid, which ends every index
            indexes = {f"idx_{table.name}_{c.name}": (True, (c.name,), None) for c in table.columns if c.unique}
        elif table.insertion_order:
            columns.insert(0, (SEQ, "bigint", True, None))
        for index in table.indexes:
            keys = index.keys[:-1] if sqlite and index.keys[-1] == SEQ else index.keys
            name = (index.sqlite_name or index.name) if sqlite else index.name
            where = normalise(index.where) if index.where else None
            indexes[name] = (index.unique, tuple(normalise(key) for key in keys), where)
        unique = set() if sqlite else {(c.name,) for c in table.columns if c.unique}
        expected[table.name] = {
            "columns": columns,
            "primary_key": table.primary_key,
            "unique": unique | ({(SEQ,)} if table.insertion_order and not sqlite else set()),
            "foreign_keys": {(c.name, *c.references) for c in table.columns if c.references},
            "insertion_order": "rowid" if sqlite else SEQ if table.insertion_order else None,
            "indexes": indexes,
        }
    return expected


def test_the_normalised_form_reads_either_engines_spelling_of_an_index():
    assert index_sql(
        "CREATE INDEX api_keys_active ON s.api_keys USING btree (user_id, COALESCE(expires_us, "
        "'9223372036854775807'::bigint), name) WHERE (revoked_us IS NULL)"
    ) == (["user_id", "coalesce(expires_us, 9223372036854775807)", "name"], "revoked_us is null")
    assert index_sql(
        'CREATE INDEX "api_keys_active" ON "api_keys" ("user_id", (coalesce(expires_us, 9223372036854775807)), '
        '"name") WHERE revoked_us IS NULL'
    ) == (["user_id", "coalesce(expires_us, 9223372036854775807)", "name"], "revoked_us is null")
    assert index_sql('CREATE UNIQUE INDEX "idx_api_keys_digest"\n    ON "api_keys" ("digest")') == (["digest"], None)


# -- a new database is the declared schema --------------------------------------------------------


def new_sqlite(path: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    migrations.migrate(conn)
    conn.execute("COMMIT")
    return conn


def test_a_new_sqlite_database_is_the_declared_schema_at_the_current_version(tmp_path):
    conn = new_sqlite(tmp_path / "keys.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
        assert sqlite_schema(conn) == declared("sqlite")
    finally:
        conn.close()


def test_a_new_postgresql_database_is_the_declared_schema_at_the_current_version(pg_schema):
    import psycopg

    from app.store.postgres import PostgresStore
    from tests.conftest import schema_url

    PostgresStore(schema_url(pg_schema), pool_size=2).close()
    with psycopg.connect(schema_url(pg_schema)) as conn:
        # Created at the current version in one step, not by replaying the chain.
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (postgres_migrations.SCHEMA_VERSION,)
        ]
        assert postgresql_schema(conn) == declared("postgresql")


def test_a_column_declared_without_a_step_to_add_it_fails_the_upgrade_check(tmp_path, monkeypatch):
    """A new database takes a newly declared column from the declaration; an old one upgraded by a
    chain with no step for it does not have it, and the comparison says so."""
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    migrations.migrate(conn, target=migrations.SCHEMA_VERSION - 1)
    migrations.migrate(conn)
    assert sqlite_schema(conn) == declared("sqlite")
    tables = tuple(
        dataclasses.replace(t, columns=(*t.columns, Column("note", TEXT))) if t.name == "api_keys" else t
        for t in schema.SCHEMA
    )
    monkeypatch.setattr(schema, "SCHEMA", tables)
    new = new_sqlite(tmp_path / "new.db")
    try:
        assert sqlite_schema(new) == declared("sqlite", tables)
        assert sqlite_schema(conn) != declared("sqlite", tables)
        conn.execute("CREATE INDEX api_keys_name ON api_keys (name)")  # and an index it does not declare
        assert sqlite_schema(conn)["api_keys"]["indexes"] != declared("sqlite")["api_keys"]["indexes"]
    finally:
        new.close()
        conn.close()
