"""The hot-key limit: admitted requests per second for one account's key, at the store.

Callers (processes, standing for workers of several instances, each with its own
connections) count requests of ONE key with limits that never refuse, 3 s at each of 1, 2,
4, 8 and 16 callers at once; the drills are alternated, for 3 rounds, and medians printed.
Beyond a few callers the rate stops growing: that plateau is the hot-key limit. HTTP is
left out on purpose; it would hide the store behind the app's CPU cost.

Drills:
- `admission`: the account's minute and day windows alone (shared by all its keys);
- `key use`: everything the store does for one request of the key: lookup, liveness
  re-check, admission, usage count on the key, in one transaction (`use_key`);
- `unlocked` (Redis only): the script run outside any row lock; shorter locks, but a key
  revoked mid-request is counted, so it shows what giving up that promise would buy.

Backends (`--backend`, default both):
- `postgres`: the windows are rows of `rate_windows`, locked and updated (`PostgresStore`);
- `redis`: the windows are one Redis hash per account, checked and counted by one atomic Lua
  script (`ADMIT` below, the domain's `count_in` rule); the key use still locks the key row
  in PostgreSQL, runs the script while holding it (so a revocation waits, as today), and
  counts the key's usage there, since keys, their usage and their events stay in the store.

    .venv/bin/python bench/hotkey.py [--backend postgres|redis|both] [--rounds N]
                                     [--database-url URL] [--redis-url URL]

Defaults: TEST_DATABASE_URL or the local test database, and redis://127.0.0.1:6379/0. A
fresh schema and a fresh Redis key prefix (`hotkey-bench:...`) are used, and both are
removed afterwards. The results and what was decided from them: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from app.domain import keymaterial
from app.domain.errors import StoreUnavailable
from app.domain.ratelimit import tier_subject
from app.domain.records import KeyEvent, KeyRecord, Window
from app.store.postgres import PostgresStore

SECONDS = 3.0
CALLERS = (1, 2, 4, 8, 16)
WINDOWS = [Window("minute", 0, 10**12), Window("day", 0, 10**12)]

# The domain's `count_in` rule over one subject's windows (shortest first), atomically in Redis.
# KEYS[1]: the subject's hash (fields KIND:s start, KIND:c count, KIND:b refused once).
# ARGV: ttl seconds, then kind, start, limit for each window.
# Returns {allowed, blocked window index or 0, first refusal, then count and start per window}.
ADMIT = """
local key, ttl = KEYS[1], tonumber(ARGV[1])
local n = (#ARGV - 1) / 3
local kinds, starts, limits, counts, held_starts, held_blocked = {}, {}, {}, {}, {}, {}
local blocked = 0
for i = 1, n do
  local kind = ARGV[3 * i - 1]
  local start, limit = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local held = redis.call('HMGET', key, kind .. ':s', kind .. ':c', kind .. ':b')
  local held_start = tonumber(held[1])
  if held_start and held_start > start then start = held_start end
  local count = 0
  if held_start == start then count = tonumber(held[2]) end
  kinds[i], starts[i], limits[i], counts[i] = kind, start, limit, count
  held_starts[i], held_blocked[i] = held_start, held[3] == '1'
  if count >= limit then blocked = i end
end
local out = {}
if blocked > 0 then
  local first = 1
  if held_starts[blocked] == starts[blocked] then
    if held_blocked[blocked] then first = 0 else redis.call('HSET', key, kinds[blocked] .. ':b', '1') end
  end
  out = {0, blocked, first}
else
  local fields = {}
  for i = 1, n do
    counts[i] = counts[i] + 1
    local refused = '0'
    if held_starts[i] == starts[i] and held_blocked[i] then refused = '1' end
    table.insert(fields, kinds[i] .. ':s'); table.insert(fields, starts[i])
    table.insert(fields, kinds[i] .. ':c'); table.insert(fields, counts[i])
    table.insert(fields, kinds[i] .. ':b'); table.insert(fields, refused)
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('EXPIRE', key, ttl)
  out = {1, 0, 0}
end
for i = 1, n do table.insert(out, counts[i]); table.insert(out, starts[i]) end
return out
"""


DRILLS = {
    "postgres": ("admission", "key use"),
    "redis": ("admission", "key use", "unlocked"),
}


def make_call(backend: str, drill: str, ctx: dict[str, str]) -> tuple[Callable[[], object], Callable[[], None]]:
    """One caller's connection(s) and the request it repeats, made in the caller's own process."""
    store = PostgresStore(ctx["url"], schema=ctx["schema"], pool_size=1, migrate=False)
    digest, subject = ctx["digest"], tier_subject("hot")
    if backend == "postgres":
        if drill == "admission":
            return (lambda: store.consume(subject, WINDOWS, 1)), store.close
        return (lambda: store.use_key(digest, 1, lambda r: WINDOWS, "req_bench")), store.close

    import redis

    client = redis.Redis.from_url(ctx["redis_url"], socket_timeout=5, socket_connect_timeout=2)
    script = client.register_script(ADMIT)
    argv = [86_400 + 60] + [v for w in WINDOWS for v in (w.kind, w.start, w.limit)]

    def admit(subject: str) -> list[int]:
        return script(keys=[ctx["prefix"] + subject], args=argv)

    def use(locked: bool) -> None:
        # Locked: what use_key would do with the windows in Redis: the key row locked (a
        # revocation waits), the script run, then the key's usage counted, all before the
        # commit. Unlocked: the key read, the script run, the usage counted only if the key is
        # still live, each on its own; shorter locks, but a key revoked between the read and
        # the count has been counted in the account's windows all the same.
        with store._write(durable=False) if locked else store._conn() as conn:
            lock = " FOR NO KEY UPDATE OF k" if locked else ""
            row = conn.execute(  # the tier too, which names the limits
                "SELECT k.id, k.user_id, a.tier FROM api_keys k JOIN accounts a ON a.user_id = k.user_id "
                f"WHERE k.digest = %s{lock}",
                (digest,),
            ).fetchone()
            assert row is not None
            if admit(tier_subject(row[1]))[0] == 1:
                live = "" if locked else " AND revoked_us IS NULL"
                conn.execute(
                    "UPDATE api_keys SET total_requests = total_requests + 1, last_used_us = %s "
                    f"WHERE id = %s{live} RETURNING total_requests, last_used_us",
                    (1, row[0]),
                ).fetchone()

    def close() -> None:
        client.close()
        store.close()

    return {"admission": lambda: admit(subject), "key use": lambda: use(True), "unlocked": lambda: use(False)}[
        drill
    ], close


def caller(backend: str, drill: str, ctx: dict[str, str], ready: Any, go: Any, out: Any) -> None:
    """One caller (a worker of some instance): repeat the request for SECONDS once every caller is ready."""
    call, close = make_call(backend, drill, ctx)
    call()  # connected and warm before the clock starts
    ready.put(True)
    go.wait()
    stop = time.monotonic() + SECONDS
    done = errors = 0
    while time.monotonic() < stop:
        try:
            call()
        except StoreUnavailable:  # a 503 in the service: deadlock, lock or statement timeout
            errors += 1
        else:
            done += 1
    close()
    out.put((done, errors))


def run(backend: str, drill: str, ctx: dict[str, str], callers: int) -> tuple[float, int]:
    """Admitted requests per second (and errors) with `callers` processes at once."""
    context = multiprocessing.get_context("fork")
    ready, out, go = context.Queue(), context.Queue(), context.Event()
    procs = [context.Process(target=caller, args=(backend, drill, ctx, ready, go, out)) for _ in range(callers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return sum(done for done, _ in results) / SECONDS, sum(errors for _, errors in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("postgres", "redis", "both"), default="both")
    parser.add_argument(
        "--database-url", default=os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, drills alternated in each; medians shown")
    args = parser.parse_args()
    url = args.database_url
    backends = ("postgres", "redis") if args.backend == "both" else (args.backend,)
    if "redis" in backends:
        import redis  # noqa: F401 -- imported once here, not in every forked caller
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    prefix = f"hotkey-bench:{uuid.uuid4().hex[:12]}:"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        store = PostgresStore(url, schema=schema, pool_size=2)
        store.ensure_account("hot", 0)
        record = KeyRecord(str(uuid.uuid4()), "hot", "hot-key", "sk_live_Ab12••••••••", "free", 0, None, None, 0, None)
        digest = keymaterial.digest(keymaterial.generate())
        store.insert_key(record, digest, 50, KeyEvent.about(record, "minted", "req_bench", 0))
        store.close()
        ctx = {"url": url, "schema": schema, "digest": digest, "redis_url": args.redis_url, "prefix": prefix}
        drills = [(b, d) for b in backends for d in DRILLS[b]]
        rates: dict[tuple[str, str, int], list[float]] = {}
        before = redis_script_time(args.redis_url) if "redis" in backends else (0, 0)
        for round_ in range(1, args.rounds + 1):
            for callers in CALLERS:
                for backend, drill in drills:
                    rate, errors = run(backend, drill, ctx, callers)
                    rates.setdefault((backend, drill, callers), []).append(rate)
                    print(
                        f"round {round_}  {backend:8s} {drill:9s} {callers:2d} callers: {rate:7.0f} admitted/s"
                        + (f", {errors} errors (503)" if errors else ""),
                        flush=True,
                    )
        if "redis" in backends:
            calls, usec = redis_script_time(args.redis_url)
            print(f"\nRedis server time per admission script: {(usec - before[1]) / max(1, calls - before[0]):.1f} µs")
        print("\nadmitted requests/s, median of the rounds (lowest-highest):\n")
        print("| callers | " + " | ".join(f"{b}: {d}" for b, d in drills) + " |")
        print("|---:|" + "---:|" * len(drills))
        for callers in CALLERS:
            cells = []
            for backend, drill in drills:
                seen = sorted(rates[(backend, drill, callers)])
                cells.append(f"{statistics.median(seen):,.0f} ({seen[0]:,.0f}-{seen[-1]:,.0f})")
            print(f"| {callers} | " + " | ".join(cells) + " |")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        if "redis" in backends:
            import redis

            with redis.Redis.from_url(args.redis_url, socket_timeout=5) as client:
                for key in client.scan_iter(match=prefix + "*"):
                    client.delete(key)


def redis_script_time(redis_url: str) -> tuple[int, int]:
    """The Redis server's EVALSHA calls and microseconds spent in them so far (INFO commandstats).

    The difference over the drills is this bench's alone if nobody else runs scripts meanwhile.
    """
    import redis

    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


if __name__ == "__main__":
    main()
