"""The key store on SQLite: accounts, keys, key events and rate-limit windows in one file.

Times are integer microseconds since the Unix epoch (UTC). Writes that must be atomic across
worker processes run in `BEGIN IMMEDIATE` transactions, one writer at a time (`WriterLock`);
key lifecycle writes are synced to disk before they return. SQLite's faults that mean the
store cannot answer now (busy, locked, read-only, full, failing disk) are `StoreUnavailable`.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.domain import records
from app.domain.errors import StoreUnavailable
from app.domain.keys import check_room_for_key, roll_over_cap
from app.domain.ratelimit import count_in, tier_subject
from app.domain.records import Account, Consumption, KeyEvent, KeyRecord, Rolled, StoredWindow, Window
from app.domain.tiers import DEFAULT_TIER
from app.store import migrations
from app.store.errors import DatabaseMissing, StoreStartError
from app.store.writer import CHECKPOINT_INTERVAL_S, Checkpointer, WriterLock

BUSY_TIMEOUT_MS = 5000
EXPIRY_BATCH = 5000  # passed rate windows deleted per write transaction
SCHEMA_VERSION = migrations.SCHEMA_VERSION
# SQLite's primary result codes for a store that cannot answer now, as opposed to a fault in
# the code (a bad query, a broken constraint): busy or locked past the timeout, read-only,
# out of space, or an I/O error from the disk. These answer 503; anything else is a 500.
UNAVAILABLE_CODES = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
})


_KEY_COLUMNS = (
    "k.id, k.user_id, k.name, k.preview, a.tier, k.created_us, k.expires_us, k.revoked_us, "
    "k.total_requests, k.last_used_us, k.replaced_by, k.revoked_reason"
)
_KEY_FROM = "api_keys k JOIN accounts a ON a.user_id = k.user_id"
# An account's active keys (user id, then now), as the `api_keys_active` index holds them: the
# cost is the active keys', however many revoked and expired ones the account keeps.
_ACTIVE = f"user_id = ? AND revoked_us IS NULL AND {migrations.ACTIVE_UNTIL} > ?"


class SQLiteStore:
    """A Store on one SQLite file (or one open connection), safe across threads and processes."""

    def __init__(self, database: str | Path | sqlite3.Connection, create: bool = True) -> None:
        """Open (with `create`, create if missing) and migrate the database.

        StoreStartError, in one line, when the path cannot serve: missing and not to be
        created, a directory, not SQLite, unopenable, or a newer schema (SchemaTooNew).
        """
        self._shared: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._writer: WriterLock | None = None
        self._local = threading.local()
        self._checkpointer: Checkpointer | None = None
        self._probe: sqlite3.Connection | None = None  # readiness checks' own connection
        self._probe_lock = threading.Lock()
        if isinstance(database, sqlite3.Connection):
            self._shared = database
            self._path: Path | None = None
        else:
            self._path = Path(database)
            try:
                self._prepare_file(create)
                self._writer = WriterLock(self._path.with_name(self._path.name + ".write-lock"), BUSY_TIMEOUT_MS / 1000)
            except OSError as error:
                raise StoreStartError(f"cannot open the SQLite database {self._path}: {error.strerror}") from None
        try:
            self.migrate()
        except sqlite3.DatabaseError as error:  # not a database, or a damaged one
            raise StoreStartError(f"{self._path or 'the database'} is not a usable SQLite database: {error}") from None
        except StoreUnavailable as error:
            cause = error.__cause__ or error
            raise StoreStartError(f"cannot open the SQLite database {self._path}: {cause}") from None

    def _prepare_file(self, create: bool) -> None:
        assert self._path is not None
        if self._path.is_dir():
            raise StoreStartError(f"the SQLite database {self._path} is a directory, not a file")
        if not self._path.exists():
            if not create:
                raise DatabaseMissing(
                    f"the SQLite database {self._path} does not exist; create it with `python -m app migrate` "
                    "(or CREATE_DATABASE=on), or correct DATABASE_URL"
                )
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Key digests and account data: readable by the service's user only.
            self._path.touch(mode=0o600)

    # -- connections ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        assert self._path is not None
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        try:
            if self._shared is not None:
                with self._lock:
                    yield self._shared
                return
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._open()
            yield conn
        except sqlite3.OperationalError as error:
            if (getattr(error, "sqlite_errorcode", 0) & 0xFF) in UNAVAILABLE_CODES:
                raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.") from error
            raise

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Wait for this process's turn to write (see `app.store.writer`)."""
        if self._writer is None:
            with self._lock:
                yield
            return
        with self._writer.held():
            yield

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """Run a write transaction that takes the database's write lock up front."""
        with self._conn() as conn, self._writer_turn():
            try:
                if durable:
                    # Sync this commit (and any before it) to disk before the client hears of it.
                    conn.execute("PRAGMA synchronous = FULL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:  # an error, or a COMMIT that failed
                        conn.execute("ROLLBACK")
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def checkpoint_in_background(self, interval: float = CHECKPOINT_INTERVAL_S) -> None:
        """Checkpoint the write-ahead log from a thread of this process (see `Checkpointer`).

        Call once per process, after any fork; `close` stops it.
        """
        if self._path is not None and self._checkpointer is None:
            self._checkpointer = Checkpointer(self._open, interval)

    def close(self) -> None:
        """Stop the background checkpointer, if any, and close this thread's connection."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        with self._probe_lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema; safe when several workers start at once."""
        with self._write() as conn:
            migrations.migrate(conn)

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        with self._conn() as conn:
            conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchall()

    def check_ready(self, timeout_s: float) -> None:
        """Read the database within `timeout_s`, never waiting for the write lock; StoreUnavailable if it cannot.

        A read in WAL mode goes on beside a writer, so a held write lock does not hold it up.
        It runs on a connection of its own, kept open, with `timeout_s` as its busy timeout.
        """
        if self._shared is not None or self._path is None:
            self.ping()
            return
        if not self._probe_lock.acquire(timeout=timeout_s):
            raise StoreUnavailable("The key store did not answer a read in time.", {"timeout_seconds": timeout_s})
        try:
            if self._probe is None:
                self._probe = sqlite3.connect(self._path, timeout=timeout_s, isolation_level=None,
                                              check_same_thread=False)
                self._probe.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._probe.execute("SELECT 1 FROM accounts LIMIT 1").fetchall()
        except sqlite3.OperationalError as error:
            if (getattr(error, "sqlite_errorcode", 0) & 0xFF) in UNAVAILABLE_CODES:
                raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.") from error
            raise
        finally:
            self._probe_lock.release()

    def schema_version(self) -> int:
        """The schema version stamped in the database."""
        with self._conn() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def backup(self, target: str | Path) -> None:
        """Copy the database, as of one moment, to a new file `target` (SQLite's online backup).

        Writers go on meanwhile: the copy is one read transaction, so it holds every write
        committed before it began and none after.
        """
        target = Path(target)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never over an existing file
        os.close(fd)
        try:
            with self._conn() as conn:
                copy = sqlite3.connect(target)
                try:
                    conn.backup(copy)
                    copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                finally:
                    copy.close()
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    # -- accounts -------------------------------------------------------------------------

    def ensure_account(self, user_id: str, now_us: int) -> Account:
        """Return the user's account, creating it on the default tier if new."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT user_id, tier, created_us FROM accounts WHERE user_id = ?", (user_id,)
            ).fetchone()
        if row is None:
            with self._write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO accounts (user_id, tier, created_us) VALUES (?, ?, ?)",
                    (user_id, DEFAULT_TIER, now_us),
                )
                row = conn.execute(
                    "SELECT user_id, tier, created_us FROM accounts WHERE user_id = ?", (user_id,)
                ).fetchone()
        return Account(*row)

    def set_tier(self, user_id: str, tier: str, now_us: int, create: bool = True) -> Account | None:
        """Set the user's tier, creating the account if needed and `create`; None if it is not there."""
        with self._write(durable=True) as conn:
            if create:
                conn.execute(
                    "INSERT INTO accounts (user_id, tier, created_us) VALUES (?, ?, ?) "
                    "ON CONFLICT(user_id) DO UPDATE SET tier = excluded.tier",
                    (user_id, tier, now_us),
                )
            else:
                conn.execute("UPDATE accounts SET tier = ? WHERE user_id = ?", (tier, user_id))
            row = conn.execute(
                "SELECT user_id, tier, created_us FROM accounts WHERE user_id = ?", (user_id,)
            ).fetchone()
        return Account(*row) if row else None

    # -- keys -----------------------------------------------------------------------------

    def insert_key(self, record: KeyRecord, digest: str, max_active: int, event: KeyEvent) -> None:
        """Store a new key and its `minted` event, enforcing name uniqueness and the key cap."""
        now = record.created_us
        with self._write(durable=True) as conn:
            # bandit B608: SQL from module constants; every value is a bound parameter.
            count, same_name = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE name = ?) FROM api_keys WHERE {_ACTIVE}",  # nosec B608
                (record.name, record.user_id, now),
            ).fetchone()
            check_room_for_key(record.name, bool(same_name), count, max_active)
            conn.execute(
                "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.user_id, record.name, digest, record.preview, now, record.expires_us),
            )
            _insert_event(conn, event)

    def get_key(self, user_id: str, key_id: str, include_revoked: bool = False) -> KeyRecord | None:
        """Return the user's key with this id unless it is revoked (or, with `include_revoked`, even so)."""
        with self._conn() as conn:
            # bandit B608: SQL from module constants; every value is a bound parameter.
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608
                "WHERE k.id = ? AND k.user_id = ?" + ("" if include_revoked else " AND k.revoked_us IS NULL"),
                (key_id, user_id),
            ).fetchone()
        return KeyRecord(*row) if row else None

    def list_keys(
        self, user_id: str, limit: int, before: tuple[int, str] | None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        """Return up to `limit` keys, newest first, older than the `before` position; revoked ones only if asked."""
        # bandit B608: SQL from module constants; every value is a bound parameter.
        sql = f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} WHERE k.user_id = ?"  # nosec B608
        if not include_revoked:
            sql += " AND k.revoked_us IS NULL"
        with self._conn() as conn:
            return [KeyRecord(*row) for row in _newest_first(conn, sql, [user_id], "k", "api_keys", "created_us", before, limit)]

    def revoke_key(
        self, user_id: str, key_id: str, now_us: int, event: KeyEvent, reason: str = records.REVOKED_BY_OWNER
    ) -> KeyRecord | None:
        """Revoke the user's key for `reason` and record the event; None if there is no such unrevoked key."""
        with self._write(durable=True) as conn:
            # bandit B608: SQL from module constants; every value is a bound parameter.
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608
                "WHERE k.id = ? AND k.user_id = ? AND k.revoked_us IS NULL",
                (key_id, user_id),
            ).fetchone()
            if row is None:
                return None
            # The account's rate windows stay: its other keys, and any minted next, share them.
            conn.execute("UPDATE api_keys SET revoked_us = ?, revoked_reason = ? WHERE id = ?", (now_us, reason, key_id))
            record = KeyRecord(*row)
            _insert_event(conn, event)
        return record

    def roll_key(
        self, user_id: str, key_id: str, plan: Callable[[KeyRecord], Rolled], digest: str, max_active: int
    ) -> Rolled | None:
        """Replace the user's key as `plan` says, in one transaction; None if there is no such key.

        `plan` sees the key as stored now (revoked ones included) and raises to refuse the roll,
        writing nothing, or returns the old key as it will stand, its replacement and the events.
        While both stay active both count against `max_active`.
        """
        with self._write(durable=True) as conn:
            # bandit B608: SQL from module constants; every value is a bound parameter.
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} WHERE k.id = ? AND k.user_id = ?",  # nosec B608
                (key_id, user_id),
            ).fetchone()
            if row is None:
                return None
            rolled = plan(KeyRecord(*row))
            now = rolled.new.created_us
            if rolled.old.expires_us is None or rolled.old.expires_us > now:
                # bandit B608: SQL from module constants; every value is a bound parameter.
                (count,) = conn.execute(f"SELECT count(*) FROM api_keys WHERE {_ACTIVE}", (user_id, now)).fetchone()  # nosec B608
                if count >= max_active:
                    raise roll_over_cap(count, max_active)
            conn.execute(
                "UPDATE api_keys SET expires_us = ?, replaced_by = ? WHERE id = ?",
                (rolled.old.expires_us, rolled.old.replaced_by, rolled.old.id),
            )
            new = rolled.new
            conn.execute(
                "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new.id, new.user_id, new.name, digest, new.preview, new.created_us, new.expires_us),
            )
            for event in rolled.events:
                _insert_event(conn, event)
        return rolled

    def revoke_leaked(
        self, digests: Sequence[str], now_us: int, event: Callable[[KeyRecord], KeyEvent]
    ) -> list[KeyRecord]:
        """Revoke every active key stored under one of `digests` as leaked, each with its `event`, at once."""
        if not digests:
            return []
        marks = ", ".join("?" * len(digests))
        with self._write(durable=True) as conn:
            # bandit B608: SQL from module constants and one `?` per digest; every value is bound.
            rows = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} WHERE k.digest IN ({marks}) "  # nosec B608
                "AND k.revoked_us IS NULL AND (k.expires_us IS NULL OR k.expires_us > ?)",
                (*digests, now_us),
            ).fetchall()
            found = [KeyRecord(*row) for row in rows]
            for record in found:
                conn.execute(
                    "UPDATE api_keys SET revoked_us = ?, revoked_reason = ? WHERE id = ?",
                    (now_us, records.REVOKED_AS_LEAKED, record.id),
                )
                _insert_event(conn, event(record))
        return found

    # -- events ---------------------------------------------------------------------------

    def list_events(self, user_id: str, limit: int, before: tuple[int, str] | None) -> list[KeyEvent]:
        """Return up to `limit` of the user's key events, newest first, older than `before`."""
        sql = (
            "SELECT e.id, e.user_id, e.key_id, e.type, e.key_name, e.key_preview, e.request_id, e.occurred_us, "
            "e.details FROM key_events e WHERE e.user_id = ?"
        )
        with self._conn() as conn:
            return [
                KeyEvent(
                    id=row[0], user_id=row[1], key_id=row[2], type=row[3], key_name=row[4],
                    key_preview=row[5], request_id=row[6], occurred_us=row[7], details=json.loads(row[8]),
                )
                for row in _newest_first(conn, sql, [user_id], "e", "key_events", "occurred_us", before, limit)
            ]

    def prune(self, before_us: int, limit: int) -> tuple[int, int]:
        """Delete up to `limit` rows past retention, in one short write transaction; return (keys, events).

        Keys revoked, or expired, before `before_us`, and key events that occurred before it.
        Each statement finds its rows through an index, so a batch costs its rows, not the table.
        """
        with self._write() as conn:
            keys = 0
            for column in ("revoked_us", "expires_us"):
                # bandit B608: the column is one of this method's two literals; values are bound.
                keys += conn.execute(
                    f"DELETE FROM api_keys WHERE rowid IN (SELECT rowid FROM api_keys WHERE {column} < ? LIMIT ?)",  # nosec B608
                    (before_us, limit - keys),
                ).rowcount
            events = conn.execute(
                "DELETE FROM key_events WHERE rowid IN (SELECT rowid FROM key_events WHERE occurred_us < ? LIMIT ?)",
                (before_us, limit - keys),
            ).rowcount
        return keys, events

    # -- rate limits ----------------------------------------------------------------------

    def consume(self, subject: str, windows: Sequence[Window], now_us: int) -> Consumption:
        """Count one request against every window of `subject` if all have room, atomically.

        `windows` are ordered shortest first. (Keys are counted by `use_key`, which also
        bumps their usage and records refusals.)
        """
        with self._write() as conn:
            return _count(conn, subject, windows, now_us)

    def expire_windows(self, current: Sequence[Window]) -> int:
        """Delete every subject's windows that began before the `current` window of their kind; return how many.

        In batches, each its own transaction, so that other writers get the lock in between.
        """
        deleted = 0
        for w in current:
            after = 0  # each batch goes on from the last row the one before it looked at
            while True:
                with self._write() as conn:
                    rowids = [rowid for (rowid,) in conn.execute(
                        "SELECT rowid FROM rate_windows WHERE rowid > ? AND window = ? AND start < ? ORDER BY rowid LIMIT ?",
                        (after, w.kind, w.start, EXPIRY_BATCH),
                    )]
                    conn.executemany("DELETE FROM rate_windows WHERE rowid = ?", [(rowid,) for rowid in rowids])
                deleted += len(rowids)
                if len(rowids) < EXPIRY_BATCH:
                    break
                after = rowids[-1]
        return deleted

    def use_key(
        self, digest: str, now_us: int, admit: Callable[[KeyRecord], Sequence[Window]], request_id: str
    ) -> tuple[KeyRecord, Consumption] | None:
        """Look up the key stored under `digest` and count one request of it, in one transaction.

        `admit` sees the key as stored at this moment (revoked, expired, its account's tier) and
        either raises to refuse it, writing nothing, or returns the windows to count it in. The
        windows are its account's (`tier_subject`), shared by all the account's keys; the usage
        counted is the key's own. None if no key has this digest. One transaction per request,
        and a key revoked or re-tiered in another worker is seen at once.
        """
        with self._write() as conn:
            # bandit B608: SQL from module constants; the digest is a bound parameter.
            row = conn.execute(f"SELECT {_KEY_COLUMNS}, k.digest FROM {_KEY_FROM} WHERE k.digest = ?", (digest,)).fetchone()  # nosec B608
            if row is None or not hmac.compare_digest(row[-1], digest):
                return None
            record = KeyRecord(*row[:-1])
            counted = _count(conn, tier_subject(record.user_id), admit(record), now_us, record, request_id)
        if counted.usage is not None:
            # As the key stands after this request: its usage counted with it.
            total_requests, last_used_us = counted.usage
            record = replace(record, total_requests=total_requests, last_used_us=last_used_us)
        return record, counted


def _count(
    conn: sqlite3.Connection,
    subject: str,
    windows: Sequence[Window],
    now_us: int,
    key: KeyRecord | None = None,
    request_id: str = "",
) -> Consumption:
    """Count a request in `subject`'s windows, by the domain's rule, inside the caller's write
    transaction.

    For a `key`, an admitted request also bumps its usage, and the first refusal in a window
    is recorded as a `rate_limited` event about that key (the windows are its account's).
    """
    stored = {
        kind: StoredWindow(start, count, bool(blocked))
        for kind, start, count, blocked in conn.execute(
            "SELECT window, start, count, blocked FROM rate_windows WHERE subject = ?", (subject,)
        )
    }
    result = count_in(windows, stored)
    starts = result.starts or {}
    if result.blocked_by is not None:
        kind = result.blocked_by
        conn.execute(
            "UPDATE rate_windows SET blocked = 1 WHERE subject = ? AND window = ? AND start = ?",
            (subject, kind, starts[kind]),
        )
        if result.first_block and key is not None:
            limit = next(w.limit for w in windows if w.kind == kind)
            details = {"window": kind, "limit": limit, "applies_to": "account"}
            _insert_event(conn, KeyEvent.about(key, "rate_limited", request_id, now_us, details))
        return result
    # One row per subject and window kind, overwritten when a new window starts: old windows
    # never pile up.
    conn.executemany(
        "INSERT INTO rate_windows (subject, window, start, count, blocked) VALUES (?, ?, ?, ?, 0) "
        "ON CONFLICT(subject, window) DO UPDATE SET start = excluded.start, count = excluded.count, "
        "blocked = CASE WHEN start = excluded.start THEN blocked ELSE 0 END",
        [(subject, kind, starts[kind], count) for kind, count in result.counts.items()],
    )
    if key is not None:
        usage = conn.execute(
            "UPDATE api_keys SET total_requests = total_requests + 1, last_used_us = ? WHERE id = ? "
            "RETURNING total_requests, last_used_us",
            (now_us, key.id),
        ).fetchone()
        result = replace(result, usage=tuple(usage))
    return result


def _newest_first(
    conn: sqlite3.Connection, sql: str, params: list[Any], alias: str, table: str, time_column: str,
    before: tuple[int, str] | None, limit: int,
) -> sqlite3.Cursor:
    """Run `sql` as one page of a newest-first listing, after the `before` (time, id) position."""
    if before is not None:
        # Ties in time fall back to insertion order (rowid); a cursor naming no row of this
        # account's ends at its time, so another account's id reads as one that does not exist.
        # bandit B608: alias, table and column are literals from this module's callers; values are bound.
        sql += (f" AND ({alias}.{time_column}, {alias}.rowid) < "  # nosec B608
                f"(?, (SELECT rowid FROM {table} WHERE id = ? AND user_id = {alias}.user_id))")
        params = params + list(before)
    sql += f" ORDER BY {alias}.{time_column} DESC, {alias}.rowid DESC LIMIT ?"
    return conn.execute(sql, params + [limit])


def _insert_event(conn: sqlite3.Connection, event: KeyEvent) -> None:
    conn.execute(
        "INSERT INTO key_events (id, user_id, key_id, type, key_name, key_preview, request_id, "
        "occurred_us, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.id, event.user_id, event.key_id, event.type, event.key_name, event.key_preview,
         event.request_id, event.occurred_us, json.dumps(event.details)),
    )
