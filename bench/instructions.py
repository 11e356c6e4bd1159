"""Instructions per request, in process, counted with callgrind: `make bench-instructions REVS="A B"`.

Timings on a shared 2-core machine move by 15% and more between runs; instruction counts
repeat to within a percent. For each revision (checked out into a temporary worktree) and
this tree, the same script serves N1 and then N2 requests of a workload through the app's
ASGI interface, no network, under `valgrind --tool=callgrind`; (I(N2) - I(N1)) / (N2 - N1)
is the cost of one request, start-up cancelled out.

Two ways to reach the app:
- `raw` (the default): what a `serve` worker runs. The app is built by `app.asgi.from_env()`
  from a production environment (APP_ENV=production, the default INFO access log, written to
  /dev/null; multiprocess metrics in a scratch directory) and each request is one call of the
  ASGI app with a hand-made scope, `receive` and `send`, on one event loop: no test client.
- `testclient`: the app built by `create_app` and driven through Starlette's test client, as
  this script measured before (two thirds of that figure is the test client itself).

    python bench/instructions.py [--mode raw|testclient] [REV ...]   # the driver
    python bench/instructions.py --serve WORKLOAD N [MODE]            # one measured process (run in a tree)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N1, N2 = 20, 100
WORKLOADS = ("whoami", "check", "mint")
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


def serve_raw(workload: str, count: int) -> None:
    """Build the app as a `serve` worker does and answer `count` requests of `workload` through raw ASGI calls."""
    import asyncio
    import os
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path.cwd()))
    scratch = Path(tempfile.mkdtemp())
    (scratch / "metrics").mkdir()
    database = scratch / "keys.db"
    os.environ.update({
        "APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": f"sqlite:///{database}",
        "CREATE_DATABASE": "on", "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics"),
        "KEY_MANAGEMENT_LIMIT_PER_MINUTE": str(10**9), "KEY_MANAGEMENT_LIMIT_PER_DAY": str(10**9),
        "MAX_ACTIVE_KEYS": str(10**9),
    })
    os.environ.pop("LOG_LEVEL", None)  # the default: INFO, one access line per request
    # The access log goes to stderr, as in a worker; here into /dev/null (callgrind reports to its own file).
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    from app.asgi import from_env
    from app.domain.keys import KeyService
    from app.domain.sessions import issue_token
    from app.store import SQLiteStore

    store = SQLiteStore(database)
    KeyService(store, time.time).set_tier("bench", "pro")
    store.close()
    app = from_env()
    cookie = b"sb-access-token=" + issue_token(SECRET, "bench", time.time(), 3600).encode()

    async def call(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                   query: bytes = b"") -> tuple[int, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
            "root_path": "", "headers": [(b"host", b"127.0.0.1:8000"), *headers],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
        }
        sent = False
        status, chunks = 0, []

        async def receive() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(scope, receive, send)
        return status, b"".join(chunks)

    def mint(name: str) -> tuple[int, bytes]:
        body = json.dumps({"name": name}, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"cookie", cookie)]
        return loop.run_until_complete(call("POST", "/api/v1/keys", headers, body))

    loop = asyncio.new_event_loop()
    status, body = mint("bench-key")
    assert status == 201, body
    key = json.loads(body)["data"]["key"].encode()
    # What the shipped nginx configuration (deploy/nginx/gateway.conf.template) sends the check.
    check_headers = [
        (b"x-api-key", key), (b"x-original-method", b"GET"), (b"x-original-uri", b"/api/v1/iocs?limit=5"),
        (b"x-forwarded-host", b"127.0.0.1:8080"), (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-for", b"127.0.0.1"), (b"x-real-ip", b"127.0.0.1"),
    ]
    for i in range(count):
        if workload == "whoami":
            status, body = loop.run_until_complete(call("GET", "/api/v1/whoami", [(b"x-api-key", key)]))
        elif workload == "check":
            status, body = loop.run_until_complete(
                call("GET", "/api/v1/gateway/check", check_headers, query=b"refusal=header"))
        elif workload == "mint":
            status, body = mint(f"bench-{i}")
        else:
            status, body = loop.run_until_complete(call("GET", "/healthz", []))
        assert status < 300, body


def count(tree: Path, workload: str, requests: int, mode: str) -> int:
    with tempfile.NamedTemporaryFile(prefix="callgrind-", suffix=".log") as log:
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log.name}",
             sys.executable, str(Path(__file__).resolve()), "--serve", workload, str(requests), mode],
            cwd=tree, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same hashes, so the same dict and set layouts, each run
        )
        return int(re.search(r"Collected : (\d+)", Path(log.name).read_text()).group(1))


def main(revisions: list[str], mode: str = "raw") -> None:
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        trees = {"this tree": ROOT}
        for revision in revisions:
            tree = Path(scratch) / revision
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), revision], cwd=ROOT, check=True)
            trees[revision] = tree
        try:
            print(f"instructions per request (callgrind, in process, {mode}, ({N2} - {N1}) requests):")
            for workload in WORKLOADS:
                for name, tree in trees.items():
                    try:
                        per = (count(tree, workload, N2, mode) - count(tree, workload, N1, mode)) / (N2 - N1)
                    except subprocess.CalledProcessError:  # an earlier revision without this operation
                        print(f"  {workload:8} {name:10}    n/a (its requests fail on that tree)", flush=True)
                        continue
                    print(f"  {workload:8} {name:10} {per / 1e6:6.3f} M", flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        (serve_raw if sys.argv[4:5] != ["testclient"] else serve)(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--mode"]:
        main(sys.argv[3:], sys.argv[2])
    else:
        main(sys.argv[1:])
