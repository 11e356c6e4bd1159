"""Taking turns to write one SQLite file across processes, syncing and checkpointing its log.

SQLite alone makes a writer that finds the database locked sleep between polls (1, 2, 5,
10 ms and more) even when the holder is done in a tenth of a millisecond; with several
workers, that sleeping, not the writes, set the latency. Writers here queue on an `flock`
beside the database instead. A writer that finds it taken waits in the kernel, which wakes
it the moment the lock is released: no polling, and no CPU spent while waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from app.domain.errors import StoreUnavailable

CHECKPOINT_INTERVAL_S = 0.05
IDLE_CHECKPOINT_INTERVAL_S = 0.25
# Failed log syncs remembered, to answer the requests each was to confirm (they ask at once).
REMEMBERED_FAILURES = 64

log = logging.getLogger(__name__)


def result_code(error: sqlite3.Error) -> int:
    """SQLite's primary result code for `error` (`SQLITE_READONLY`, `SQLITE_BUSY`, ...), 0 if it has none."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF


class Deferred(list[tuple["LogSync", int]]):
    """The syncs a request's answer waits for: (log, ticket) pairs; `closed` once it is answered."""

    closed = False


# The durable writes of the request being handled, when it is answered only after they are
# synced (`syncs_deferred`); None: each durable write is synced before it returns.
_deferred: ContextVar[Deferred | None] = ContextVar("deferred_log_syncs", default=None)


@contextmanager
def syncs_deferred() -> Iterator[Deferred]:
    """Collect, instead of waiting for, the log syncs the durable writes in this block need.

    Each entry is a log and the ticket (`LogSync.ticket`) its sync must cover. The caller
    must not acknowledge any of those writes until every entry is settled. A write made after
    the block (by a thread or task started in it) syncs before it returns, as outside one.
    """
    pending = Deferred()
    token = _deferred.set(pending)
    try:
        yield pending
    finally:
        pending.closed = True
        _deferred.reset(token)


def make_durable(log_sync: LogSync) -> None:
    """After a commit: sync the log now, or, inside `syncs_deferred`, number the sync it needs."""
    if not _defer(log_sync):
        log_sync.sync()


def relied_on(log_sync: LogSync) -> None:
    """After a durable write that committed nothing (it changed no row, or was refused).

    What it found may be another request's commit whose sync is still under way (a name
    taken, the key cap reached, a key already revoked). Inside `syncs_deferred` the answer
    waits for a sync that covers what it saw, as the other request's own answer does; outside,
    nothing waits (a write's answer there is given after its own sync, before this one's).
    """
    _defer(log_sync)


def _defer(log_sync: LogSync) -> bool:
    """Inside an open `syncs_deferred`, number a sync of `log_sync` for the answer to wait for."""
    pending = _deferred.get()
    if pending is None or pending.closed:
        return False
    pending.append((log_sync, log_sync.ticket()))
    return True


@dataclass
class _Turn:
    """One thread's wait for the lock, handed to the waiting thread."""

    granted: threading.Event = field(default_factory=threading.Event)
    guard: threading.Lock = field(default_factory=threading.Lock)
    abandoned: bool = False


class WriterLock:
    """An exclusive lock on `path` shared by every process that opens it, with a timeout.

    `flock` has no timeout of its own, so a contended turn is waited for by one thread of
    this process, blocked in `flock`, while the writer waits on an event with a timeout; a
    writer that gives up (fail-closed: `StoreUnavailable`) leaves its turn abandoned, and the
    lock is released again as soon as it is granted.
    """

    def __init__(self, path: Path, timeout_s: float) -> None:
        self._file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b", buffering=0)
        self._timeout = timeout_s
        self._threads = threading.RLock()  # flock is per open file: this process's threads queue here
        self._turns: queue.SimpleQueue[_Turn | None] = queue.SimpleQueue()
        self._waiter: threading.Thread | None = None
        self._waiter_pid = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block; StoreUnavailable if it is not free within the timeout."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        """Take the lock; StoreUnavailable if it is not free within the timeout. Each acquire, one `release`."""
        if not self._threads.acquire(timeout=self._timeout):
            raise StoreUnavailable("The key store is busy; retry shortly.")
        try:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._wait_for_turn()
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        try:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _wait_for_turn(self) -> None:
        if self._waiter is None or self._waiter_pid != os.getpid():  # none yet, or one left behind by a fork
            self._waiter_pid = os.getpid()
            self._waiter = threading.Thread(target=self._grant_turns, name="sqlite-writer-turns", daemon=True)
            self._waiter.start()
        turn = _Turn()
        self._turns.put(turn)
        if turn.granted.wait(self._timeout):
            return
        with turn.guard:
            if turn.granted.is_set():  # granted just as the wait ended
                return
            turn.abandoned = True
        raise StoreUnavailable("The key store is busy; retry shortly.")

    def _grant_turns(self) -> None:
        while (turn := self._turns.get()) is not None:
            fcntl.flock(self._file, fcntl.LOCK_EX)  # blocks until the holder releases it
            while turn is not None:
                with turn.guard:
                    if not turn.abandoned:
                        turn.granted.set()
                        break
                # Nobody waits for this turn any more: the lock goes to the next turn, if
                # one is queued, or is released, but only while no thread of this process
                # is inside `held` (one may have taken it through the same open file).
                try:
                    turn = self._turns.get_nowait()
                except queue.Empty:
                    with self._threads:
                        fcntl.flock(self._file, fcntl.LOCK_UN)
                    break
            if turn is None:
                return

    def close(self) -> None:
        """Stop the waiting thread, if any, and close the lock file."""
        if self._waiter is not None and self._waiter_pid == os.getpid():
            self._turns.put(None)
            self._waiter.join(timeout=self._timeout)
            self._waiter = None
        self._file.close()


class Checkpointer:
    """Copy SQLite's write-ahead log into the database from a thread of this process.

    Left to itself, SQLite checkpoints inside whichever commit finds the log over 1,000
    pages: that request waits while the whole log is flushed to disk and copied back, once
    every few hundred key checks (measured: 4-5 ms on a 2-core VM's disk; longer on slower
    disks). Here a thread with its own connection checkpoints every `interval` seconds
    instead, less often while nothing is written. The sqlite3 module lets go of the GIL while
    it works, so requests go on meanwhile; the commit-time checkpoint stays as a backstop,
    with little left to do. Start once per process, after any fork.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], interval: float = CHECKPOINT_INTERVAL_S) -> None:
        self._connect = connect
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        failing = False
        wait, last_size = self._interval, None
        try:
            while not self._stop.wait(wait):
                try:
                    if conn is None:
                        conn = self._connect()
                    # PASSIVE: never waits for, nor blocks, readers and writers. A checkpoint
                    # already running in another worker makes this one a no-op.
                    _, size, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    # An idle log is looked at less and less often (waking costs CPU too),
                    # but at least every IDLE_CHECKPOINT_INTERVAL_S, so new writes are
                    # picked up within a quarter of a second.
                    wait = self._interval if size != last_size else min(wait * 2, IDLE_CHECKPOINT_INTERVAL_S)
                    last_size = size
                    failing = False
                except sqlite3.Error as error:
                    if not failing:  # once per run of failures, not every interval
                        log.warning("background WAL checkpoint failed: %s", error)
                    failing = True
                    if conn is not None and result_code(error) == sqlite3.SQLITE_READONLY:
                        # Opened while the file could not be written: kept, it would keep the
                        # process's map of the log's index read-only (`SQLiteStore._found_unwritable`).
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._thread.join()


class LogSync:
    """Group commit: SQLite's write-ahead log synced once for every commit waiting on it.

    A connection at `synchronous = NORMAL` commits into the log without syncing it; once the
    log is synced, every transaction committed into it is on disk, as after a commit at FULL,
    which syncs the same file. So a durable write commits at NORMAL, lets go of the write
    lock, and then calls `sync`, which returns once a sync that began after that commit is
    done. The write lock is not held while the disk works: other writers commit meanwhile,
    and their syncs share the disk's work. In this process, threads that ask while a sync is
    under way wait for it, and then one of them syncs once for all who waited (each of their
    commits came before that sync began); across processes, the filesystem joins syncs that
    overlap into one journal commit. No write waits for another's transaction, only for the
    disk, and a write that fails rolls back alone.

    The log is opened by its real path (SQLite keeps it beside the database's real file, a
    symlink resolved), read-only, and opened again if SQLite replaced it (a log is removed
    only once it has been copied into the database and that synced, and only when the last
    connection closes, never while the writer's is open). The log's directory is synced once
    for each new log file. A sync that fails fails every write it was to confirm
    (`StoreUnavailable`, `details.reason` "unconfirmed": committed, but maybe not on disk).

    A later sync of the same log is not trusted: after a failed write-back, Linux may have
    dropped the pages it could not write and reports the error once per open file, so a sync
    that then succeeds says nothing about them, and SQLite's recovery after a crash stops at
    the first damaged frame of the log, losing every commit after it. So a sync that fails is
    followed at once by `recover`: the whole log copied into the database, the database
    synced, and the log emptied (`PRAGMA wal_checkpoint(TRUNCATE)`), then synced; after that
    the damaged frames are no longer needed. Until a recovery succeeds, no write is confirmed:
    each later sync tries it again first.

    `sync` is `ticket` (numbered after the commit) then `wait` (until a sync that began after
    it is done). A web request splits the two (`syncs_deferred`, `app.web.durable`): its
    writes only take tickets, and its answer waits, off the event loop, for a sync that
    covers them, while the loop handles other requests; `settled` tells it whether one has.
    """

    def __init__(self, log_path: Path, recover: Callable[[], None] | None = None) -> None:
        self._path = log_path
        # Copies the whole log into the database and empties it; raises if it cannot (None: not done).
        self._recover = recover
        self._damaged = False  # a sync failed, and no recovery has succeeded since
        self._state = threading.Condition(threading.Lock())
        self._asked = 0  # requests so far, numbered
        self._done = 0  # every request up to this number was in a sync that has ended
        # The requests of the syncs that failed, as (after, up to) ranges, the latest last: the
        # syncs run one at a time, so each ended sync covered the requests after the one before.
        self._failures: deque[tuple[int, int]] = deque(maxlen=REMEMBERED_FAILURES)
        self._syncing = False
        self._fd = -1
        self._pid = 0

    def sync(self) -> None:
        """Return once everything committed to the log before this call is on disk; StoreUnavailable if it cannot be."""
        self.wait(self.ticket())

    def ticket(self) -> int:
        """Number a request for a sync, made after a commit: any sync that begins from now on covers it."""
        with self._state:
            self._asked += 1
            return self._asked

    def settled(self, ticket: int) -> bool:
        """Whether a sync has covered `ticket` (True), or none yet (False); StoreUnavailable if the one that did failed."""
        with self._state:
            return self._outcome(ticket)

    def wait(self, ticket: int) -> None:
        """Return once a sync that began after `ticket` was numbered is done; StoreUnavailable if it failed."""
        with self._state:
            while self._syncing and self._done < ticket:
                self._state.wait()
            if self._outcome(ticket):
                return
            self._syncing = True
            after, covering = self._done, self._asked  # every request so far committed before this sync begins
            recovering = self._damaged
        try:
            if recovering:
                self._recovered()
                recovering = False
            self._sync()
        except Exception as error:  # noqa: BLE001 - whatever stopped it, the sync did not confirm these writes
            reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
            if not recovering:  # a failed recovery has said so already
                log.warning("syncing the SQLite log %s failed: %s", self._path, reason)
            with self._state:
                self._failures.append((after, covering))
                self._damaged = self._recover is not None
            if not recovering and self._recover is not None:
                # At once, so that the damaged frames are copied while the pages are still in
                # memory (and for the other workers' writes too); these writes stay unconfirmed.
                with contextlib.suppress(Exception):
                    self._recovered()
            raise unconfirmed() from None
        finally:
            with self._state:
                self._done = covering
                self._syncing = False
                self._state.notify_all()

    def _recovered(self) -> None:
        """Recover from a failed sync (see the class); raise if it cannot be done yet."""
        assert self._recover is not None
        try:
            self._recover()
            self._sync()  # the emptied log, as SQLite may leave it unsynced
        except Exception as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
            log.warning("recovering the SQLite log %s after a failed sync failed: %s; writes stay unconfirmed "
                        "until it succeeds", self._path, reason)
            raise
        with self._state:
            self._damaged = False
        log.warning("recovered the SQLite log %s after a failed sync: every commit is in the database, synced",
                    self._path)

    def _outcome(self, ticket: int) -> bool:
        """Under `_state`: `settled`'s answer."""
        if self._done < ticket:
            return False
        if any(after < ticket <= up_to for after, up_to in self._failures):
            raise unconfirmed()
        return True

    def _sync(self) -> None:
        if self._pid != os.getpid():  # a descriptor opened before a fork is the parent's to close
            self._pid, self._fd = os.getpid(), -1
        if self._fd >= 0 and os.fstat(self._fd).st_nlink == 0:  # that log was removed
            os.close(self._fd)
            self._fd = -1
        if self._fd < 0:
            # A log that is not there after a commit in WAL mode means it is not where it is
            # looked for: an error (never a silent success).
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            directory = os.open(self._path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Close the log, if this process opened it, once no sync is under way."""
        with self._state:
            while self._syncing:
                self._state.wait()
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1


def unconfirmed() -> StoreUnavailable:
    """The refusal of a write that was committed but is not known to be on disk (503)."""
    return StoreUnavailable(
        "The key store could not confirm that the change reached the disk; it may have been saved: "
        "check before retrying.", {"reason": "unconfirmed"})
