"""`make bench BENCH=core`: the store's hot paths in SQLAlchemy Core (bench/corestore.py) against the shipped store.

The figures the requirement "SQLAlchemy Core first; a dialect of our own only if Core costs
more than 5% of whoami or mint throughput" asks for, measured in one window:

- HTTP: three production servers on SQLite, each `python -m app serve` with one worker pinned
  to CPU 1 (as `make bench-ab` runs them): the shipped store; `CoreStore`, its statements built
  per call as Core code is usually written; `PrebuiltCoreStore`, its statements built once
  (`python -m bench.coreserve`: the same command, the same gunicorn configuration, the app
  built with the Core store). wrk on CPU 0 alternates whoami (pro keys, never refused) and mint
  between them, workload by workload, for ROUNDS rounds after a warm-up: medians, ranges, and
  each Core store against the shipped one.
- In process: microseconds per `use_key` and per `insert_key` call of each store on its own
  file (wall time, and CPU time, which leaves out waiting for the disk), the stores alternated
  in blocks of calls, ROUNDS rounds: medians.

    bench/run.py core    this part (`make bench BENCH=core`); rewrites only its section of bench/RESULTS.md

BENCH_ROUNDS and BENCH_SECONDS shorten a run (a smoke run: BENCH_ROUNDS=1 BENCH_SECONDS=2).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run as bench  # noqa: E402

HEADING = "## SQLAlchemy Core against the store's own dialect"
WORKLOADS = ("whoami", "mint")
STORES = ("shipped", "core", "core-once")
LABELS = {"shipped": "shipped store (own dialect)", "core": "Core, statements built per call",
          "core-once": "Core, statements built once"}
USE_CALLS = 3000  # use_key calls per store per round, in process
INSERT_CALLS = 500  # insert_key calls per store per round (each a durable commit)
BLOCKS = 5  # each round's calls in this many blocks, the stores alternated block by block


def servers() -> dict[str, bench.Target]:
    """The shipped server and the Core ones: the same environment, the same pinning, one worker each."""
    targets = {name: bench.ours(name, 1, bench.OUT / f"core-{name}.db", "1") for name in STORES}
    for name, statements in (("core", "per-call"), ("core-once", "once")):
        targets[name].argv = [sys.executable, "-m", "bench.coreserve"]
        targets[name].env["BENCH_CORE_STATEMENTS"] = statements
    return targets


def http_part() -> dict[tuple[str, str], list[dict]]:
    targets = servers()
    for target in targets.values():
        assert target.db is not None
        for old in bench.OUT.glob(f"{target.db.name}*"):
            old.unlink()
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        for target in targets.values():
            target.start()
            bench.prepare(target, "warm")
            print(f"{target.name}: up on {target.base}", flush=True)
        for round_ in range(bench.ROUNDS):
            for workload in WORKLOADS:
                for name in STORES if round_ % 2 == 0 else reversed(STORES):
                    target = targets[name]
                    bench.prepare(target, f"r{round_}-{workload}")
                    bench.wrk(target, workload, bench.WARMUP)
                    result = bench.wrk(target, workload, bench.DURATION)
                    runs.setdefault((name, workload), []).append(result)
                    print(f"round {round_ + 1} {workload:6} {name:9} {result['rps']:8.0f} req/s  "
                          f"p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  "
                          f"CPU {result['cpu_ms_per_req']:.3f} ms/req  "
                          f"errors {result['errors'] + result['status_errors']}", flush=True)
    finally:
        for target in targets.values():
            target.stop()
    return runs


# -- in process -----------------------------------------------------------------------------


def timed(calls: list[Callable[[], Any]]) -> tuple[float, float]:
    """Run `calls`; return microseconds per call, wall and CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    for call in calls:
        call()
    n = len(calls)
    return (time.perf_counter() - wall) * 1e6 / n, (time.process_time() - cpu) * 1e6 / n


def in_process_part() -> dict[tuple[str, str], list[tuple[float, float]]]:
    """µs per use_key and per insert_key call of each store, alternated in blocks; one figure per block."""
    from app.domain import keymaterial
    from app.domain.keys import KeyService
    from app.domain.ratelimit import Limits, RateLimiter
    from app.domain.records import KeyEvent, KeyRecord
    from app.domain.tiers import get_tier
    from app.store import SQLiteStore
    from bench.corestore import CoreStore, PrebuiltCoreStore

    stores: dict[str, SQLiteStore] = {}
    digests: dict[str, list[str]] = {}
    for name, kind in zip(STORES, (SQLiteStore, CoreStore, PrebuiltCoreStore), strict=True):
        path = bench.OUT / f"core-inprocess-{name}.db"
        for old in bench.OUT.glob(f"{path.name}*"):
            old.unlink()
        store = stores[name] = kind(path)
        store.checkpoint_in_background()  # as each worker runs it
        keys = KeyService(store, time.time)
        digests[name] = []
        for i in range(bench.PRO_KEYS):  # pro keys, one per account, as the HTTP whoami uses
            owner = f"inprocess-{i}"
            keys.set_tier(owner, "pro")
            secret = keys.mint(owner, "whoami", None, "seed").secret
            digests[name].append(keymaterial.digest(secret))
    pro = get_tier("pro")

    def use_calls(name: str, count: int, offset: int) -> list[Callable[[], Any]]:
        store, found = stores[name], digests[name]

        def use(digest: str) -> Any:
            now = time.time()
            windows = RateLimiter.windows(Limits(pro.per_minute, pro.per_day), now)
            used = store.use_key(digest, int(now * 1e6), lambda record: windows, "bench")
            assert used is not None and used[1].allowed
            return used

        return [partial(use, found[(offset + i) % len(found)]) for i in range(count)]

    def insert_calls(name: str, count: int, tag: str) -> list[Callable[[], Any]]:
        """New keys for accounts of their own (none near the cap), records and events built beforehand."""
        store, calls = stores[name], []
        for i in range(count):
            now = int(time.time() * 1e6)
            record = KeyRecord(id=str(uuid.uuid4()), user_id=f"minter-{i % 250}", name=f"k-{tag}-{i}",
                               preview="sk_live_0000••••••••", tier="free", created_us=now, expires_us=None,
                               revoked_us=None, total_requests=0, last_used_us=None)
            digest = uuid.uuid4().hex * 2
            event = KeyEvent.about(record, "minted", "bench", now, {})
            calls.append(partial(store.insert_key, record, digest, 50, event))
        return calls

    per_block = {"use_key": USE_CALLS // BLOCKS, "insert_key": INSERT_CALLS // BLOCKS}
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for name in stores:  # a warm-up: connections opened, statements compiled and cached
            timed(use_calls(name, 200, 0))
            timed(insert_calls(name, 20, "warm"))
        for round_ in range(bench.ROUNDS):
            for block in range(BLOCKS):
                for name in STORES if (round_ * BLOCKS + block) % 2 == 0 else reversed(STORES):
                    offset = (round_ * BLOCKS + block) * per_block["use_key"]
                    figures.setdefault((name, "use_key"), []).append(
                        timed(use_calls(name, per_block["use_key"], offset)))
                    figures.setdefault((name, "insert_key"), []).append(
                        timed(insert_calls(name, per_block["insert_key"], f"r{round_}b{block}")))
            for call in ("use_key", "insert_key"):
                print(f"round {round_ + 1} {call:10} " + "  ".join(
                    f"{name} {statistics.median(w for w, _ in figures[(name, call)][-BLOCKS:]):7.1f} µs "
                    f"(CPU {statistics.median(c for _, c in figures[(name, call)][-BLOCKS:]):6.1f})"
                    for name in stores), flush=True)
    finally:
        for store in stores.values():
            store.close()
    return figures


# -- the report -----------------------------------------------------------------------------


def report(runs: dict[tuple[str, str], list[dict]], calls: dict[tuple[str, str], list[tuple[float, float]]]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    import sqlalchemy

    lines = [
        HEADING,
        "",
        f"Commit `{commit}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; SQLAlchemy {sqlalchemy.__version__}. "
        "The shipped store (each query written once and compiled at start-up into SQLite's text, run on the "
        "sqlite3 driver) against the same store with its whoami and mint paths in SQLAlchemy Core "
        "(bench/corestore.py: Table metadata, select/insert/update, the SQLite dialect's ON CONFLICT, "
        "with_for_update, an Engine with its pool and compiled cache; the same file, PRAGMAs, writer lock, "
        "transactions and durable commits; tests/test_bench_core.py holds its answers and rows to the shipped "
        "store's), written two ways: each statement built where it runs, with its values, as Core code is "
        "usually written; and each built once with bindparams, its values given at execution. "
        f"Each is `python -m app serve` with 1 worker on CPU 1; wrk, 1 thread on CPU 0, {bench.CONNECTIONS} "
        f"connections, {bench.DURATION} s runs after a {bench.WARMUP} s warm-up, the three servers alternated, "
        f"{bench.ROUNDS} rounds: medians (lowest-highest).",
        "",
        "| workload | store | req/s | p50 ms | p99 ms | errors | CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        for name in STORES:
            r = runs[(name, workload)]
            rps = [x["rps"] for x in r]
            lines.append(
                f"| {workload} | {LABELS[name]} | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                f"{bench.median(r, 'p50_us') / 1000:.2f} | {bench.median(r, 'p99_us') / 1000:.2f} | "
                f"{sum(x['errors'] + x['status_errors'] for x in r)} | {bench.median(r, 'cpu_ms_per_req'):.3f} |"
            )
    lines += ["", "| workload | Core store | Core/shipped req/s | Core's cost in throughput | Core/shipped CPU per request |",
              "|---|---|---:|---:|---:|"]
    for workload in WORKLOADS:
        for name in STORES[1:]:
            ratio = bench.median(runs[(name, workload)], "rps") / bench.median(runs[("shipped", workload)], "rps")
            cpu = (bench.median(runs[(name, workload)], "cpu_ms_per_req")
                   / bench.median(runs[("shipped", workload)], "cpu_ms_per_req"))
            lines.append(f"| {workload} | {LABELS[name]} | {ratio:.3f} | {(1 - ratio) * 100:.1f}% | {cpu:.3f} |")
    blocks = len(calls[("shipped", "use_key")])
    lines += [
        "",
        f"In process, the store alone (no HTTP): microseconds per call, the stores alternated in {blocks} blocks "
        f"of {USE_CALLS // BLOCKS} `use_key` calls (pro keys, each counted and its usage bumped) and "
        f"{INSERT_CALLS // BLOCKS} `insert_key` calls (a durable commit each): medians of the blocks. CPU time "
        "leaves out the wait for the disk.",
        "",
        "| call | store | µs per call | /shipped | CPU µs per call | /shipped |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for call in ("use_key", "insert_key"):
        wall = {n: statistics.median(w for w, _ in calls[(n, call)]) for n in STORES}
        cpu = {n: statistics.median(c for _, c in calls[(n, call)]) for n in STORES}
        for n in STORES:
            lines.append(f"| `{call}` | {LABELS[n]} | {wall[n]:.1f} | {wall[n] / wall['shipped']:.3f} | "
                         f"{cpu[n]:.1f} | {cpu[n] / cpu['shipped']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        raise SystemExit("bench/core.py needs SQLAlchemy, a development dependency: run `make install`") from None
    bench.OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        runs = http_part()
        calls = in_process_part()
    finally:
        for script in bench.OUT.glob("*.lua"):
            script.unlink()  # they hold the run's session tokens and API keys
    section = report(runs, calls)
    bench.write_results(section=section)
    print("\n" + section)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
