"""The store on SQLite: what differs from PostgreSQL, for the one store in `app.store.sql`.

Accounts, keys, key events and rate-limit windows in one file. Write transactions start with
`BEGIN IMMEDIATE`, one writer at a time across worker processes (`WriterLock`), so SQLite needs
no row locks. Every write commits at `synchronous = NORMAL`; a durable one returns once its log
is synced (`LogSync`: group commit), after the write lock is let go, or, inside
`writer.syncs_deferred` (a web request, `app.web.durable`), numbers the sync its answer must
wait for. SQLite's faults that mean
the store cannot answer now (busy, locked, read-only, full, failing disk) are `StoreUnavailable`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from app.domain.errors import ServiceError, StoreUnavailable
from app.store import migrations
from app.store.errors import DatabaseMissing, Migrated, StoreStartError
from app.store.sql import SQLStore
from app.store.writer import (
    CHECKPOINT_INTERVAL_S,
    Checkpointer,
    LogSync,
    WriterLock,
    make_durable,
    relied_on,
    result_code,
)

BUSY_TIMEOUT_MS = 5000
SCHEMA_VERSION = migrations.SCHEMA_VERSION
# SQLite's primary result codes for a store that cannot answer now, as opposed to a fault in
# the code (a bad query, a broken constraint): busy or locked past the timeout, read-only,
# out of space, or an I/O error from the disk. These answer 503; anything else is a 500.
UNAVAILABLE_CODES = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
})


def _unavailable(error: sqlite3.OperationalError) -> bool:
    return result_code(error) in UNAVAILABLE_CODES


# A write that failed so says the files cannot be written (unlike busy or locked, which pass):
# the readiness check's `details.reason` until one succeeds.
UNWRITABLE = {
    sqlite3.SQLITE_READONLY: "read_only", sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error", sqlite3.SQLITE_CANTOPEN: "io_error",
}


def _unwritable(error: sqlite3.OperationalError) -> str | None:
    return UNWRITABLE.get(result_code(error))


class SQLiteStore(SQLStore):
    """A Store on one SQLite file (or one open connection), safe across threads and processes."""

    DIALECT: ClassVar[dict[str, str]] = {
        "param": "?", "lock_row": "", "lock_key": "", "skip_locked": "", "seq": "rowid",
    }

    def __init__(self, database: str | Path | sqlite3.Connection, create: bool = True) -> None:
        """Open (with `create`, create if missing) and migrate the database.

        StoreStartError, in one line, when the path cannot serve: missing and not to be
        created, a directory, not SQLite, unopenable, or a newer schema (SchemaTooNew).
        """
        super().__init__()
        self._shared: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._writer: WriterLock | None = None
        self._local = threading.local()
        self._checkpointer: Checkpointer | None = None
        self._probe: sqlite3.Connection | None = None  # readiness checks' own connection
        self._probe_lock = threading.Lock()
        # Why the last write failed, if the files could not be written, until one succeeds (`_found_unwritable`).
        self._unwritable: str | None = None
        if isinstance(database, sqlite3.Connection):
            self._shared = database
            self._path: Path | None = None
            file = next((row[2] for row in database.execute("PRAGMA database_list") if row[1] == "main"), "")
        else:
            self._path = Path(database)
            file = os.path.realpath(self._path)  # where SQLite keeps it, and its log beside it
            try:
                self._prepare_file(create)
                self._writer = WriterLock(self._path.with_name(self._path.name + ".write-lock"), BUSY_TIMEOUT_MS / 1000)
            except OSError as error:
                raise StoreStartError(f"cannot open the SQLite database {self._path}: {error.strerror}") from None
        # Durable writes are synced through the log; an in-memory database has nothing to sync.
        self._log_sync: LogSync | None = LogSync(Path(file + "-wal"), lambda: self._checkpoint_all()) if file else None
        # One writer at a time: the store's lock with a shared connection, else the WriterLock.
        self._turn: threading.RLock | WriterLock = self._lock if self._writer is None else self._writer
        try:
            self.migrated = self.migrate()
            with self._conn() as conn:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    # A rollback journal (a filesystem without write-ahead logging, or a connection
                    # handed over in that mode): each commit syncs the database itself, even at
                    # NORMAL, and there is no log to sync.
                    self._log_sync = None
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

    def _connection(self) -> sqlite3.Connection:
        """The shared connection, or this thread's, opened on first use."""
        if self._shared is not None:
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    def _discardable(self, conn: sqlite3.Connection) -> bool:
        """Whether `conn` is this thread's connection still (not the shared one, not discarded)."""
        return conn is not self._shared and getattr(self._local, "conn", None) is conn

    def _discard(self, conn: sqlite3.Connection) -> None:
        """Close this thread's connection, left in a state no later write should meet; the next
        use opens another. (A connection handed to the store is the caller's: kept.)"""
        if self._discardable(conn):
            self._local.conn = None
            conn.close()  # an open transaction is rolled back with it

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        try:
            if self._shared is not None:
                with self._lock:
                    yield self._shared
                return
            yield self._connection()
        except sqlite3.OperationalError as error:
            if _unavailable(error):
                raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.") from error
            raise

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Wait for this process's turn to write (see `app.store.writer`)."""
        self._turn.acquire()
        try:
            yield
        finally:
            self._turn.release()

    @contextmanager
    def _write(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """Run a write transaction that takes the database's write lock up front; `durable`: on disk before it is answered.

        One writer at a time: the store's lock with a shared connection, else this process's
        turn on the `WriterLock`. Every write commits at `synchronous = NORMAL`; a durable one
        then, after the write lock is let go and unless it changed no row, has the log synced
        (`LogSync`: group commit) before it returns, or, inside `syncs_deferred`, numbers the
        sync the request's answer waits for (`writer.make_durable`); one that committed nothing
        (no row changed, or the domain refused) there waits for a sync of what it found
        (`writer.relied_on`). A connection that cannot be rolled back is discarded
        (`_discard`). (`_conn` and `_writer_turn` written out in one generator: every counted
        request writes here.)

        Committed at FULL, a durable write held the write lock through its sync, so two
        workers minting synced one after the other; synced after the lock is let go, the
        other worker commits meanwhile and the two syncs overlap (README, "Performance").
        """
        conn = None
        changed = False
        try:
            conn = self._connection()
            turn = self._turn
            turn.acquire()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = conn.total_changes
                    yield conn
                    changed = conn.total_changes != before
                    conn.execute("COMMIT")
                    if self._unwritable:
                        self._unwritable = None
                finally:
                    if conn.in_transaction:  # an error, or a COMMIT that failed
                        self._roll_back(conn)
            finally:
                turn.release()
        except sqlite3.OperationalError as error:
            if reason := _unwritable(error):
                if conn is not None and reason == "read_only":
                    # Opened while the file could not be written, a connection stays read-only
                    # after it can be again: the next write opens another.
                    self._discard(conn)
                self._found_unwritable(reason)
            if _unavailable(error):
                raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.") from error
            raise
        except ServiceError as refusal:  # the domain refused, by what it found (a name taken, the key cap)
            if durable and not isinstance(refusal, StoreUnavailable):
                self._after_durable_write(changed=False)
            raise
        if durable:
            self._after_durable_write(changed)

    def _found_unwritable(self, reason: str) -> None:
        """A write failed because the files cannot be written (read-only, full, an I/O error).

        Until a write succeeds, the readiness check tries one itself and answers not ready
        while it fails (`check_ready`). And the process lets go of what would keep it
        read-only: SQLite shares one map of the log's index (`-shm`) between a process's
        connections to a file, made read-only if the file could not be written when the first
        of them opened it, and kept as long as any of them is open. So the readiness check's
        connection is closed here (the writer's was discarded, and the checkpointer closes
        its own on its failure): once the files can be written, the next connection maps the
        index writable, and the worker writes again.
        """
        self._unwritable = reason
        if self._probe_lock.acquire(blocking=False):  # a check under way closes it itself
            try:
                self._close_probe()
            finally:
                self._probe_lock.release()

    def _close_probe(self) -> None:
        """Under the probe lock: close the readiness check's connection, if open (the next check opens another)."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _after_durable_write(self, changed: bool) -> None:
        """Sync what a durable write committed (`make_durable`), or, if nothing, what it found (`relied_on`)."""
        if self._log_sync is not None:
            (make_durable if changed else relied_on)(self._log_sync)

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """Roll back after an error (the body's, or COMMIT's), which goes on as the write's outcome.

        A ROLLBACK that fails discards the connection (closing it rolls back): left inside its
        transaction, it would refuse every later BEGIN. A connection handed to the store cannot
        be discarded, so there the ROLLBACK's error is raised.
        """
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            if conn is self._shared:
                raise
            self._discard(conn)

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
        if self._log_sync is not None:
            self._log_sync.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        with self._probe_lock:
            self._close_probe()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> Migrated:
        """Create or upgrade the schema; safe when several workers start at once. Says what it found and left.

        A database already at this version is only read: a worker (re)started while the file
        cannot be written starts, answers 503 to writes, and writes again once it can, instead
        of failing to start (which stops gunicorn's whole server).
        """
        if self.schema_version() == SCHEMA_VERSION:
            return Migrated(SCHEMA_VERSION, SCHEMA_VERSION)
        with self._write(durable=True) as conn:
            return migrations.migrate(conn)

    def check_ready(self, timeout_s: float) -> None:
        """Read the database within `timeout_s`, never waiting for the write lock; StoreUnavailable if it cannot.

        A read in WAL mode goes on beside a writer, so a held write lock does not hold it up.
        It runs on a connection of its own, kept open, with `timeout_s` as its busy timeout.
        After a write found the files unwritable, and until one succeeds, it also writes
        (`_check_writable`), and is not ready while that fails (`details.reason`: why).
        """
        if self._shared is not None or self._path is None:
            self.ping()
            return
        if not self._probe_lock.acquire(timeout=timeout_s):
            raise StoreUnavailable("The key store did not answer a read in time.", {"timeout_seconds": timeout_s})
        try:
            if self._unwritable:
                self._check_writable()
            if self._probe is None:
                self._probe = sqlite3.connect(self._path, timeout=timeout_s, isolation_level=None,
                                              check_same_thread=False)
                self._probe.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._probe.execute(self._q["ping"]).fetchall()
        except sqlite3.OperationalError as error:
            if reason := _unwritable(error):
                self._unwritable = reason
                raise StoreUnavailable("The key store's database cannot be written.", {"reason": reason}) from error
            if _unavailable(error):
                raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.") from error
            raise
        finally:
            self._probe_lock.release()

    def _checkpoint_all(self) -> None:
        """Copy the whole log into the database, sync it, and empty the log; raise if that cannot be done now.

        After a failed sync of the log (`LogSync`). On a connection of its own, which waits
        for readers of older snapshots as long as a write waits for the write lock.
        """
        conn = self._open()
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        if busy:
            raise StoreUnavailable("the log could not be copied into the database: readers or a writer held it")

    def _check_writable(self) -> None:
        """Under the probe lock, after a write found the files unwritable: commit a write that changes nothing.

        The schema version, stamped again as it is: a page of the database written to the log
        and its index, as any write does. Never waits for the write lock: a writer holding it
        can write, so the check passes (and tries again next time). On a connection opened
        for this and closed at once (with the readiness check's own closed first), so that
        neither keeps the process's map of the log's index read-only. Raises the connection's
        error while the files still cannot be written.
        """
        assert self._path is not None
        self._close_probe()
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                if result_code(error) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return  # another connection is writing: not this check's to wait for
                raise
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute(f"PRAGMA user_version = {int(version)}")
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        finally:
            conn.close()
        self._unwritable = None

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
