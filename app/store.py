"""The key store: accounts, keys, key events and rate-limit windows in SQLite.

The only module that touches SQL. Times are integer microseconds since the Unix epoch
(UTC). Writes that must be atomic across worker processes run in `BEGIN IMMEDIATE`
transactions; key lifecycle writes are synced to disk before they return.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from app.errors import DuplicateName, KeyLimitReached, ServiceUnavailable
from app.tiers import DEFAULT_TIER

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
CHECKPOINT_INTERVAL_S = 0.05
IDLE_CHECKPOINT_INTERVAL_S = 0.25

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    user_id: str
    tier: str
    created_us: int


@dataclass(frozen=True)
class KeyRecord:
    id: str
    user_id: str
    name: str
    preview: str
    tier: str
    created_us: int
    expires_us: int | None
    revoked_us: int | None
    total_requests: int
    last_used_us: int | None


@dataclass(frozen=True)
class KeyEvent:
    id: str
    user_id: str
    key_id: str
    type: str
    key_name: str
    key_preview: str
    request_id: str
    occurred_us: int
    details: dict[str, Any]

    @classmethod
    def about(
        cls, key: KeyRecord, kind: str, request_id: str, occurred_us: int, details: dict[str, Any] | None = None
    ) -> KeyEvent:
        """A new event of `kind` about `key`, naming it as it is now."""
        return cls(
            id=str(uuid.uuid4()), user_id=key.user_id, key_id=key.id, type=kind, key_name=key.name,
            key_preview=key.preview, request_id=request_id, occurred_us=occurred_us, details=details or {},
        )


@dataclass(frozen=True)
class Window:
    """One rate-limit window to count a request against."""

    kind: str  # "minute" or "day"
    start: int  # window start, Unix seconds
    limit: int


@dataclass(frozen=True)
class Consumption:
    """What counting one request against a subject's windows did."""

    allowed: bool
    counts: dict[str, int]  # requests counted in each window, this one included if allowed
    blocked_by: str | None  # the window that refused the request
    first_block: bool  # the first refusal in that window
    usage: tuple[int, int] | None = None  # the key's total_requests and last_used_us after this one
    starts: dict[str, int] | None = None  # the window each count belongs to (see consume)


class Store(Protocol):
    """What the domain needs from a key store."""

    def ensure_account(self, user_id: str, now_us: int) -> Account: ...
    def set_tier(self, user_id: str, tier: str, now_us: int) -> Account: ...
    def insert_key(self, record: KeyRecord, digest: str, max_active: int, event: KeyEvent) -> None: ...
    def get_key(self, user_id: str, key_id: str) -> KeyRecord | None: ...
    def list_keys(self, user_id: str, limit: int, before: tuple[int, str] | None) -> list[KeyRecord]: ...
    def revoke_key(self, user_id: str, key_id: str, now_us: int, event: KeyEvent) -> KeyRecord | None: ...
    def list_events(self, user_id: str, limit: int, before: tuple[int, str] | None) -> list[KeyEvent]: ...
    def consume(self, subject: str, windows: Sequence[Window], now_us: int) -> Consumption: ...
    def use_key(self, digest: str, now_us: int, admit: Callable[[KeyRecord], Sequence[Window]],
                request_id: str) -> tuple[KeyRecord, Consumption] | None: ...
    def ping(self) -> None: ...


_KEY_COLUMNS = (
    "k.id, k.user_id, k.name, k.preview, a.tier, k.created_us, k.expires_us, k.revoked_us, "
    "k.total_requests, k.last_used_us"
)
_KEY_FROM = "api_keys k JOIN accounts a ON a.user_id = k.user_id"


class SQLiteStore:
    """A Store on one SQLite file (or one open connection), safe across threads and processes."""

    def __init__(self, database: str | Path | sqlite3.Connection) -> None:
        self._shared: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._lock_file: Any = None
        self._local = threading.local()
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpointer = threading.Event()
        if isinstance(database, sqlite3.Connection):
            self._shared = database
            self._path: Path | None = None
        else:
            self._path = Path(database)
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if not self._path.exists():
                # Key digests and account data: readable by the service's user only.
                self._path.touch(mode=0o600)
            lock_path = self._path.with_name(self._path.name + ".write-lock")
            self._lock_file = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+b", buffering=0)
        self.migrate()

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
        if self._shared is not None:
            with self._lock:
                yield self._shared
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        yield conn

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Wait for this process's turn to write.

        SQLite alone makes a writer that finds the database locked sleep between polls (1, 2,
        5, 10 ms and more) even when the holder is done in a tenth of a millisecond; with
        several workers that sleeping, not the writes, set the latency. Writers here queue on
        an flock beside the database, checked every 0.2 ms. SQLite's own locking and busy
        timeout stay underneath, for any writer that does not take this lock.
        """
        if self._lock_file is None:
            with self._lock:
                yield
            return
        with self._lock:  # flock is per open file: threads of one process queue here
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._wait_for_lock()
            try:
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _wait_for_lock(self) -> None:
        # Polled finely (0.2 ms), and no longer than SQLite's own busy timeout: a writer stuck
        # behind a lock that is not released fails closed (503) instead of stalling for good.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            time.sleep(0.0002)
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    error = ServiceUnavailable("The key store is busy; retry shortly.")
                    error.headers = {"Retry-After": "1"}
                    raise error from None

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
        """Copy the write-ahead log into the database from a thread of this process.

        Left to itself, SQLite checkpoints inside whichever commit finds the log over 1,000
        pages: that request waits while the whole log is flushed to disk and copied back,
        once every few hundred key checks (measured: 4-5 ms on a 2-core VM's disk; longer
        on slower disks). Here a thread with its own connection checkpoints every `interval`
        seconds instead, less often while nothing is written. The sqlite3 module lets go of
        the GIL while it works, so requests go on meanwhile; the commit-time checkpoint stays
        as a backstop, with little left to do. Call once per process, after any fork; `close`
        stops it.
        """
        if self._path is None or self._checkpointer is not None:
            return
        self._stop_checkpointer.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_until_stopped, args=(interval,), name="sqlite-checkpointer", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_until_stopped(self, interval: float) -> None:
        conn = self._open()
        failing = False
        wait, last_size = interval, None
        try:
            while not self._stop_checkpointer.wait(wait):
                try:
                    # PASSIVE: never waits for, nor blocks, readers and writers. A checkpoint
                    # already running in another worker makes this one a no-op.
                    _, size, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    # An idle log is looked at less and less often (waking costs CPU too),
                    # but at least every IDLE_CHECKPOINT_INTERVAL_S, so new writes are
                    # picked up within a quarter of a second.
                    wait = interval if size != last_size else min(wait * 2, IDLE_CHECKPOINT_INTERVAL_S)
                    last_size = size
                    failing = False
                except sqlite3.Error as error:
                    if not failing:  # once per run of failures, not every interval
                        log.warning("background WAL checkpoint failed: %s", error)
                    failing = True
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the background checkpointer, if any, and close this thread's connection."""
        if self._checkpointer is not None:
            self._stop_checkpointer.set()
            self._checkpointer.join()
            self._checkpointer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema; safe when several workers start at once."""
        with self._conn() as conn:
            db = sqlite_utils.Database(conn)
            with self._write() as _:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < 1:
                    _create_v1(db)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        with self._conn() as conn:
            conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchall()

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

    def set_tier(self, user_id: str, tier: str, now_us: int) -> Account:
        """Set the user's tier, creating the account if needed."""
        with self._write(durable=True) as conn:
            conn.execute(
                "INSERT INTO accounts (user_id, tier, created_us) VALUES (?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET tier = excluded.tier",
                (user_id, tier, now_us),
            )
            row = conn.execute(
                "SELECT user_id, tier, created_us FROM accounts WHERE user_id = ?", (user_id,)
            ).fetchone()
        return Account(*row)

    # -- keys -----------------------------------------------------------------------------

    def insert_key(self, record: KeyRecord, digest: str, max_active: int, event: KeyEvent) -> None:
        """Store a new key and its `minted` event, enforcing name uniqueness and the key cap."""
        now = record.created_us
        active = "user_id = ? AND revoked_us IS NULL AND (expires_us IS NULL OR expires_us > ?)"
        with self._write(durable=True) as conn:
            # bandit B608: SQL from this method's constant clause; every value is a bound parameter.
            if conn.execute(
                f"SELECT 1 FROM api_keys WHERE {active} AND name = ?", (record.user_id, now, record.name)  # nosec B608
            ).fetchone():
                raise DuplicateName(
                    f"An active API key named {record.name!r} already exists.", {"field": "name"}
                )
            # bandit B608: SQL from this method's constant clause; every value is a bound parameter.
            (count,) = conn.execute(f"SELECT count(*) FROM api_keys WHERE {active}", (record.user_id, now)).fetchone()  # nosec B608
            if count >= max_active:
                raise KeyLimitReached(
                    f"This account already has {count} active API keys, the most allowed; "
                    "revoke one before minting another.",
                    {"limit": max_active},
                )
            conn.execute(
                "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.user_id, record.name, digest, record.preview, now, record.expires_us),
            )
            _insert_event(conn, event)

    def get_key(self, user_id: str, key_id: str) -> KeyRecord | None:
        """Return the user's key with this id unless it is revoked."""
        with self._conn() as conn:
            # bandit B608: SQL from module constants; every value is a bound parameter.
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608
                "WHERE k.id = ? AND k.user_id = ? AND k.revoked_us IS NULL",
                (key_id, user_id),
            ).fetchone()
        return KeyRecord(*row) if row else None

    def list_keys(self, user_id: str, limit: int, before: tuple[int, str] | None) -> list[KeyRecord]:
        """Return up to `limit` unrevoked keys, newest first, older than the `before` position."""
        # bandit B608: SQL from module constants; every value is a bound parameter.
        sql = f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} WHERE k.user_id = ? AND k.revoked_us IS NULL"  # nosec B608
        with self._conn() as conn:
            return [KeyRecord(*row) for row in _newest_first(conn, sql, [user_id], "k", "api_keys", "created_us", before, limit)]

    def revoke_key(self, user_id: str, key_id: str, now_us: int, event: KeyEvent) -> KeyRecord | None:
        """Revoke the user's key and record the event; None if there is no such unrevoked key."""
        with self._write(durable=True) as conn:
            # bandit B608: SQL from module constants; every value is a bound parameter.
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608
                "WHERE k.id = ? AND k.user_id = ? AND k.revoked_us IS NULL",
                (key_id, user_id),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE api_keys SET revoked_us = ? WHERE id = ?", (now_us, key_id))
            # Its counters will never be read again.
            conn.execute("DELETE FROM rate_windows WHERE subject = ?", (f"key:{key_id}",))
            record = KeyRecord(*row)
            _insert_event(conn, event)
        return record

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

    # -- rate limits ----------------------------------------------------------------------

    def consume(self, subject: str, windows: Sequence[Window], now_us: int) -> Consumption:
        """Count one request against every window of `subject` if all have room, atomically.

        `windows` are ordered shortest first. (Keys are counted by `use_key`, which also
        bumps their usage and records refusals.)
        """
        with self._write() as conn:
            return _count(conn, subject, windows, now_us)

    def use_key(
        self, digest: str, now_us: int, admit: Callable[[KeyRecord], Sequence[Window]], request_id: str
    ) -> tuple[KeyRecord, Consumption] | None:
        """Look up the key stored under `digest` and count one request of it, in one transaction.

        `admit` sees the key as stored at this moment (revoked, expired, its account's tier) and
        either raises to refuse it, writing nothing, or returns the windows to count it in.
        None if no key has this digest. One transaction per request, and a key revoked or
        re-tiered in another worker is seen at once.
        """
        with self._write() as conn:
            # bandit B608: SQL from module constants; the digest is a bound parameter.
            row = conn.execute(f"SELECT {_KEY_COLUMNS}, k.digest FROM {_KEY_FROM} WHERE k.digest = ?", (digest,)).fetchone()  # nosec B608
            if row is None or not hmac.compare_digest(row[-1], digest):
                return None
            record = KeyRecord(*row[:-1])
            counted = _count(conn, f"key:{record.id}", admit(record), now_us, record, request_id)
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
    """Count a request in `subject`'s windows inside the caller's write transaction.

    For a `key`, an admitted request also bumps its usage, and the first refusal in a window
    is recorded as a `rate_limited` event.
    """
    stored = {
        kind: (start, count, blocked)
        for kind, start, count, blocked in conn.execute(
            "SELECT window, start, count, blocked FROM rate_windows WHERE subject = ?", (subject,)
        )
    }
    # A request that read the clock just before a boundary may get the lock after one
    # that read it just after: it counts in the newer window, never drags it back.
    windows = [
        w if stored.get(w.kind, (w.start,))[0] <= w.start else Window(w.kind, stored[w.kind][0], w.limit)
        for w in windows
    ]
    counts: dict[str, int] = {}
    blocked_by = None
    for w in windows:
        start, count, _ = stored.get(w.kind, (w.start, 0, 0))
        counts[w.kind] = count if start == w.start else 0
        if counts[w.kind] >= w.limit:
            # Windows come shortest first: the longest exhausted one decides when a
            # retry can succeed, so it is the one that refuses.
            blocked_by = w.kind
    starts = {w.kind: w.start for w in windows}
    if blocked_by is not None:
        w = next(w for w in windows if w.kind == blocked_by)
        first = conn.execute(
            "UPDATE rate_windows SET blocked = 1 WHERE subject = ? AND window = ? AND start = ? "
            "AND blocked = 0",
            (subject, w.kind, w.start),
        ).rowcount == 1
        if first and key is not None:
            _insert_event(conn, KeyEvent.about(key, "rate_limited", request_id, now_us, {"window": w.kind, "limit": w.limit}))
        return Consumption(False, counts, blocked_by, first, starts=starts)
    for w in windows:
        # One row per subject and window kind, overwritten when a new window starts:
        # old windows never pile up.
        conn.execute(
            "INSERT INTO rate_windows (subject, window, start, count, blocked) VALUES (?, ?, ?, 1, 0) "
            "ON CONFLICT(subject, window) DO UPDATE SET "
            "count = CASE WHEN start = excluded.start THEN count + 1 ELSE 1 END, "
            "blocked = CASE WHEN start = excluded.start THEN blocked ELSE 0 END, "
            "start = excluded.start",
            (subject, w.kind, w.start),
        )
        counts[w.kind] += 1
    usage = None
    if key is not None:
        usage = conn.execute(
            "UPDATE api_keys SET total_requests = total_requests + 1, last_used_us = ? WHERE id = ? "
            "RETURNING total_requests, last_used_us",
            (now_us, key.id),
        ).fetchone()
    return Consumption(True, counts, None, False, usage, starts)


def _newest_first(
    conn: sqlite3.Connection, sql: str, params: list[Any], alias: str, table: str, time_column: str,
    before: tuple[int, str] | None, limit: int,
) -> sqlite3.Cursor:
    """Run `sql` as one page of a newest-first listing, after the `before` (time, id) position."""
    if before is not None:
        # Ties in time fall back to insertion order (rowid); a cursor naming no row ends at its time.
        # bandit B608: alias, table and column are literals from this module's callers; values are bound.
        sql += f" AND ({alias}.{time_column}, {alias}.rowid) < (?, (SELECT rowid FROM {table} WHERE id = ?))"  # nosec B608
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
