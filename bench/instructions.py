"""Instructions per request, in process, counted with callgrind: `make bench-instructions REVS="A B"`.

Timings on a shared 2-core machine move by 15% and more between runs; instruction counts
repeat to within a percent. For each revision (checked out into a temporary worktree) and
this tree, the same script serves N1 and then N2 requests of a workload through the app's
ASGI interface, no network, under `valgrind --tool=callgrind`; (I(N2) - I(N1)) / (N2 - N1)
is the cost of one request, start-up cancelled out.

    python bench/instructions.py [REV ...]      # the driver
    python bench/instructions.py --serve WORKLOAD N   # one measured process (run in a tree)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N1, N2 = 20, 100
WORKLOADS = ("whoami", "mint")
SECRET = "instructions-secret-0123456789-0123456789"


def serve(workload: str, count: int) -> None:
    """Build the app on a fresh database and answer `count` requests of `workload`."""
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path.cwd()))
    from app import create_app
    from app.config import Settings

    try:
        from app.domain.sessions import issue_token
    except ImportError:  # before the domain had a package of its own
        from app.sessions import issue_token  # type: ignore[no-redef]

    settings = Settings(jwt_secret=SECRET, database_path=Path(tempfile.mkdtemp()) / "keys.db",
                        cors_origin_regex="", validate_responses=False, env="production",
                        management_limit_per_minute=10**9, management_limit_per_day=10**9, max_active_keys=10**9)
    app = create_app(settings)
    app.app.extensions["services"].keys.set_tier("bench", "pro")
    cookie = {"sb-access-token": issue_token(SECRET, "bench", time.time(), 3600)}
    with app.test_client() as client:
        key = client.post("/api/v1/keys", json={"name": "bench-key"}, cookies=cookie).json()["data"]["key"]
        for i in range(count):
            if workload == "whoami":
                response = client.get("/api/v1/whoami", headers={"X-API-Key": key})
            elif workload == "mint":
                response = client.post("/api/v1/keys", json={"name": f"bench-{i}"}, cookies=cookie)
            else:
                response = client.get("/healthz")
            assert response.status_code < 300, response.text


def count(tree: Path, workload: str, requests: int) -> int:
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         str(Path(__file__).resolve()), "--serve", workload, str(requests)],
        cwd=tree, capture_output=True, text=True, check=True,
    )
    return int(re.search(r"Collected : (\d+)", result.stderr).group(1))


def main(revisions: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        trees = {"this tree": ROOT}
        for revision in revisions:
            tree = Path(scratch) / revision
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), revision], cwd=ROOT, check=True)
            trees[revision] = tree
        try:
            print(f"instructions per request (callgrind, in process, ({N2} - {N1}) requests):")
            for workload in WORKLOADS:
                for name, tree in trees.items():
                    per = (count(tree, workload, N2) - count(tree, workload, N1)) / (N2 - N1)
                    print(f"  {workload:8} {name:10} {per / 1e6:6.3f} M", flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1:])
