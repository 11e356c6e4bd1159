"""The hot-key limit: admitted requests per second for one account's key, at the store.

Threads (standing for workers of several instances) each with their own connection count
requests of ONE key through `use_key` with limits that never refuse, for a few seconds.
Every request locks the same key row and the same two rate-window rows, so beyond a few
threads the rate stops growing: that plateau is the hot-key limit. HTTP is left out on
purpose; it would hide the row behind the app's CPU cost.

    .venv/bin/python bench/hotkey.py [DATABASE_URL]   (default: TEST_DATABASE_URL or the local test database)
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from app.domain import keymaterial
from app.domain.records import KeyEvent, KeyRecord, Window
from app.store.postgres import PostgresStore

SECONDS = 4.0
WINDOWS = [Window("minute", 0, 10**12), Window("day", 0, 10**12)]


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        store = PostgresStore(url, schema=schema, pool_size=32)
        store.ensure_account("hot", 0)
        record = KeyRecord(str(uuid.uuid4()), "hot", "hot-key", "sk_live_Ab12••••••••", "free", 0, None, None, 0, None)
        digest = keymaterial.digest(keymaterial.generate())
        store.insert_key(record, digest, 50, KeyEvent.about(record, "minted", "req_bench", 0))
        print("threads  admitted/s  mean ms")
        for threads in (1, 2, 4, 8, 16):
            counts = [0] * threads
            stop = time.monotonic() + SECONDS

            def hammer(n: int, stop: float = stop, counts: list[int] = counts) -> None:
                while time.monotonic() < stop:
                    store.use_key(digest, 1, lambda r: WINDOWS, "req_bench")
                    counts[n] += 1

            workers = [threading.Thread(target=hammer, args=(n,)) for n in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            rate = sum(counts) / SECONDS
            print(f"{threads:7d}  {rate:10.0f}  {1000 * threads / rate:7.2f}")
        store.close()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
