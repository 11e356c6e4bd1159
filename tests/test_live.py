"""The real server in subprocesses: `make run`'s development server and `make serve`'s workers."""

from __future__ import annotations

import http.client
import re
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.domain.sessions import issue_token
from tests.live import ROOT, LiveServer

SECRET = "live-test-secret-0123456789-0123456789-abc"


def test_development_server_prints_a_curl_command_that_mints(tmp_path):
    with LiveServer("run", tmp_path) as server:
        output = server.output()
        assert "curl -s -X POST" in output
        token = re.search(r"sb-access-token=([A-Za-z0-9_.-]+)", output).group(1)
        status, headers, body = server.request(
            "POST", "/api/v1/keys", {"name": "tom-laptop-dev", "expires_in_days": 90},
            {"Cookie": f"sb-access-token={token}"},
        )
        assert status == 201, body
        assert body["data"]["key"].startswith("sk_live_")
        assert headers["x-request-id"] == headers["x-request-id"].strip()
        assert (tmp_path / "live" / ".supabase-jwt-secret").exists()
        key = body["data"]["key"]
    assert key not in server.output()


def test_production_refuses_to_start_without_a_jwt_secret(tmp_path):
    import subprocess
    import sys

    for command in ("run", "serve"):
        result = subprocess.run(
            [sys.executable, "-m", "app", command], capture_output=True, text=True, timeout=60,
            env={"APP_ENV": "production", "PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path}/k.db"},
            cwd=ROOT,
        )
        assert result.returncode == 2
        assert "SUPABASE_JWT_SECRET is required" in result.stderr
        assert "eyJ" not in result.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2"}
    with LiveServer("serve", tmp, env) as server:
        yield server


def cookie(user: str) -> dict[str, str]:
    return {"Cookie": f"sb-access-token={issue_token(SECRET, user, time.time(), 3600)}"}


def test_production_server_runs_two_workers_and_prints_no_token(served):
    output = served.output()
    assert len(set(re.findall(r"Booting worker with pid: (\d+)", output))) == 2
    assert "eyJ" not in output


def test_production_workers_checkpoint_the_log_in_the_background(served):
    # The key row reaches the database file itself within moments, with no commit having
    # had to checkpoint the log (it is far below SQLite's own 1,000-page threshold).
    status, _, body = served.request("POST", "/api/v1/keys", {"name": f"ckpt-{time.time_ns()}"}, cookie("ckpt-user"))
    assert status == 201, body
    path = served.database_path
    copy = path.with_name("main-only.db")
    deadline = time.monotonic() + 10
    while True:
        copy.write_bytes(path.read_bytes())
        conn = sqlite3.connect(copy)
        try:
            if conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (body["data"]["id"],)).fetchone():
                break
        except sqlite3.DatabaseError:
            pass
        finally:
            conn.close()
        assert time.monotonic() < deadline, "the key never left the write-ahead log"
        time.sleep(0.05)


def test_free_key_is_admitted_exactly_ten_times_across_workers(served):
    for _attempt in range(3):
        owner = cookie(f"burst-user-{time.time_ns()}")  # an account of its own: its limit is per account
        status, _, body = served.request("POST", "/api/v1/keys", {"name": "burst"}, owner)
        assert status == 201
        key, key_id = body["data"]["key"], body["data"]["id"]
        minute = int(time.time()) // 60

        def call(_: int, key: str = key) -> int:
            return served.request("GET", "/api/v1/whoami", headers={"X-API-Key": key})[0]

        with ThreadPoolExecutor(max_workers=32) as pool:
            statuses = list(pool.map(call, range(64)))
        if int(time.time()) // 60 != minute:
            continue  # the burst straddled a minute boundary: two windows; try again
        assert statuses.count(200) == 10, Counter(statuses)
        assert statuses.count(429) == 54, Counter(statuses)
        _, _, stored = served.request("GET", f"/api/v1/keys/{key_id}", headers=owner)
        assert stored["data"]["total_requests"] == 10
        return
    pytest.fail("every attempt straddled a minute boundary")


def test_three_keys_of_one_free_account_are_admitted_ten_times_in_all_across_workers(served):
    for _attempt in range(3):
        owner = cookie(f"fleet-{time.time_ns()}")
        keys = [served.request("POST", "/api/v1/keys", {"name": f"sensor-{n}"}, owner)[2]["data"] for n in range(3)]
        minute = int(time.time()) // 60

        def call(n: int, keys: list[dict] = keys) -> tuple[int, dict[str, str], dict]:
            return served.request("GET", "/api/v1/whoami", headers={"X-API-Key": keys[n % 3]["key"]})

        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(call, range(40)))
        if int(time.time()) // 60 != minute:
            continue  # the burst straddled a minute boundary: two windows; try again
        statuses = Counter(status for status, _, _ in results)
        assert statuses == Counter({200: 10, 429: 30}), statuses
        admitted = [(headers, body) for status, headers, body in results if status == 200]
        # One count for the account: each admitted request saw a different place in it.
        assert sorted(int(h["x-ratelimit-remaining"]) for h, _ in admitted) == list(range(10))
        assert sorted(b["data"]["rate_limit"]["minute"]["remaining"] for _, b in admitted) == list(range(10))
        assert {h["x-ratelimit-limit"] for h, _ in admitted} == {"10"}
        _, _, listed = served.request("GET", "/api/v1/keys", headers=owner)
        assert sum(k["total_requests"] for k in listed["data"]) == 10
        return
    pytest.fail("every attempt straddled a minute boundary")


def test_revocation_is_seen_by_every_worker_at_once(served):
    _, _, body = served.request("POST", "/api/v1/keys", {"name": "revoke-me"}, cookie("revoker"))
    served.request("POST", "/api/v1/keys", {"name": "pro-later"}, cookie("revoker"))
    key, key_id = body["data"]["key"], body["data"]["id"]
    assert served.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})[0] == 200
    assert served.request("DELETE", f"/api/v1/keys/{key_id}", headers=cookie("revoker"))[0] == 204

    def call(_: int) -> str:
        return served.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})[2]["error"]["code"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(call, range(16)))
    assert codes == ["revoked_api_key"] * 16


def test_logs_never_contain_keys_or_session_tokens(served):
    session = cookie("logger")
    _, _, body = served.request("POST", "/api/v1/keys", {"name": "log-check"}, session)
    key = body["data"]["key"]
    ids = [served.request("GET", f"/api/v1/whoami?api_key={key}")[1]["x-request-id"],
           served.request("GET", "/api/v1/whoami", headers={"X-API-Key": key[:-1] + "x"})[1]["x-request-id"]]
    deadline = time.monotonic() + 10
    while not all(i in (output := served.output()) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)  # the access line is written as the response completes
    assert all("route=/api/v1/whoami status=" in line for line in output.splitlines() if any(i in line for i in ids))
    assert all(i in output for i in ids)
    assert key not in output and key[8:30] not in output
    assert session["Cookie"].split("=", 1)[1] not in output


def test_development_server_speaks_the_contract_over_real_http(tmp_path):
    with LiveServer("run", tmp_path) as server:
        status, headers, body = server.request("GET", "/api/v1/whoami")
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        assert body["error"]["request_id"] == headers["x-request-id"]
        status, _, body = server.request("GET", "/api/v1/whoami", headers={"Authorization": "Bearer"})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        for path in ("/api/v1/keys/%0A", "/api/v1/whoami%0A"):
            status, _, body = server.request("GET", path)
            assert status == 404 and body["error"]["code"] == "not_found"
        status, _, body = server.request("POST", "/api/v1/keys", {"name": "x"})
        assert status == 401 and body["error"]["code"] == "missing_session"
        assert oct((tmp_path / "live" / "keys.db").stat().st_mode & 0o777) == "0o600"
    assert "Traceback" not in server.output()


def test_scripted_client_walks_a_key_through_its_life_on_two_workers(served):
    """Mint -> use three ways -> exhaust the free limit -> revoke -> rejected, with the counts,
    headers, envelope and logs a client and an operator would check."""
    for _attempt in range(3):
        owner = cookie(f"walker-{time.time_ns()}")
        status, headers, body = served.request("POST", "/api/v1/keys", {"name": "partner-feed"}, owner)
        assert status == 201 and headers["cache-control"] == "no-store"
        key, key_id = body["data"]["key"], body["data"]["id"]
        minute = int(time.time()) // 60
        ways = [
            ("GET", "/api/v1/whoami", {"Authorization": f"Bearer {key}"}),
            ("GET", "/api/v1/whoami", {"X-API-Key": key}),
            ("GET", f"/api/v1/whoami?api_key={key}", {}),
        ]
        seen = [served.request(method, path, headers=h) for method, path, h in ways]
        seen += [served.request("GET", "/api/v1/whoami", headers={"X-API-Key": key}) for _ in range(7)]
        refused = served.request("GET", "/api/v1/whoami", headers={"X-API-Key": key})
        if int(time.time()) // 60 != minute:
            continue  # crossed into a new window mid-walk; walk again
        assert [s for s, _, _ in seen] == [200] * 10
        assert [h["x-ratelimit-remaining"] for _, h, _ in seen] == [str(9 - n) for n in range(10)]
        status, headers, body = refused
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["request_id"] == headers["x-request-id"]
        assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining"] == "0"
        _, _, stored = served.request("GET", f"/api/v1/keys/{key_id}", headers=owner)
        assert stored["data"]["total_requests"] == 10 and stored["data"]["last_used_at"]
        assert served.request("DELETE", f"/api/v1/keys/{key_id}", headers=owner)[0] == 204
        status, _, body = served.request("GET", "/api/v1/whoami", headers={"X-API-Key": key})
        assert status == 401 and body["error"]["code"] == "revoked_api_key"
        _, _, events = served.request("GET", "/api/v1/key-events", headers=owner)
        assert [e["type"] for e in events["data"]] == ["revoked", "rate_limited", "minted"]
        deadline = time.monotonic() + 10
        while refused[1]["x-request-id"] not in (output := served.output()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refused[1]["x-request-id"] in output and key not in output
        return
    pytest.fail("every walk straddled a minute boundary")


def test_mock_serves_the_demo_account_on_a_temporary_database_and_leaves_nothing_behind(tmp_path):
    import glob
    import tempfile

    before = set(glob.glob(f"{tempfile.gettempdir()}/socdefenders-keys-mock-*"))
    server = LiveServer("mock", tmp_path)
    with server:
        # Signed in on localhost, where Vite and Next open an app; 127.0.0.1 offered beside it.
        assert f"  http://localhost:{server.port}/dev/login?user=demo-user\n" in server.output()
        assert f"{server.base}/dev/login?user=demo-user" in server.output()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/dev/login?user=demo-user")
        login = connection.getresponse()
        login.read()
        assert login.status == 303
        cookie = login.getheader("set-cookie").split(";")[0]
        status, _, body = server.request("GET", "/api/v1/keys", headers={"Cookie": cookie})
        assert status == 200
        assert {k["name"] for k in body["data"]} >= {"prod-splunk-2026q2", "staging-sentinel", "partner-acme-30d"}
    assert set(glob.glob(f"{tempfile.gettempdir()}/socdefenders-keys-mock-*")) == before
    assert not server.database_path.exists()  # DATABASE_URL was not used


def test_one_roll_wins_under_load_across_workers_and_the_old_key_works_throughout(served):
    owner = cookie("roller")
    status, _, body = served.request("POST", "/api/v1/keys", {"name": "rolled-under-load"}, owner)
    assert status == 201, body
    old = body["data"]

    def act(n: int) -> tuple[str, int, dict]:
        if n % 2:
            status, _, answer = served.request("POST", f"/api/v1/keys/{old['id']}/roll", {"grace_period_minutes": 60}, owner)
            return "roll", status, answer
        status, _, answer = served.request("GET", "/api/v1/whoami", headers={"X-API-Key": old["key"]})
        return "use", status, answer

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(act, range(24)))
    rolls = Counter(status for kind, status, _ in results if kind == "roll")
    assert rolls == {201: 1, 409: 11}, rolls
    assert {a["error"]["details"]["reason"] for kind, s, a in results if kind == "roll" and s == 409} == {"rolled"}
    # The old key never stopped: each use was admitted, or refused by the account's rate limit only.
    assert {status for kind, status, _ in results if kind == "use"} <= {200, 429}
    new_id = next(a["data"]["id"] for kind, s, a in results if kind == "roll" and s == 201)
    _, _, listed = served.request("GET", "/api/v1/keys", headers=owner)
    assert sorted(k["id"] for k in listed["data"]) == sorted([old["id"], new_id])
    _, _, trail = served.request("GET", "/api/v1/key-events", headers=owner)
    assert [e["type"] for e in trail["data"]].count("rolled") == 1


def test_leak_reports_of_real_revoked_malformed_and_unknown_keys_answer_identically(served):
    from app.domain import keymaterial

    owner = cookie("leaker")
    real = served.request("POST", "/api/v1/keys", {"name": "real-one"}, owner)[2]["data"]
    revoked = served.request("POST", "/api/v1/keys", {"name": "revoked-one"}, owner)[2]["data"]
    assert served.request("DELETE", f"/api/v1/keys/{revoked['id']}", headers=owner)[0] == 204
    answers, remaining = [], []
    for candidate in (real["key"], revoked["key"], "sk_live_not-a-key", keymaterial.generate()):
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        conn.request("POST", "/api/v1/leaks", body=f'{{"keys": ["{candidate}"], "source": "https://paste.example/x"}}',
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        remaining.append(int(headers["x-ratelimit-remaining"]))
        # What differs from one answer to the next whatever the candidate: the request's id, the
        # time, and how much of this address's rate limit is left (any header carrying that).
        kept = {k: v for k, v in headers.items()
                if k not in ("x-request-id", "date", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit")}
        answers.append((response.status, kept, response.read()))
        conn.close()
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0][0] == 202 and answers[0][1]["x-ratelimit-limit"] == "10"
    if remaining[0] >= 3:  # all four in one minute window (else one straddled its end)
        assert remaining == [remaining[0] - n for n in range(4)]
    assert served.request("GET", "/api/v1/whoami", headers={"X-API-Key": real["key"]})[0] == 401
    _, _, trail = served.request("GET", "/api/v1/key-events", headers=owner)
    leaked = [e for e in trail["data"] if e["type"] == "leaked"]
    assert [(e["key_id"], e["details"]) for e in leaked] == [(real["id"], {"source": "https://paste.example/x"})]


def test_a_roll_without_grace_under_load_admits_every_request_before_it_and_refuses_every_one_after(served):
    """Threads keep calling with the old key, three ways, on two workers, while it is rolled with no grace."""
    import threading

    from app.store import SQLiteStore

    owner = cookie("drill-roller")
    status, _, body = served.request("POST", "/api/v1/keys", {"name": "siem-under-load"}, owner)
    assert status == 201, body
    old = body["data"]
    store = SQLiteStore(served.database_path, create=False)  # pro: the drill is about the roll, not the limit
    try:
        store.set_tier("drill-roller", "pro", time.time_ns() // 1000)
    finally:
        store.close()
    ways = [{"headers": {"X-API-Key": old["key"]}}, {"headers": {"Authorization": f"Bearer {old['key']}"}},
            {"path": f"/api/v1/whoami?api_key={old['key']}"}]
    stop = threading.Event()
    results: list[tuple[float, float, int, dict]] = []  # sent, answered (monotonic), status, body

    def call_until_stopped(n: int) -> None:
        way = ways[n % len(ways)]
        while not stop.is_set():
            sent = time.monotonic()
            status, _, answer = served.request("GET", way.get("path", "/api/v1/whoami"), headers=way.get("headers"))
            results.append((sent, time.monotonic(), status, answer))

    threads = [threading.Thread(target=call_until_stopped, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        while len(results) < 30:
            time.sleep(0.01)
        roll_sent = time.monotonic()
        status, _, rolled = served.request("POST", f"/api/v1/keys/{old['id']}/roll", {"grace_period_minutes": 0}, owner)
        roll_answered = time.monotonic()
        assert status == 201, rolled
        while sum(sent > roll_answered for sent, *_ in list(results)) < 30:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    new_id = rolled["data"]["id"]
    before = [status for sent, answered, status, _ in results if answered < roll_sent]
    after = [answer for sent, _, status, answer in results if sent > roll_answered]
    overlapping = [(status, answer) for sent, answered, status, answer in results
                   if answered >= roll_sent and sent <= roll_answered]
    assert len(before) >= 30 and set(before) == {200}, Counter(before)
    assert len(after) >= 30
    for answer in after:
        assert answer["error"]["code"] == "expired_api_key", answer
        assert answer["error"]["details"] == {"key_id": old["id"], "expired_at": rolled["meta"]["rolled_from"]["expires_at"],
                                              "rolled": True, "replaced_by": new_id}
    # Requests in flight during the roll: admitted, or refused as rolled; nothing else.
    assert {s if s == 200 else (s, a["error"]["code"]) for s, a in overlapping} <= {200, (401, "expired_api_key")}
    # Every admitted request was counted on the old key, and none after the roll.
    admitted = sum(status == 200 for _, _, status, _ in results)
    _, _, listed = served.request("GET", "/api/v1/keys", headers=owner)
    by_id = {k["id"]: k for k in listed["data"]}
    assert by_id[old["id"]]["total_requests"] == admitted
    assert by_id[old["id"]]["replaced_by"] == new_id and by_id[old["id"]]["status"] == "expired"
    assert served.request("GET", "/api/v1/whoami", headers={"X-API-Key": rolled["data"]["key"]})[0] == 200
