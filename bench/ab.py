"""`make bench-ab REVS="A B"`: this tree against earlier revisions, in one window, under wrk.

On a shared machine two runs minutes apart differ by 15% and more, so a change is judged
against the code before it in the same run: each revision is checked out into a temporary
worktree and served with one production worker (`python -m app serve`, the same .venv),
pinned to CPU 1 (BENCH_WORKERS=2: two workers, unpinned); wrk, on CPU 0, alternates between
them workload by workload for ROUNDS rounds. Medians of req/s, p50, p99 and the server's CPU
per request are printed with each revision's ratio to this tree.
Keys are minted over HTTP and their accounts moved to the pro tier with plain SQL, which
every schema version so far understands.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.domain.sessions import issue_token  # noqa: E402
from bench import run as bench  # noqa: E402
from bench.run import OUT, ROOT, SECRET, Target, post_json, wrk  # noqa: E402

KEYS = 200
# BENCH_WORKLOADS="mint" (space-separated) runs only those.
WORKLOADS = tuple(os.environ.get("BENCH_WORKLOADS", "whoami mint healthz").split())
# BENCH_WORKERS=2 serves each tree with two workers (unpinned) instead of one on CPU 1.
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
# BENCH_DB_DIR=/dev/shm keeps the databases there (a disk whose sync costs nothing) instead of bench/out.
DB_DIR = Path(os.environ.get("BENCH_DB_DIR") or OUT)


class TreeTarget(Target):
    """`python -m app serve` from another checkout."""

    def __init__(self, name: str, tree: Path, db: Path) -> None:
        env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": str(WORKERS),
               "DATABASE_URL": f"sqlite:///{db}", "LOG_LEVEL": "INFO", "CREATE_DATABASE": "on"}
        super().__init__(name, [sys.executable, "-m", "app", "serve"], env, db, "1" if WORKERS == 1 else None)
        self.checkout = tree

    def start(self) -> float:
        original = bench.ROOT
        bench.ROOT = self.checkout  # Target.start runs the server in ROOT
        try:
            return super().start()
        finally:
            bench.ROOT = original


def prepare(target: TreeTarget, tag: str) -> None:
    now = time.time()
    tokens = [issue_token(SECRET, f"ab-{tag}-{target.name}-{i}", now, 7200) for i in range(bench.USERS)]
    (OUT / f"tokens-{target.name}.lua").write_text("tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}\n")
    if not target.keys:
        for i in range(KEYS):
            cookie = "sb-access-token=" + issue_token(SECRET, f"ab-owner-{i}", now, 7200)
            target.keys.append(post_json(target.base + "/api/v1/keys", {"name": f"ab-{i}"}, cookie)["data"]["key"])
        conn = sqlite3.connect(target.db)
        conn.execute("UPDATE accounts SET tier = 'pro' WHERE user_id LIKE 'ab-owner-%'")
        conn.commit()
        conn.close()
    (OUT / f"keys-{target.name}.lua").write_text("keys = {" + ",".join(f'"{k}"' for k in target.keys) + "}\n")


def main(revisions: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rounds = bench.ROUNDS
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        targets = [TreeTarget("this", ROOT, DB_DIR / "ab-this.db")]
        for revision in revisions:
            tree = Path(scratch) / revision
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), revision], cwd=ROOT, check=True)
            stack.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
            targets.append(TreeTarget(revision, tree, DB_DIR / f"ab-{revision}.db"))
        for target in targets:
            for old in DB_DIR.glob(f"ab-{target.name}.db*"):
                old.unlink()
            target.start()
            stack.callback(target.stop)
            prepare(target, "warm")
        results: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(rounds):
            for workload in WORKLOADS:
                for target in targets if round_ % 2 == 0 else reversed(targets):
                    prepare(target, f"r{round_}-{workload}")
                    wrk(target, workload, bench.WARMUP)
                    result = wrk(target, workload, bench.DURATION)
                    results.setdefault((target.name, workload), []).append(result)
                    print(f"round {round_ + 1} {workload:8} {target.name:10} {result['rps']:8.0f} req/s  "
                          f"p99 {result['p99_us'] / 1000:6.2f} ms  errors {result['errors'] + result['status_errors']}",
                          flush=True)
    print(f"\nmedians of {rounds} alternated rounds, {WORKERS} worker(s) each, {bench.CONNECTIONS} connections:")
    for workload in WORKLOADS:
        base = statistics.median(r["rps"] for r in results[("this", workload)])
        for target in targets:
            runs = results[(target.name, workload)]
            rps = statistics.median(r["rps"] for r in runs)
            print(f"  {workload:8} {target.name:10} {rps:8.0f} req/s ({rps / base:4.2f}x this tree)  "
                  f"p50 {statistics.median(r['p50_us'] for r in runs) / 1000:5.2f} ms  "
                  f"p99 {statistics.median(r['p99_us'] for r in runs) / 1000:5.2f} ms  "
                  f"CPU {statistics.median(r['cpu_ms_per_req'] for r in runs):5.3f} ms/req  "
                  f"range {min(r['rps'] for r in runs):.0f}-{max(r['rps'] for r in runs):.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
