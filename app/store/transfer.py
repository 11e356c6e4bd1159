"""Moving a store's rows between engines: `python -m app export FILE` / `import FILE`.

Both engines hold the same tables with the same columns. An export is JSON lines: a header,
then one line per row, keys and events in insertion order (so listings keep breaking ties in
time the same way after an import). Key secrets are never stored, so none are exported:
only their digests, which is why the file is written readable by its owner only. An import
goes into a freshly migrated, empty store, in one transaction: all rows or none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, cast

from app.config import Settings
from app.domain.errors import StoreUnavailable
from app.store import open_store, unreachable
from app.store.errors import StoreStartError
from app.store.schema import REVOKED_REASON_BACKFILL, TABLES
from app.store.sql import SQLStore

FORMAT = "socdefenders-keys export"
VERSION = 3
# Columns each version added, filled on an older export's rows: with their default, then (the
# reason a key was revoked) from its events once every row is in, as the schema migration does.
ADDED_IN: dict[int, dict[str, dict[str, Any]]] = {
    2: {"api_keys": {"replaced_by": None}},
    3: {"api_keys": {"revoked_reason": None}},
}
class TransferError(Exception):
    """The export file or the target store is not what an import needs."""


@contextmanager
def _connection(settings: Settings, create: bool | None = None) -> Iterator[tuple[SQLStore, Any]]:
    """The store `settings` name, migrated first, and one durable transaction on it.

    A store that cannot be opened (a missing file where none may be created, a schema newer
    than this code, a database out of reach) is a TransferError, in one line.
    """
    if problem := unreachable(settings):  # once, in one line, before a pool would retry and log each attempt
        raise TransferError(problem)
    try:
        # Creates (if allowed) or upgrades the schema. Every engine's store is an SQLStore.
        store = cast(SQLStore, open_store(settings, create=create))
    except (StoreStartError, StoreUnavailable) as error:
        raise TransferError(str(error)) from None
    try:
        with store.transaction() as conn:
            yield store, conn
    finally:
        store.close()


def _columns(columns: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def export_rows(settings: Settings, path: str) -> dict[str, int]:
    """Write every row of the store to the new file `path` (created 0600); return the rows per table."""
    counts = dict.fromkeys(TABLES, 0)
    # The source must exist: a mistyped path is an error, not an empty database exported.
    with _connection(settings, create=False) as (store, conn), _create_private(path) as out:
        out.write(json.dumps({"format": FORMAT, "version": VERSION, "engine": settings.engine}) + "\n")
        for table, columns in TABLES.items():
            # Keys and events in insertion order (SQLite's rowid, PostgreSQL's seq).
            order = f" ORDER BY {store.DIALECT['seq']}" if table in ("api_keys", "key_events") else ""
            # bandit B608: table and column names are this module's constants.
            sql = f"SELECT {_columns(columns)} FROM {table}{order}"  # nosec B608
            for row in conn.execute(sql).fetchall():
                values = dict(zip(columns, row, strict=True))
                if table == "rate_windows":
                    values["blocked"] = bool(values["blocked"])
                out.write(json.dumps({"table": table, "row": values}) + "\n")
                counts[table] += 1
    return counts


def _create_private(path: str) -> IO[str]:
    """Open `path` for writing as a new file readable by its owner only; TransferError if it exists.

    An existing file would keep its own permissions (0644: every digest and account id readable
    by anyone), and a symbolic link would lead the rows elsewhere: neither is written through.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.fdopen(os.open(path, flags, 0o600), "w")
    except FileExistsError:
        raise TransferError(f"{path} exists already (an export never overwrites): name a new file") from None
    except OSError as error:
        raise TransferError(f"cannot create {path}: {error.strerror}") from None


def import_rows(settings: Settings, path: str) -> dict[str, int]:
    """Load an export into the store, which must hold no rows yet; return the rows per table."""
    counts = dict.fromkeys(TABLES, 0)
    try:
        with open(path) as source:
            header = json.loads(source.readline() or "null")
            if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") not in range(1, VERSION + 1):
                raise TransferError(f"{path} is not an export of this service (version {VERSION} or older)")
            version: int = header["version"]
            added: dict[str, dict[str, Any]] = {}
            for since, new_columns in ADDED_IN.items():
                if version < since:
                    for table, defaults in new_columns.items():
                        added[table] = {**added.get(table, {}), **defaults}
            with _connection(settings) as (store, conn):
                for table in TABLES:
                    # bandit B608: table names are this module's constants.
                    if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():  # nosec B608
                        raise TransferError(f"the target store already holds rows in {table}; import needs an empty one")
                for number, line in enumerate(source, start=2):
                    item = json.loads(line)
                    table, row = item.get("table"), item.get("row")
                    if isinstance(row, dict):
                        row = {**added.get(table, {}), **row}
                    if table not in TABLES or not isinstance(row, dict) or set(row) != set(TABLES[table]):
                        raise TransferError(f"{path} line {number}: not a row of this service's tables")
                    columns = TABLES[table]
                    values = [row[c] for c in columns]
                    if table == "rate_windows":
                        values[-1] = bool(values[-1])
                    conn.execute(
                        # bandit B608: table and column names are this module's constants; values are bound.
                        store.sql(f"INSERT INTO {table} ({_columns(columns)}) VALUES ({', '.join('?' * len(columns))})"),  # nosec B608
                        values,
                    )
                    counts[table] += 1
                if version < 3:
                    conn.execute(REVOKED_REASON_BACKFILL)
    except (OSError, ValueError) as error:
        raise TransferError(str(error)) from error
    return counts
