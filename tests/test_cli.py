"""The command line: dev-token and set-tier, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
import time

import jwt

from app.domain.sessions import SessionVerifier
from app.store import SQLiteStore
from tests.live import ROOT

SECRET = "cli-test-secret-0123456789-0123456789-abcd"


def run(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
               "SUPABASE_JWT_SECRET": SECRET, **env}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=environ, check=False)


def test_dev_token_is_a_session_for_that_user_with_that_lifetime(tmp_path):
    result = run(tmp_path, "dev-token", "tom@example", "--ttl", "120")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert SessionVerifier(SECRET).user_id(token, time.time()) == "tom@example"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["exp"] - claims["iat"] == 120
    assert result.stderr == ""


def test_dev_token_refuses_a_lifetime_below_one_second(tmp_path):
    assert run(tmp_path, "dev-token", "tom", "--ttl", "0").returncode == 2


def test_set_tier_moves_an_account_up_and_back(tmp_path):
    for tier in ("pro", "free"):
        result = run(tmp_path, "set-tier", "alice", tier)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"alice: tier {tier}"
        assert SQLiteStore(tmp_path / "keys.db").ensure_account("alice", 0).tier == tier


def test_set_tier_refuses_an_unknown_tier(tmp_path):
    result = run(tmp_path, "set-tier", "alice", "platinum")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_configuration_error_is_a_clear_message_not_a_traceback(tmp_path):
    result = run(tmp_path, "dev-token", "tom", DATABASE_URL="postgres://db/keys")
    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: DATABASE_URL")
    assert "Traceback" not in result.stderr


def test_set_tier_and_dev_token_refuse_a_user_id_that_names_no_account(tmp_path):
    for user_id in ("", " alice", "alice ", "line\nbreak", "u" * 201):
        for command in (("set-tier", user_id, "pro"), ("dev-token", user_id)):
            result = run(tmp_path, *command)
            assert result.returncode == 2, (command, result.stdout)
            assert "USER_ID must be" in result.stderr
    if (tmp_path / "keys.db").exists():
        store = SQLiteStore(tmp_path / "keys.db")
        with store._conn() as conn:
            assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0


def test_a_bad_forwarded_allow_ips_stops_both_servers_with_one_line(tmp_path):
    for command in ("run", "serve"):
        result = run(tmp_path, command, FORWARDED_ALLOW_IPS="10.0.0.1;10.0.0.2", APP_ENV="production")
        assert result.returncode == 2
        assert result.stderr.startswith("configuration error: FORWARDED_ALLOW_IPS")
        assert len(result.stderr.strip().splitlines()) == 1
