"""The command line: dev-token and set-tier, as an operator runs them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import jwt
import pytest

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


def test_every_command_runs_its_own_function_and_help_lists_them_all(tmp_path):
    import argparse

    from app.__main__ import parser

    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    functions = {name: sub.get_default("function") for name, sub in commands.choices.items()}
    assert all(callable(f) for f in functions.values()), functions
    assert len(set(functions.values())) == len(functions)  # no function shared and dispatched on within
    shown = run(tmp_path, "--help")
    assert shown.returncode == 0, shown.stderr
    for choice in commands._choices_actions:
        assert choice.dest in shown.stdout and choice.help.split(":")[0] in " ".join(shown.stdout.split())


def test_a_user_id_no_account_can_have_is_refused_before_anything_is_done(tmp_path):
    for command in (["dev-token", " tom"], ["set-tier", "x" * 201, "pro"], ["seed-demo", "tab\there"]):
        refused = run(tmp_path, *command)
        assert refused.returncode == 2 and "USER_ID must be 1 to 200 printable characters" in refused.stderr
    assert not (tmp_path / "keys.db").exists()


def test_set_tier_moves_an_account_up_and_back(tmp_path):
    SQLiteStore(tmp_path / "keys.db").ensure_account("alice", 0)  # alice has signed in once
    for tier in ("pro", "free"):
        result = run(tmp_path, "set-tier", "alice", tier)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"alice: tier {tier}"
        assert SQLiteStore(tmp_path / "keys.db").ensure_account("alice", 0).tier == tier


def test_set_tier_refuses_a_user_id_never_seen_unless_told_to_create_it(tmp_path):
    assert run(tmp_path, "migrate").returncode == 0
    refused = run(tmp_path, "set-tier", "alcie", "pro")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "set-tier: no account 'alcie': it has never signed in; check the id, or add --create to make it"]
    with sqlite3.connect(tmp_path / "keys.db") as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0
    created = run(tmp_path, "set-tier", "--create", "alice", "pro")
    assert (created.returncode, created.stdout.strip()) == (0, "alice: tier pro"), created.stderr
    assert run(tmp_path, "set-tier", "alice", "free").stdout.strip() == "alice: tier free"


def test_set_tier_without_create_changes_nothing_on_postgresql_either(tmp_path, pg_schema):
    from tests.conftest import schema_url

    url = schema_url(pg_schema)
    assert run(tmp_path, "migrate", DATABASE_URL=url).returncode == 0
    assert run(tmp_path, "set-tier", "bob", "pro", DATABASE_URL=url).returncode == 1
    assert run(tmp_path, "set-tier", "--create", "bob", "pro", DATABASE_URL=url).stdout.strip() == "bob: tier pro"
    assert run(tmp_path, "set-tier", "bob", "free", DATABASE_URL=url).stdout.strip() == "bob: tier free"


def test_operator_commands_need_no_session_secret_in_production(tmp_path):
    environ = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"}  # no APP_ENV, no secret
    export = tmp_path / "rows.jsonl"
    for args in (("migrate",), ("set-tier", "--create", "alice", "pro"), ("backup", str(tmp_path / "copy.db")),
                 ("export", str(export)), ("seed-demo",)):
        for app_env in ({}, {"APP_ENV": "production"}):
            if args[0] in ("backup", "export"):
                for leftover in (tmp_path / "copy.db", export):
                    leftover.unlink(missing_ok=True)
            result = subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=60,
                                    cwd=ROOT, env={**environ, **app_env}, check=False)
            assert result.returncode == 0, (args, app_env, result.stderr)
    target = {"DATABASE_URL": f"sqlite:///{tmp_path / 'moved.db'}", "APP_ENV": "production"}
    moved = subprocess.run([sys.executable, "-m", "app", "import", str(export)], capture_output=True, text=True,
                           timeout=60, cwd=ROOT, env={**environ, **target, "CREATE_DATABASE": "on"}, check=False)
    assert moved.returncode == 0, moved.stderr
    assert not list(tmp_path.rglob(".supabase-jwt-secret"))  # and none was generated


def test_servers_still_refuse_to_start_in_production_without_a_good_secret(tmp_path):
    environ = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}", "CREATE_DATABASE": "on"}
    for secret, expected in (({}, "SUPABASE_JWT_SECRET is required in production"),
                             ({"SUPABASE_JWT_SECRET": "abc"}, "SUPABASE_JWT_SECRET must be at least 32 bytes")):
        for command in ("serve", "dev-token alice"):
            result = subprocess.run([sys.executable, "-m", "app", *command.split()], capture_output=True, text=True,
                                    timeout=60, cwd=ROOT, env={**environ, **secret, "APP_ENV": "production"},
                                    check=False)
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr.startswith(f"configuration error: {expected}") and "abc" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    serve = subprocess.run([sys.executable, "-m", "app", "serve"], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, env=environ, check=False)  # APP_ENV unset: production
    assert serve.returncode == 2 and "SUPABASE_JWT_SECRET is required in production" in serve.stderr


def test_development_tools_need_no_setup_with_app_env_unset(tmp_path):
    environ = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"}
    token = subprocess.run([sys.executable, "-m", "app", "dev-token", "tom"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT, env=environ, check=False)
    assert token.returncode == 0, token.stderr
    secret = (tmp_path / ".supabase-jwt-secret").read_text().strip()  # development's generated secret
    assert SessionVerifier(secret).user_id(token.stdout.strip(), time.time()) == "tom"


def test_set_tier_refuses_an_unknown_tier(tmp_path):
    result = run(tmp_path, "set-tier", "alice", "platinum")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_configuration_error_is_a_clear_message_not_a_traceback(tmp_path):
    for url in ("mysql://db/keys", "postgresql://keys:hunter2-secret@db:port/keys"):
        result = run(tmp_path, "dev-token", "tom", DATABASE_URL=url)
        assert result.returncode == 2
        assert result.stderr.startswith("configuration error: DATABASE_URL")
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_migrate_says_whether_it_created_upgraded_or_found_the_sqlite_schema_up_to_date(tmp_path):
    from app.store import migrations
    from app.store.migrations import SCHEMA_VERSION

    result = run(tmp_path, "migrate")
    assert (result.returncode, result.stdout.strip()) == (0, f"sqlite: created the schema at version {SCHEMA_VERSION}"), \
        result.stderr
    assert SQLiteStore(tmp_path / "keys.db").ensure_account("alice", 0).tier == "free"
    again = run(tmp_path, "migrate")
    assert (again.returncode, again.stdout.strip()) == (0, f"sqlite: schema at version {SCHEMA_VERSION}, up to date")

    older = tmp_path / "older"
    older.mkdir()
    conn = sqlite3.connect(older / "keys.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    migrations.migrate(conn, target=2)
    conn.execute("COMMIT")
    conn.close()
    upgraded = run(older, "migrate")
    assert (upgraded.returncode, upgraded.stdout.strip()) == (
        0, f"sqlite: schema upgraded from version 2 to {SCHEMA_VERSION}"), upgraded.stderr


def test_migrate_on_a_postgresql_schema_it_cannot_use_says_why_in_one_line(pg_schema):
    from tests.conftest import schema_url

    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": schema_url(pg_schema + "_missing")}
    result = subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == ("migrate: the postgresql schema cannot be created or upgraded: "
                                     "no schema has been selected to create in"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("start", [0, 1], ids=["new", "version-1"])
def test_migrate_on_postgresql_from_several_processes_at_once_runs_each_step_once(tmp_path, pg_schema, start):
    """A new database is created at the current version, once; an older one takes each step once."""
    import psycopg

    from app.store import postgres_migrations
    from tests.conftest import schema_url

    if start:
        with psycopg.connect(schema_url(pg_schema), autocommit=True) as conn:
            postgres_migrations.migrate(conn, target=start)
    env = {"PATH": "/usr/bin:/bin", "SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": schema_url(pg_schema)}
    procs = [subprocess.Popen([sys.executable, "-m", "app", "migrate"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    from app.store.postgres_migrations import SCHEMA_VERSION as PG_SCHEMA_VERSION

    said = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        said.append(out.strip())
    # Each process reports what its own turn under the lock found: one did the work.
    did = (f"postgresql: created the schema at version {PG_SCHEMA_VERSION}" if start == 0
           else f"postgresql: schema upgraded from version 1 to {PG_SCHEMA_VERSION}")
    assert sorted(said) == sorted([did] + [f"postgresql: schema at version {PG_SCHEMA_VERSION}, up to date"] * 3)
    with psycopg.connect(schema_url(pg_schema)) as conn:
        from app.store.postgres_migrations import SCHEMA_VERSION

        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == ([SCHEMA_VERSION] if start == 0 else list(range(1, SCHEMA_VERSION + 1)))


def test_a_sqlite_store_exported_and_imported_into_postgresql_keeps_keys_usage_and_limits(tmp_path, pg_schema):
    from dataclasses import replace

    from app.config import Settings
    from app.domain.keys import KeyService
    from app.domain.ratelimit import RateLimiter
    from app.store import open_store
    from tests.conftest import schema_url

    sqlite_settings = Settings(jwt_secret=SECRET, database_path=tmp_path / "keys.db")
    source = SQLiteStore(sqlite_settings.database_path)
    now = 1_795_000_000.0
    keys = KeyService(source, lambda: now)
    kept = keys.mint("alice", "prod-splunk", 30, "req_1")
    gone = keys.mint("alice", "old-laptop", None, "req_2")
    keys.revoke("alice", gone.record.id, "req_3")
    for n in range(3):
        keys.use(kept.secret, None, f"req_use_{n}")
    source.close()

    export = tmp_path / "keys.jsonl"
    result = run(tmp_path, "export", str(export))
    assert result.returncode == 0, result.stderr
    assert oct(export.stat().st_mode & 0o777) == "0o600"
    assert kept.secret not in export.read_text()
    target_env = {"DATABASE_URL": schema_url(pg_schema)}
    result = run(tmp_path, "import", str(export), **target_env)
    assert result.returncode == 0, result.stderr
    assert "api_keys: 2" in result.stdout and "key_events: 3" in result.stdout

    target = open_store(replace(sqlite_settings, database_url=schema_url(pg_schema)))
    try:
        moved = KeyService(target, lambda: now, limiter=RateLimiter(target))
        assert [k.name for k in target.list_keys("alice", 10, None)] == ["prod-splunk"]
        record, decision = moved.use(kept.secret, None, "req_after")
        assert record.total_requests == 4 and decision.minute.remaining == 10 - 4  # the window came along
        assert [e.type for e in target.list_events("alice", 10, None)] == ["revoked", "minted", "minted"]
    finally:
        target.close()
    again = run(tmp_path, "import", str(export), **target_env)
    assert again.returncode == 1 and "already holds rows" in again.stderr


def test_set_tier_and_dev_token_refuse_a_user_id_that_names_no_account(tmp_path):
    assert run(tmp_path, "migrate").returncode == 0
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


def test_seed_demo_fills_an_account_with_every_key_state_and_a_second_run_adds_nothing(tmp_path):
    from app.domain.keys import KeyService
    from handlers.render import render_api_key_info

    first = run(tmp_path, "seed-demo", "demo@example")
    assert first.returncode == 0, first.stderr
    assert "revoked" in first.stdout and "expired" in first.stdout
    assert "nothing added" in run(tmp_path, "seed-demo", "demo@example").stdout

    keys = KeyService(SQLiteStore(tmp_path / "keys.db"), time.time)
    listed = {r.name: render_api_key_info(keys.info(r)) for r in keys.list("demo@example", 100, None).items}
    assert listed["prod-splunk-2026q2"]["status"] == "active" and listed["prod-splunk-2026q2"]["total_requests"] > 0
    assert listed["prod-splunk-2026q2"]["last_used_at"] is not None
    assert listed["partner-acme-30d"]["status"] == "expired"
    expiring = listed["staging-sentinel"]["expires_at"]
    assert 0 < time.mktime(time.strptime(expiring[:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime()) < 7 * 86400
    assert "tom-laptop-dev" not in listed
    restricted = listed["partner-acme-iocs"]
    assert restricted["scopes"] == restricted["granted_scopes"] == ["iocs:read", "lookup:read"]
    assert listed["soc-office-only"]["allowed_ips"] == ["198.51.100.0/24", "2001:db8::/48"]
    events = [e.type for e in keys.events("demo@example", 100, None).items]
    assert {"minted", "revoked", "rate_limited"} <= set(events)
    assert len(events) == 9  # seven mints, one revocation, one refusal: the second run added none


def test_seed_demo_leaves_the_account_near_its_daily_limit(tmp_path):
    from app.domain.demo import LEFT_TODAY
    from app.domain.keys import KeyService
    from app.domain.ratelimit import Limits, RateLimiter, tier_subject

    assert run(tmp_path, "seed-demo").returncode == 0
    store = SQLiteStore(tmp_path / "keys.db")
    assert KeyService(store, time.time).list("demo-user", 100, None).items
    day = RateLimiter.windows(Limits(10, 1000), time.time())[1]
    counted = store.consume(tier_subject("demo-user"), [day], int(time.time() * 1_000_000)).counts["day"]
    assert counted == 1000 - LEFT_TODAY + 1


def test_export_of_a_missing_or_newer_database_is_one_line_and_creates_nothing(tmp_path):
    missing = tmp_path / "typo.db"
    out = tmp_path / "keys.jsonl"
    result = run(tmp_path, "export", str(out), DATABASE_URL=f"sqlite:///{missing}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("export: ")
    assert not missing.exists() and not out.exists()

    newer = tmp_path / "newer.db"
    SQLiteStore(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    for command in ("export", "import"):
        if command == "import":
            SQLiteStore(tmp_path / "keys.db").close()
            assert run(tmp_path, "export", str(out)).returncode == 0  # a valid export of an empty store
        result = run(tmp_path, command, str(out) if command == "import" else str(tmp_path / "x.jsonl"),
                     DATABASE_URL=f"sqlite:///{newer}")
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "version 99" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()


def test_an_unreachable_postgresql_is_one_line_with_the_reason(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://keys:hunter2-secret@127.0.0.1:{port}/keys"
    export = tmp_path / "keys.jsonl"
    export.write_text('{"format": "socdefenders-keys export", "version": 2, "engine": "sqlite"}\n')
    for args in (("migrate",), ("set-tier", "alice", "pro"), ("export", str(tmp_path / "out.jsonl")),
                 ("import", str(export))):
        result = run(tmp_path, *args, DATABASE_URL=url)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "cannot be reached" in result.stderr and "refused" in result.stderr.lower()
        assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    "host,base",
    [
        ("127.0.0.1", "http://localhost:8000"),
        ("127.0.0.2", "http://localhost:8000"),
        ("::1", "http://localhost:8000"),
        ("0.0.0.0", "http://localhost:8000"),
        ("localhost", "http://localhost:8000"),
        ("192.168.1.20", "http://192.168.1.20:8000"),
        ("keys.internal", "http://keys.internal:8000"),
    ],
)
def test_the_sign_in_link_is_printed_for_the_host_a_browser_on_this_machine_uses(host, base):
    from app.__main__ import browser_base

    assert browser_base(host, 8000) == base


def test_export_refuses_an_existing_file_or_a_symlink_and_leaves_them_alone(tmp_path):
    SQLiteStore(tmp_path / "keys.db").ensure_account("alice", 0)
    existing = tmp_path / "shared.jsonl"
    existing.write_text("keep me\n")
    existing.chmod(0o644)
    elsewhere = tmp_path / "elsewhere.jsonl"
    (tmp_path / "link.jsonl").symlink_to(existing)
    (tmp_path / "dangling.jsonl").symlink_to(elsewhere)
    for name in ("shared.jsonl", "link.jsonl", "dangling.jsonl"):
        result = run(tmp_path, "export", str(tmp_path / name))
        assert result.returncode == 1, result.stdout
        assert result.stderr.strip().splitlines() == [
            f"export: {tmp_path / name} exists already (an export never overwrites): name a new file"]
    assert existing.read_text() == "keep me\n" and oct(existing.stat().st_mode & 0o777) == "0o644"
    assert not elsewhere.exists()
    fresh = tmp_path / "fresh.jsonl"
    assert run(tmp_path, "export", str(fresh)).returncode == 0
    assert oct(fresh.stat().st_mode & 0o777) == "0o600" and "alice" in fresh.read_text()


def test_a_port_in_use_is_one_line_and_exit_2_for_both_servers(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command, app_env in (("run", "production"), ("serve", "production"), ("mock", "")):
            result = run(tmp_path, command, PORT=str(port), HOST="127.0.0.1", APP_ENV=app_env, CREATE_DATABASE="on")
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [
                f"configuration error: port {port} on 127.0.0.1 is in use: stop what listens there, or set PORT"]


def test_an_unresolvable_or_empty_host_or_port_is_one_line_and_exit_2(tmp_path):
    # Names the resolver refuses without asking a name server: no traffic leaves the machine.
    for env, expected in (({"HOST": "no such host"}, "HOST 'no such host' does not resolve"),
                          ({"HOST": "a" * 64 + ".test"}, "does not resolve"),
                          ({"HOST": ""}, "HOST must name an address"),
                          ({"PORT": ""}, "PORT must be a port from 1 to 65535, not ''")):
        for command in ("run", "serve"):
            result = run(tmp_path, command, APP_ENV="production", CREATE_DATABASE="on", **env)
            assert result.returncode == 2, (env, command, result.stderr)
            assert result.stderr.startswith("configuration error: ") and expected in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_export_to_dash_is_refused_in_one_line_and_writes_no_file_named_dash(tmp_path):
    SQLiteStore(tmp_path / "keys.db").close()
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"}
    result = subprocess.run([sys.executable, "-m", "app", "export", "-"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=environ, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("export: ")
    assert "standard output" in result.stderr
    assert not (tmp_path / "-").exists()
