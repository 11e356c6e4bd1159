"""Readiness: whether the key store answers, checked at most once a second per process."""

from __future__ import annotations

import threading
from collections.abc import Callable

from app.domain.errors import StoreUnavailable
from app.domain.store import Store

READY_TIMEOUT_S = 1.0  # the longest a check may take before the store counts as unavailable
READY_CACHE_S = 1.0  # how long a check's outcome answers the probes that follow it


class Readiness:
    """The store's readiness, checked at most once every `cache_s` seconds and remembered meanwhile.

    `/readyz` is unauthenticated and may be called as often as anyone likes: repeated probes
    are answered from the last check (its failure included) rather than each costing the store
    a query. While a check is under way, other probes answer from the check before it.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        cache_s: float = READY_CACHE_S,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache_s = cache_s
        self._timeout_s = timeout_s
        self._checking = threading.Lock()
        self._checked_at: float | None = None
        self._failure: StoreUnavailable | None = None

    def check(self) -> None:
        """Raise StoreUnavailable unless the store answered its latest check."""
        if not self._fresh() and self._checking.acquire(blocking=self._checked_at is None):
            try:
                if not self._fresh():  # another thread may have checked while this one waited
                    self._failure = self._check_store()
                    self._checked_at = self._clock()
            finally:
                self._checking.release()
        failure = self._failure
        if failure is not None:
            raise StoreUnavailable(failure.message, failure.details)  # a new one: each answer its own traceback

    def _fresh(self) -> bool:
        # A clock that went back (the wall clock set back) makes the last check stale, not eternal.
        return self._checked_at is not None and 0 <= self._clock() - self._checked_at < self._cache_s

    def _check_store(self) -> StoreUnavailable | None:
        try:
            self._store.check_ready(self._timeout_s)
        except StoreUnavailable as error:
            return error
        return None
