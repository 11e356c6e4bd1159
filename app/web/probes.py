"""Readiness: whether the key store accepts a write now, within a short bound."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from app.domain.errors import StoreUnavailable
from app.domain.store import Store

READY_TIMEOUT_S = 1.0


def check_ready(store: Store, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Raise StoreUnavailable unless the store takes and releases its write lock within `timeout_s`."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readiness")
    try:
        # The store's own wait (up to its busy timeout) goes on in the thread; the probe
        # answers at the bound.
        pool.submit(store.check_write).result(timeout=timeout_s)
    except FutureTimeout:
        raise StoreUnavailable(
            f"The key store did not accept a write within {timeout_s:g} s.", {"timeout_seconds": timeout_s}
        ) from None
    finally:
        pool.shutdown(wait=False)
