"""Two instances, one truth: two `make serve` servers (2 workers each) sharing one PostgreSQL."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.domain.sessions import issue_token
from tests.conftest import fresh_pg_schema, schema_url
from tests.live import ROOT, LiveServer

SECRET = "two-instances-secret-0123456789-0123456789"
KEYS = "/api/v1/keys"


def cookie(user: str) -> dict[str, str]:
    return {"Cookie": f"sb-access-token={issue_token(SECRET, user, time.time(), 3600)}"}


@pytest.fixture(scope="module")
def shared_schema() -> Iterator[str]:
    yield from fresh_pg_schema()


def start_pair(tmp: Path, schema: str) -> tuple[LiveServer, LiveServer]:
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2",
           "DATABASE_URL": schema_url(schema)}
    return LiveServer("serve", tmp, env), LiveServer("serve", tmp, env)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, shared_schema: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    first, second = start_pair(tmp_path_factory.mktemp("pair"), shared_schema)
    with first, second:  # both start (and migrate) at once against the same schema
        yield first, second


def mint(server: LiveServer, user: str, name: str) -> tuple[int, dict]:
    status, _, body = server.request("POST", KEYS, {"name": name}, cookie(user))
    return status, body


def test_a_mint_storm_over_both_instances_gives_distinct_keys_usable_in_both(pair):
    users = [f"storm-{n}" for n in range(8)]
    jobs = [(pair[n % 2], users[n % 8], f"key-{n}") for n in range(40)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda job: mint(*job), jobs))
    assert [status for status, _ in results] == [201] * 40
    keys = [body["data"] for _, body in results]
    assert len({k["id"] for k in keys}) == len({k["key"] for k in keys}) == 40
    for key in keys:  # 5 keys per user, each used once in each instance: the account's 10 a minute
        for server in pair:
            status, _, body = server.request("GET", "/api/v1/whoami", headers={"X-API-Key": key["key"]})
            assert status == 200, body


def test_a_free_key_hit_64_times_across_both_instances_is_admitted_exactly_10_times(pair):
    _, body = mint(pair[0], "hot-account", "hot-key")
    key = body["data"]["key"]
    if time.time() % 60 > 55:  # the real clock: keep the burst inside one minute window
        time.sleep(60.2 - time.time() % 60)
    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(
            lambda n: pair[n % 2].request("GET", "/api/v1/whoami", headers={"X-API-Key": key})[0], range(64)
        ))
    assert Counter(statuses) == {200: 10, 429: 54}
    status, _, body = pair[1].request("GET", f"{KEYS}/{body['data']['id']}", headers=cookie("hot-account"))
    assert body["data"]["total_requests"] == 10


def test_a_key_revoked_in_one_instance_is_refused_by_the_next_request_in_the_other(pair):
    first, second = pair
    _, body = mint(first, "revoker", "soon-gone")
    key = body["data"]
    assert second.request("GET", "/api/v1/whoami", headers={"X-API-Key": key["key"]})[0] == 200
    assert first.request("DELETE", f"{KEYS}/{key['id']}", headers=cookie("revoker"))[0] == 204
    status, _, body = second.request("GET", "/api/v1/whoami", headers={"X-API-Key": key["key"]})
    assert (status, body["error"]["code"]) == (401, "revoked_api_key")


def test_a_tier_change_is_answered_with_the_new_limits_by_both_instances(pair, shared_schema):
    first, second = pair
    _, body = mint(first, "upgrader", "siem")
    key = body["data"]["key"]
    assert second.request("GET", "/api/v1/whoami", headers={"X-API-Key": key})[1]["x-ratelimit-limit"] == "10"
    result = subprocess.run(
        [sys.executable, "-m", "app", "set-tier", "upgrader", "pro"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": schema_url(shared_schema)},
        timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    for server in pair:
        status, headers, body = server.request("GET", "/api/v1/whoami", headers={"X-API-Key": key})
        assert (status, headers["x-ratelimit-limit"], body["data"]["tier"]) == (200, "1000", "pro")


def test_an_instance_killed_mid_storm_loses_nothing_it_answered_201(tmp_path, shared_schema):
    first, second = start_pair(tmp_path, shared_schema)
    with first, second:
        answered: list[tuple[str, str, str]] = []  # (user, id, key) of every 201 from the killed instance

        def storm(n: int) -> None:
            user = f"killed-{n % 10}"
            try:
                status, body = mint(first, user, f"storm-{n}")
            except (OSError, http.client.HTTPException):  # HTTPException: an answer cut short (IncompleteRead)
                return  # the instance is gone: no answer, no promise
            if status == 201:
                answered.append((user, body["data"]["id"], body["data"]["key"]))

        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(storm, n) for n in range(200)]
            deadline = time.monotonic() + 30
            while len(answered) < 20 and time.monotonic() < deadline:
                time.sleep(0.005)
            os.killpg(first.process.pid, signal.SIGKILL)  # gunicorn and both workers, mid-storm
            for future in futures:
                future.result()
        assert 20 <= len(answered) < 200
        for user in {user for user, _, _ in answered}:
            status, _, body = second.request("GET", f"{KEYS}?limit=100", headers=cookie(user))
            listed = {k["id"] for k in body["data"]}
            assert {key_id for owner, key_id, _ in answered if owner == user} <= listed
        status, _, body = second.request("GET", "/api/v1/whoami", headers={"X-API-Key": answered[-1][2]})
        assert status == 200, body
