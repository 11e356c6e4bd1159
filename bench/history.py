"""One account's long history, and what it costs that account and every other one (SQLite).

Seeds a fresh SQLite database with HISTORY old keys in one account (`heavy`: half revoked,
half expired, all within the last 30 days, so inside the default retention and kept), starts
`python -m app serve` (2 workers, production) on a free loopback port, and measures over HTTP:

- `mint`: `heavy` mints a key (201), which is then revoked (not timed);
- `refused mint`: `heavy` mints a name it already holds (409 `duplicate_name`);
- `whoami alone`: another account's key calls `GET /api/v1/whoami`, 10 a second;
- `whoami beside heavy`: the same while `heavy` sends refused mints at 2 a second (the
  default key-management limit, 120 a minute).

Prints the median (and p95, max) latency of each, in milliseconds, from one run.

    .venv/bin/python bench/history.py [--history 200000] [--samples 100] [--app-dir DIR]

`--app-dir` runs the server from another checkout of this repository (the code before a
change, say) with this interpreter; the database and the server are removed afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY_US = 86_400 * 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(path: Path, history: int) -> None:
    """Give `heavy` `history` old keys and make `light` a pro account (the schema exists already)."""
    now = time.time_ns() // 1000
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO accounts (user_id, tier, created_us) VALUES ('heavy', 'free', ?)", (now - 60 * DAY_US,)
        )
        conn.execute(
            "INSERT INTO accounts (user_id, tier, created_us) VALUES ('light', 'pro', ?)", (now - 60 * DAY_US,)
        )
        rows = []
        for i in range(history):
            ended = now - (i % 30 + 1) * DAY_US + i  # within the last 30 days
            revoked = ended if i % 2 == 0 else None
            expires = None if i % 2 == 0 else ended
            rows.append(
                (
                    str(uuid.uuid4()),
                    "heavy",
                    f"old-{i}",
                    secrets.token_hex(32),
                    "sk_live_Ab12••••••••",
                    ended - DAY_US,
                    expires,
                    revoked,
                    "owner" if revoked else None,
                )
            )
        conn.executemany(
            "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us, revoked_us, "
            "revoked_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None
    ) -> tuple[int, dict, float]:
        data = json.dumps(body).encode() if body is not None else None
        sent = {**(headers or {}), **({"Content-Type": "application/json"} if data else {})}
        for attempt in (1, 2):
            start = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=sent)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the idle keep-alive connection (2 s): the request was not read.
                self.conn.close()
                if attempt == 2:
                    raise
        elapsed = (time.perf_counter() - start) * 1000
        return response.status, json.loads(raw) if raw else {}, elapsed


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return (
        f"{name:<22} n={len(values):<4} median {statistics.median(values):7.2f} ms   "
        f"p95 {p95:7.2f} ms   max {ordered[-1]:7.2f} ms"
    )


def paced(rate: float, count: int, action, stop: threading.Event | None = None) -> None:
    """Call `action` `count` times (or until `stop`), `rate` a second."""
    start = time.perf_counter()
    for i in range(count):
        if stop is not None and stop.is_set():
            return
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        action()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", type=int, default=200_000, help="old keys in the heavy account")
    parser.add_argument("--samples", type=int, default=100, help="requests measured per figure")
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="checkout whose server to run")
    args = parser.parse_args()

    sys.path.insert(0, str(args.app_dir))
    from app.domain.sessions import issue_token

    scratch = Path(tempfile.mkdtemp(prefix="history-bench-"))
    db = scratch / "keys.db"
    secret = secrets.token_urlsafe(48)
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "production",
        "SUPABASE_JWT_SECRET": secret,
        "DATABASE_URL": f"sqlite:///{db}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "WARNING",
        "KEY_MANAGEMENT_LIMIT_PER_MINUTE": "100000",
        "KEY_MANAGEMENT_LIMIT_PER_DAY": "1000000",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    python = sys.executable
    subprocess.run([python, "-m", "app", "migrate"], cwd=args.app_dir, env=env, check=True, capture_output=True)
    seed(db, args.history)
    print(f"seeded {args.history} old keys", file=sys.stderr, flush=True)
    server = subprocess.Popen(
        [python, "-m", "app", "serve"],
        cwd=args.app_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if Client(port).call("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        now = time.time()
        heavy = {"Cookie": f"sb-access-token={issue_token(secret, 'heavy', now, 3600)}"}
        light = {"Cookie": f"sb-access-token={issue_token(secret, 'light', now, 3600)}"}
        client = Client(port)
        status, body, _ = client.call("POST", "/api/v1/keys", {"name": "light-siem"}, light)
        assert status == 201, body
        bearer = {"Authorization": f"Bearer {body['data']['key']}"}

        minted: list[float] = []
        for i in range(args.samples):
            status, body, ms = client.call("POST", "/api/v1/keys", {"name": f"new-{i}"}, heavy)
            assert status == 201, body
            minted.append(ms)
            assert client.call("DELETE", f"/api/v1/keys/{body['data']['id']}", None, heavy)[0] == 204
        assert client.call("POST", "/api/v1/keys", {"name": "held-name"}, heavy)[0] == 201
        refused: list[float] = []
        for _ in range(args.samples):
            status, body, ms = client.call("POST", "/api/v1/keys", {"name": "held-name"}, heavy)
            assert status == 409, body
            refused.append(ms)

        def whoami_series() -> list[float]:
            caller, seen = Client(port), []

            def one() -> None:
                status, body, ms = caller.call("GET", "/api/v1/whoami", None, bearer)
                assert status == 200, body
                seen.append(ms)

            paced(10, args.samples, one)
            return seen

        print("mints measured", file=sys.stderr, flush=True)
        alone = whoami_series()
        stop = threading.Event()
        minter = Client(port)
        background = threading.Thread(
            target=paced,
            args=(2, 10**6, lambda: minter.call("POST", "/api/v1/keys", {"name": "held-name"}, heavy), stop),
        )
        background.start()
        beside = whoami_series()
        stop.set()
        background.join()

        print(f"history: {args.history} old keys in one account; SQLite, `serve` with 2 workers; code: {args.app_dir}")
        for name, values in (
            ("mint", minted),
            ("refused mint (409)", refused),
            ("whoami alone", alone),
            ("whoami beside heavy", beside),
        ):
            print(summary(name, values))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        for path in sorted(scratch.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        scratch.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
