"""How long revoked and expired keys and key events are kept, and the sweep that deletes them after.

A key that stopped working (revoked, or expired: for a rolled key, the end of its grace
period) is kept for the retention period after that, then deleted: until then it is listed
with `include_revoked=true` and answers `revoked_api_key` or `expired_api_key`, after that it
is an unknown key. A key event is kept for the retention period after it occurred. So what
an account keeps is bounded by what it can do within one retention period, whatever its age.

The sweep deletes in batches, each one short transaction, with a pause between them, so that
requests waiting to write (on SQLite, every request) wait for one batch at most.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app.domain.errors import StoreUnavailable
from app.domain.store import Store

DAY_US = 86_400 * 1_000_000
DEFAULT_RETENTION_DAYS = 90
BATCH_ROWS = 500  # rows deleted per transaction
PAUSE_S = 0.05  # between two batches: other writers go first
SWEEP_INTERVAL_S = 3600.0
# After a sweep the store could not answer (locked, read-only, unreachable): sooner than the next hour.
RETRY_INTERVAL_S = 60.0

log = logging.getLogger(__name__)


def cutoff_us(now_us: int, retention_days: int) -> int:
    """The time before which a key that stopped working, or an event, is past retention."""
    return now_us - retention_days * DAY_US


def prune(
    store: Store,
    now_us: int,
    retention_days: int,
    batch: int = BATCH_ROWS,
    pause: Callable[[], bool] = lambda: True,
) -> tuple[int, int]:
    """Delete every key and event past retention, `batch` rows a transaction; return (keys, events).

    `pause` runs between two batches and ends the sweep early by returning False.
    """
    before = cutoff_us(now_us, retention_days)
    keys = events = 0
    while True:
        batch_keys, batch_events = store.prune(before, batch)
        keys, events = keys + batch_keys, events + batch_events
        if batch_keys + batch_events < batch or not pause():
            return keys, events


class RetentionSweeper:
    """Prune from a daemon thread of this process: at once, then every `interval` seconds.

    Every worker runs one; sweeps that overlap find less to delete, and on PostgreSQL skip
    the rows another is deleting. A store that cannot answer is tried again at the next sweep.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        retention_days: int,
        interval: float = SWEEP_INTERVAL_S,
        retry_interval: float = RETRY_INTERVAL_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._days = retention_days
        self._interval = interval
        self._retry_interval = min(retry_interval, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention-sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._interval
            try:
                keys, events = prune(
                    self._store,
                    int(self._clock() * 1_000_000),
                    self._days,
                    pause=lambda: not self._stop.wait(PAUSE_S),
                )
                if keys or events:
                    log.info(
                        "retention: deleted %d keys and %d key events older than %d days", keys, events, self._days
                    )
            except StoreUnavailable:
                wait = self._retry_interval
                log.warning("retention: the store was unavailable; the sweep is tried again in %.0f s", wait)
            except Exception:  # a sweep that fails must not end the thread, nor the worker
                log.exception("retention: the sweep failed; tried again in %.0f s", wait)
            self._stop.wait(wait)

    def stop(self) -> None:
        """End the sweeps (after the batch in progress, if any) and wait for the thread."""
        self._stop.set()
        self._thread.join()
