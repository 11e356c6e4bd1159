"""The shipped SQLite store with its hot paths written in SQLAlchemy Core: the trial `bench/core.py` measures.

`CoreStore` is `SQLiteStore` (same file, same schema and migrations, same flock writer lock,
same checkpointer) with every store call a whoami and a mint make rewritten as a team adopting
SQLAlchemy Core would write them:

- `use_key` (whoami): the key looked up by digest, its account's rate windows read, created if
  missing, counted or blocked by the domain's `count_in` rule, the key's usage bumped with
  `UPDATE ... RETURNING`, the first refusal recorded as a `rate_limited` event;
- `consume` (the key-management limit every signed-in request, a mint included, is counted in);
- `ensure_account` and `insert_key` (mint): the account read, created on first sight with
  `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, locked, its active keys counted for the cap
  and the name, the key and its `minted` event inserted.

Tables are `Table` objects in a `MetaData`, built from `app.store.schema.SCHEMA`; statements
are `select()` / `insert()` (the SQLite dialect's, for `on_conflict_do_nothing` and
`on_conflict_do_update`) / `update()`, with `.with_for_update()`
where the shipped PostgreSQL query locks a row (rendered as nothing on SQLite, as the shipped
store's empty `{lock_row}` fragments are); scopes, allowlists and event details are `JSON`
columns, `blocked` a `Boolean`. They run through an `Engine` with its default connection pool
(`QueuePool`) and compiled-statement cache, `conn.execute(stmt, params)`. Two ways of writing
them are measured: `CoreStore` builds each statement where it runs it, with its values, as Core
code is usually written; `PrebuiltCoreStore` builds each once, with `bindparam`s, and gives the
values at execution (what a team tuning Core for speed would do).

Transactions keep the shipped discipline: every connection gets the same PRAGMAs; a write
takes the writer lock, then `BEGIN IMMEDIATE` (SQLAlchemy's documented recipe for pysqlite:
the driver's own BEGIN switched off, the `begin` event emits ours); every write commits at
`synchronous = NORMAL`, and a durable one (an account, a key) then has its log synced by the
shipped store's `LogSync`, as the shipped store's are. A read runs in
a deferred transaction, as Core always runs statements in one. The same `app.domain` rules
(`count_in`, `check_room_for_key`, `tier_subject`, `KeyEvent.about`) decide. Every other
method (revoking, listing, rolling, the sweeps) is the shipped store's, untouched.

Used by the benchmark and its check only (tests/test_bench_core.py); the service never imports it.
"""

from __future__ import annotations

import hmac
import inspect
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    event,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from app.domain.errors import StoreUnavailable
from app.domain.keys import check_room_for_key
from app.domain.ratelimit import count_in, tier_subject
from app.domain.records import Account, Consumption, KeyEvent, KeyRecord, StoredWindow, Window
from app.domain.tiers import DEFAULT_TIER
from app.store import schema
from app.store.schema import ACTIVE_UNTIL, TABLES
from app.store.sqlite import BUSY_TIMEOUT_MS, SQLiteStore, _unavailable

# -- the schema, as Core metadata -------------------------------------------------------------

# Built from the store's one declaration (`app.store.schema.SCHEMA`), as a Core user would
# declare it: each kind as its Core type, and the JSON-holding text columns as Core's JSON, so
# that Core encodes and decodes them (the shipped store calls json itself).
CORE_TYPES: dict[str, Any] = {"text": Text, "integer": Integer, "boolean": Boolean(create_constraint=False)}
JSON_COLUMNS = {("api_keys", "scopes"), ("api_keys", "allowed_ips"), ("key_events", "details")}


def _core_table(table: schema.Table) -> Table:
    return Table(
        table.name,
        metadata,
        *(
            Column(
                c.name,
                JSON(none_as_null=True) if (table.name, c.name) in JSON_COLUMNS else CORE_TYPES[c.kind],
                primary_key=c.name in table.primary_key,
                nullable=not c.not_null and c.name not in table.primary_key,
                unique=c.unique,
                server_default=None if c.default is None else text(str(c.default)),
            )
            for c in table.columns
        ),
    )


metadata = MetaData()
accounts, api_keys, key_events, rate_windows = (_core_table(t) for t in schema.SCHEMA)
assert {t.name: tuple(c.name for c in t.columns) for t in metadata.sorted_tables} == TABLES

# The expression the `api_keys_active` index is built on, written the same way (SQLite uses an
# index on an expression only for that expression; a bound parameter in its place would miss it).
active_until = literal_column(ACTIVE_UNTIL)

# -- the statements ------------------------------------------------------------------------------
# Each is a function of its values. `CoreStore` calls them per call with the values themselves,
# as Core code is usually written (the compiled cache keeps the SQL text; building the statement
# and its cache key is paid per call). `PrebuiltCoreStore` builds each once, with a `bindparam`
# per value, and passes the values at execution: the fastest way Core offers short of text().

k, a, w = api_keys.c, accounts.c, rate_windows.c
KEY_COLUMNS = (k.id, k.user_id, k.name, k.preview, a.tier, k.created_us, k.expires_us, k.revoked_us,
               k.total_requests, k.last_used_us, k.replaced_by, k.revoked_reason, k.scopes, k.allowed_ips)


def key_by_digest(digest: str) -> Executable:
    """The key stored under `digest`, with its account's tier; PostgreSQL: `FOR NO KEY UPDATE OF api_keys`."""
    return (
        select(*KEY_COLUMNS, k.digest).join_from(api_keys, accounts, k.user_id == a.user_id)
        .where(k.digest == digest).with_for_update(of=api_keys, key_share=True)
    )


def account_windows(subject: str) -> Executable:
    """A subject's rate windows, always in the same order; PostgreSQL: `FOR UPDATE`."""
    return (
        select(w.window, w.start, w.count, w.blocked).where(w.subject == subject)
        .order_by(w.window).with_for_update()
    )


def add_windows() -> Executable:
    """Empty windows for a subject's first request (executemany: one parameter set per kind)."""
    return sqlite_insert(rate_windows).on_conflict_do_nothing()


def count_window() -> Executable:
    """Overwrite a window's start and count; a new window's refusal flag restarts (executemany)."""
    return (
        update(rate_windows)
        .where(w.subject == bindparam("w_subject"), w.window == bindparam("w_window"))
        .values(start=bindparam("w_start"), count=bindparam("w_count"),
                blocked=case((w.start == bindparam("w_start"), w.blocked), else_=False))
    )


def block_window(w_subject: str, w_window: str, w_start: int) -> Executable:
    """Record a window's first refusal (bindparams may not be named after the columns an UPDATE sets)."""
    return (update(rate_windows).where(w.subject == w_subject, w.window == w_window, w.start == w_start)
            .values(blocked=True))


def use(key_id: str, now_us: int) -> Executable:
    return (
        update(api_keys).where(k.id == key_id)
        .values(total_requests=k.total_requests + 1, last_used_us=now_us)
        .returning(k.total_requests, k.last_used_us)
    )


def account(user_id: str) -> Executable:
    return select(a.user_id, a.tier, a.created_us).where(a.user_id == user_id)


def ensure_account(uid: str, now_us: int) -> Executable:
    """Insert the account, or return it as stored (a no-op update returns a row another writer committed)."""
    stmt = sqlite_insert(accounts).values(user_id=uid, tier=DEFAULT_TIER, created_us=now_us)
    return stmt.on_conflict_do_update(
        index_elements=[a.user_id], set_={"user_id": stmt.excluded.user_id}
    ).returning(a.user_id, a.tier, a.created_us)


def add_account(uid: str, now_us: int) -> Executable:
    return sqlite_insert(accounts).values(user_id=uid, tier=DEFAULT_TIER, created_us=now_us).on_conflict_do_nothing()


def lock_account(user_id: str) -> Executable:
    """The account row, the turnstile of its keys' writes; PostgreSQL: `FOR UPDATE`."""
    return select(literal_column("1")).select_from(accounts).where(a.user_id == user_id).with_for_update()


def active_keys(user_id: str, name: str, now_us: int) -> Executable:
    """The account's active keys, and those of them named `name`, as the `api_keys_active` index holds them."""
    return select(func.count(), func.count().filter(k.name == name)).where(
        k.user_id == user_id, k.revoked_us.is_(None), active_until > now_us
    )


def new_key() -> Executable:
    return insert(api_keys)


def new_event() -> Executable:
    return insert(key_events)


BUILDERS: dict[str, Callable[..., Executable]] = {
    f.__name__: f for f in (key_by_digest, account_windows, add_windows, count_window, block_window, use, account,
                            ensure_account, add_account, lock_account, active_keys, new_key, new_event)
}
# Each statement built once, a bindparam named after each of its builder's parameters.
PREBUILT: dict[str, Executable] = {
    name: f(**{p: bindparam(p) for p in inspect.signature(f).parameters}) for name, f in BUILDERS.items()
}


def key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id, user_id=row.user_id, name=row.name, preview=row.preview, tier=row.tier,
        created_us=row.created_us, expires_us=row.expires_us, revoked_us=row.revoked_us,
        total_requests=row.total_requests, last_used_us=row.last_used_us, replaced_by=row.replaced_by,
        revoked_reason=row.revoked_reason,
        scopes=None if row.scopes is None else tuple(row.scopes),
        allowed_ips=None if row.allowed_ips is None else tuple(row.allowed_ips),
    )


def event_values(event: KeyEvent) -> dict[str, Any]:
    return {
        "id": event.id, "user_id": event.user_id, "key_id": event.key_id, "type": event.type,
        "key_name": event.key_name, "key_preview": event.key_preview, "request_id": event.request_id,
        "occurred_us": event.occurred_us, "details": event.details,
    }


class CoreStore(SQLiteStore):
    """`SQLiteStore` whose whoami and mint paths run through SQLAlchemy Core (see the module's docstring)."""

    PREBUILT: ClassVar[bool] = False  # statements built per call (False) or once (True)

    def __init__(self, database: str | Path, create: bool = True) -> None:
        super().__init__(database, create)  # the file, its schema, the writer lock: the shipped store's
        assert self._path is not None
        engine = create_engine(f"sqlite:///{self._path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def prepare(dbapi_connection: sqlite3.Connection, record: Any) -> None:
            dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own: `begin` below does
            for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "journal_mode = WAL", "synchronous = NORMAL",
                           "foreign_keys = ON"):
                dbapi_connection.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writes") else "BEGIN")

        self._engine = engine
        self._writes = engine.execution_options(writes=True)

    def close(self) -> None:
        super().close()
        self._engine.dispose()

    # -- statements -----------------------------------------------------------------------

    def _built(self, builder: Callable[[], Executable]) -> Executable:
        """A statement with no values of its own (its parameters are given at execution)."""
        return PREBUILT[builder.__name__] if self.PREBUILT else builder()

    def _run(self, conn: Connection, builder: Callable[..., Executable], **values: Any) -> Any:
        """Execute `builder`'s statement for `values`: built now with them, or built once and given them."""
        if self.PREBUILT:
            return conn.execute(PREBUILT[builder.__name__], values)
        return conn.execute(builder(**values))

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def _unavailable_as_503(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as error:
            if isinstance(error.orig, sqlite3.OperationalError) and _unavailable(error.orig):
                raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.") from error
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._unavailable_as_503(), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _core_write(self, *, durable: bool) -> Iterator[Connection]:
        """One write transaction: the writer lock, BEGIN IMMEDIATE, committed; if `durable`, its log synced."""
        with self._unavailable_as_503(), self._writes.connect() as conn, self._writer_turn(), conn.begin():
            yield conn
        if durable and self._log_sync is not None:
            self._log_sync.sync()

    # -- accounts and keys: a mint ---------------------------------------------------------

    def ensure_account(self, user_id: str, now_us: int) -> Account:
        with self._read() as conn:
            row = self._run(conn, account, user_id=user_id).first()
        if row is None:
            with self._core_write(durable=True) as conn:
                row = self._run(conn, ensure_account, uid=user_id, now_us=now_us).one()
        return Account(*row)

    def insert_key(self, record: KeyRecord, digest: str, max_active: int, event: KeyEvent) -> None:
        now = record.created_us
        with self._core_write(durable=True) as conn:
            self._run(conn, add_account, uid=record.user_id, now_us=now)
            self._run(conn, lock_account, user_id=record.user_id).first()
            count, same_name = self._run(
                conn, active_keys, user_id=record.user_id, name=record.name, now_us=now).one()
            check_room_for_key(record.name, bool(same_name), count, max_active)
            conn.execute(self._built(new_key), {
                "id": record.id, "user_id": record.user_id, "name": record.name, "digest": digest,
                "preview": record.preview, "created_us": record.created_us, "expires_us": record.expires_us,
                "scopes": None if record.scopes is None else list(record.scopes),
                "allowed_ips": None if record.allowed_ips is None else list(record.allowed_ips),
            })
            conn.execute(self._built(new_event), event_values(event))

    # -- a key's use: a whoami, and the key-management limit --------------------------------

    def consume(self, subject: str, windows: Sequence[Window], now_us: int) -> Consumption:
        with self._core_write(durable=False) as conn:
            return self._core_count(conn, subject, windows, now_us)

    def use_key(
        self, digest: str, now_us: int, admit: Callable[[KeyRecord], Sequence[Window]], request_id: str
    ) -> tuple[KeyRecord, Consumption] | None:
        with self._core_write(durable=False) as conn:
            row = self._run(conn, key_by_digest, digest=digest).first()
            if row is None or not hmac.compare_digest(row.digest, digest):
                return None
            record = key_record(row)
            counted = self._core_count(conn, tier_subject(record.user_id), admit(record), now_us, record, request_id)
        if counted.usage is not None:
            total_requests, last_used_us = counted.usage
            record = replace(record, total_requests=total_requests, last_used_us=last_used_us)
        return record, counted

    def _core_count(
        self,
        conn: Connection,
        subject: str,
        windows: Sequence[Window],
        now_us: int,
        key: KeyRecord | None = None,
        request_id: str = "",
    ) -> Consumption:
        """`SQLStore._count` in Core: the same rule, the same writes."""
        rows = self._run(conn, account_windows, subject=subject).all()
        # Unpacked by position: a Row is a tuple, whose `count` attribute is tuple.count.
        if not {x.kind for x in windows} <= {kind for kind, *_ in rows}:
            conn.execute(self._built(add_windows), [
                {"subject": subject, "window": x.kind, "start": 0, "count": 0, "blocked": False} for x in windows
            ])
            rows = self._run(conn, account_windows, subject=subject).all()
        result = count_in(windows, {kind: StoredWindow(start, count, blocked) for kind, start, count, blocked in rows})
        starts = result.starts or {}
        if result.blocked_by is not None:
            kind = result.blocked_by
            if result.first_block:
                self._run(conn, block_window, w_subject=subject, w_window=kind, w_start=starts[kind])
                if key is not None:
                    limit = next(x.limit for x in windows if x.kind == kind)
                    details = {"window": kind, "limit": limit, "applies_to": "account"}
                    conn.execute(self._built(new_event), event_values(
                        KeyEvent.about(key, "rate_limited", request_id, now_us, details)))
            return result
        conn.execute(self._built(count_window), [
            {"w_start": starts[kind], "w_count": count, "w_subject": subject, "w_window": kind}
            for kind, count in result.counts.items()
        ])
        if key is None:
            return result
        usage = self._run(conn, use, key_id=key.id, now_us=now_us).one()
        return replace(result, usage=(usage.total_requests, usage.last_used_us))


class PrebuiltCoreStore(CoreStore):
    """`CoreStore` with every statement built once (`PREBUILT`), its values bound at execution."""

    PREBUILT = True
