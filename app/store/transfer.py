"""Moving a store's rows between engines: `python -m app export FILE` / `import FILE`.

Both engines hold the same tables with the same columns. An export is JSON lines: a header,
then one line per row, keys and events in insertion order (so listings keep breaking ties in
time the same way after an import). Key secrets are never stored, so none are exported:
only their digests, which is why the file is written readable by its owner only. An import
goes into a freshly migrated, empty store, in one transaction: all rows or none. Every row
is checked first (`check_row`: each column's type and the values the service can serve), so
a bad file is refused in one line naming its line and field before anything is written.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, cast

from app.config import Settings
from app.domain.errors import StoreUnavailable
from app.domain.grants import KNOWN_SCOPES
from app.domain.records import REVOKED_AS_LEAKED, REVOKED_BY_OWNER
from app.domain.tiers import TIERS
from app.store import open_store, unreachable
from app.store.errors import StoreStartError
from app.store.schema import REVOKED_REASON_BACKFILL, TABLES
from app.store.sql import SQLStore

FORMAT = "socdefenders-keys export"
VERSION = 4
# Columns each version added, filled on an older export's rows: with their default, then (the
# reason a key was revoked) from its events once every row is in, as the schema migration does.
ADDED_IN: dict[int, dict[str, dict[str, Any]]] = {
    2: {"api_keys": {"replaced_by": None}},
    3: {"api_keys": {"revoked_reason": None}},
    4: {"api_keys": {"scopes": None, "allowed_ips": None}},  # NULL: unrestricted, as every key was
}
BIGINT = range(-(2**63), 2**63)
DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in BIGINT


def _count(value: Any) -> bool:
    return _time(value) and value >= 0


def _optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or rule(value)


def _json_list(item: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A JSON array (as the store keeps a key's scopes or allowlist) of at least one item passing `item`."""

    def check(value: Any) -> bool:
        try:
            items = json.loads(value) if isinstance(value, str) else None
        except ValueError:
            return False
        return isinstance(items, list) and bool(items) and all(item(i) for i in items)

    return check


def _network(value: Any) -> bool:
    try:
        return isinstance(value, str) and ipaddress.ip_network(value, strict=True).prefixlen > 0
    except ValueError:
        return False


def _details(value: Any) -> bool:
    try:
        return isinstance(value, str) and isinstance(json.loads(value), dict)
    except ValueError:
        return False


# What each column must hold for the service to serve the row: (rule, what the rule says).
COLUMN_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "accounts": {
        "user_id": (_text, "a non-empty string"),
        "tier": (lambda v: v in TIERS, f"one of {', '.join(TIERS)}"),
        "created_us": (_time, "an integer (microseconds)"),
    },
    "api_keys": {
        "id": (_text, "a non-empty string"),
        "user_id": (_text, "a non-empty string"),
        "name": (_text, "a non-empty string"),
        "digest": (lambda v: isinstance(v, str) and bool(DIGEST.match(v)), "64 lowercase hex digits"),
        "preview": (_text, "a non-empty string"),
        "created_us": (_time, "an integer (microseconds)"),
        "expires_us": (_optional(_time), "an integer (microseconds) or null"),
        "revoked_us": (_optional(_time), "an integer (microseconds) or null"),
        "total_requests": (_count, "a non-negative integer"),
        "last_used_us": (_optional(_time), "an integer (microseconds) or null"),
        "replaced_by": (_optional(_text), "a key id or null"),
        "revoked_reason": (
            lambda v: v in (None, REVOKED_BY_OWNER, REVOKED_AS_LEAKED),
            f"{REVOKED_BY_OWNER}, {REVOKED_AS_LEAKED} or null",
        ),
        "scopes": (_optional(_json_list(lambda s: s in KNOWN_SCOPES)), "a JSON array of known scopes or null"),
        "allowed_ips": (_optional(_json_list(_network)), "a JSON array of addresses and CIDR blocks or null"),
    },
    "key_events": {
        "id": (_text, "a non-empty string"),
        "user_id": (_text, "a non-empty string"),
        "key_id": (_text, "a non-empty string"),
        "type": (_text, "a non-empty string"),
        "key_name": (_text, "a non-empty string"),
        "key_preview": (_text, "a non-empty string"),
        "request_id": (lambda v: isinstance(v, str), "a string"),
        "occurred_us": (_time, "an integer (microseconds)"),
        "details": (_details, "a JSON object, as text"),
    },
    "rate_windows": {
        "subject": (_text, "a non-empty string"),
        "window": (lambda v: v in ("minute", "day"), "minute or day"),
        "start": (_time, "an integer (seconds)"),
        "count": (_count, "a non-negative integer"),
        "blocked": (lambda v: isinstance(v, bool) or v in (0, 1), "true or false"),
    },
}
# What each table's rows must not repeat, and (api_keys) must refer to.
UNIQUE: dict[str, tuple[tuple[str, ...], ...]] = {
    "accounts": (("user_id",),),
    "api_keys": (("id",), ("digest",)),
    "key_events": (("id",),),
    "rate_windows": (("subject", "window"),),
}


def check_row(table: str, row: dict[str, Any]) -> str | None:
    """Say what is wrong with `row` of `table` (its first bad field, and what it must be), or None."""
    for column, (rule, expected) in COLUMN_RULES[table].items():
        if not rule(row[column]):
            return f"{table}.{column} is {json.dumps(row[column])[:60]}: it must be {expected}"
    return None


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
            if (
                not isinstance(header, dict)
                or header.get("format") != FORMAT
                or header.get("version") not in range(1, VERSION + 1)
            ):
                raise TransferError(f"{path} is not an export of this service (version {VERSION} or older)")
            version: int = header["version"]
            added: dict[str, dict[str, Any]] = {}
            for since, new_columns in ADDED_IN.items():
                if version < since:
                    for table, defaults in new_columns.items():
                        added[table] = {**added.get(table, {}), **defaults}
            _check_file(path, source, added)
            source.seek(0)
            source.readline()
            with _connection(settings) as (store, conn):
                for table in TABLES:
                    # bandit B608: table names are this module's constants.
                    if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():  # nosec B608
                        raise TransferError(
                            f"the target store already holds rows in {table}; import needs an empty one"
                        )
                for line in source:  # every line checked above
                    item = json.loads(line)
                    table, row = item.get("table"), item.get("row")
                    if isinstance(row, dict):
                        row = {**added.get(table, {}), **row}
                    columns = TABLES[table]
                    values = [row[c] for c in columns]
                    if table == "rate_windows":
                        values[-1] = bool(values[-1])
                    # bandit B608: table and column names are this module's constants; values are bound.
                    insert = f"INSERT INTO {table} ({_columns(columns)}) VALUES ({', '.join('?' * len(columns))})"  # nosec B608
                    conn.execute(store.sql(insert), values)
                    counts[table] += 1
                if version < 3:
                    conn.execute(REVOKED_REASON_BACKFILL)
    except (OSError, ValueError) as error:
        raise TransferError(str(error)) from error
    return counts


def _check_file(path: str, source: IO[str], added: dict[str, dict[str, Any]]) -> None:
    """Raise TransferError naming the first line that is no row the service could serve; write nothing."""
    seen: dict[tuple[str, tuple[str, ...]], set[tuple[Any, ...]]] = {}
    accounts: set[Any] = set()
    for number, line in enumerate(source, start=2):
        try:
            item = json.loads(line)
        except ValueError as error:
            raise TransferError(f"{path} line {number}: not JSON ({error})") from None
        table, row = (item.get("table"), item.get("row")) if isinstance(item, dict) else (None, None)
        if isinstance(table, str) and isinstance(row, dict):
            row = {**added.get(table, {}), **row}
        if not isinstance(table, str) or table not in TABLES or not isinstance(row, dict) or set(row) != set(TABLES[table]):
            raise TransferError(f"{path} line {number}: not a row of this service's tables")
        if problem := check_row(table, row):
            raise TransferError(f"{path} line {number}: {problem}")
        for columns in UNIQUE[table]:
            value = tuple(row[c] for c in columns)
            if value in seen.setdefault((table, columns), set()):
                raise TransferError(f"{path} line {number}: {table}.{'+'.join(columns)} {value!r} appears twice")
            seen[(table, columns)].add(value)
        if table == "accounts":
            accounts.add(row["user_id"])
        elif table == "api_keys" and row["user_id"] not in accounts:
            raise TransferError(f"{path} line {number}: api_keys.user_id {row['user_id']!r} names no account before it")
