"""Start-up as an operator meets it: a database or setting the service cannot use is one line
and a non-zero exit, before any server starts; a newer schema is refused and left untouched;
a production database is never created by mistake; a live database is backed up and restored."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from app.domain.sessions import issue_token
from app.store import SCHEMA_VERSION, SchemaTooNew, SQLiteStore
from tests.live import ROOT, LiveServer, free_port

SECRET = "startup-test-secret-0123456789-0123456789-a"


def start(command: str, database, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET,
               "DATABASE_URL": f"sqlite:///{database}", "PORT": "1", **env}
    return subprocess.run([sys.executable, "-m", "app", command], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=environ, check=False)


def assert_one_line_refusal(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ") and words in lines[0], lines[0]


def stamp_newer(path) -> None:
    """Stamp the database as a newer version of the service leaves it (after a rollback)."""
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()  # the last connection: the write-ahead log is folded into the file


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_refuses_a_newer_schema_and_leaves_it_as_it_was(tmp_path):
    path = tmp_path / "keys.db"
    SQLiteStore(path).close()
    stamp_newer(path)
    with pytest.raises(SchemaTooNew):
        SQLiteStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_newer_schema_is_refused_at_start_in_one_line(tmp_path, command):
    path = tmp_path / "keys.db"
    SQLiteStore(path).close()
    stamp_newer(path)
    before = digest(path)
    assert_one_line_refusal(start(command, path), f"schema is version {SCHEMA_VERSION + 1}, newer")
    assert digest(path) == before


@pytest.mark.parametrize("command", ["run", "serve"])
def test_production_never_creates_a_missing_database_unless_told(tmp_path, command):
    typo = tmp_path / "kyes.db"
    assert_one_line_refusal(start(command, typo), "does not exist")
    assert not typo.exists()
    result = start("migrate", typo)
    assert result.returncode == 0, result.stderr
    assert typo.exists()


def test_create_database_on_lets_production_create_it(tmp_path):
    path = tmp_path / "new" / "keys.db"
    result = subprocess.run(
        [sys.executable, "-m", "app", "set-tier", "--create", "alice", "pro"], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET,
                       "DATABASE_URL": f"sqlite:///{path}", "CREATE_DATABASE": "on"})
    assert result.returncode == 0, result.stderr
    assert SQLiteStore(path).ensure_account("alice", 0).tier == "pro"


def unusable_configurations(tmp_path) -> list[tuple[str, dict[str, str], str]]:
    (tmp_path / "a-directory.db").mkdir()
    (tmp_path / "notes.db").write_text("not a database, just some notes\n" * 100)
    (tmp_path / "a-file").write_text("")
    good = tmp_path / "good.db"
    SQLiteStore(good).close()
    return [
        ("directory", {"DATABASE_URL": f"sqlite:///{tmp_path}/a-directory.db"}, "is a directory"),
        ("not sqlite", {"DATABASE_URL": f"sqlite:///{tmp_path}/notes.db"}, "not a usable SQLite database"),
        ("unopenable", {"DATABASE_URL": f"sqlite:///{tmp_path}/a-file/keys.db", "CREATE_DATABASE": "on"},
         "cannot open the SQLite database"),
        ("log level", {"DATABASE_URL": f"sqlite:///{good}", "LOG_LEVEL": "bogus"}, "LOG_LEVEL must be one of"),
        ("log format", {"DATABASE_URL": f"sqlite:///{good}", "LOG_FORMAT": "logfmt"}, "LOG_FORMAT must be one of"),
        ("port", {"DATABASE_URL": f"sqlite:///{good}", "PORT": "80a"}, "PORT must be a whole number"),
        ("workers", {"DATABASE_URL": f"sqlite:///{good}", "WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY must be at least 1"),
    ]


@pytest.mark.parametrize("command", ["run", "serve"])
def test_every_unusable_configuration_is_one_line_and_a_non_zero_exit(tmp_path, command):
    for name, env, words in unusable_configurations(tmp_path):
        result = start(command, "unused", **env)
        try:
            assert_one_line_refusal(result, words)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_backup_of_a_live_database_under_writes_restores_with_working_keys(tmp_path):
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2",
           "KEY_MANAGEMENT_LIMIT_PER_MINUTE": "100000"}
    owner = {"Cookie": f"sb-access-token={issue_token(SECRET, 'backup-owner', time.time(), 3600)}"}
    backup_path = tmp_path / "backup.db"
    with LiveServer("serve", tmp_path, env) as server:
        before = [server.request("POST", "/api/v1/keys", {"name": f"before-{n}"}, owner)[2]["data"] for n in range(3)]
        stop, minted = threading.Event(), []

        def keep_writing() -> None:
            n = 0
            while not stop.is_set():
                status, _, body = server.request("POST", "/api/v1/keys", {"name": f"during-{n}"}, owner)
                if status == 201:
                    minted.append(body["data"]["id"])
                    server.request("DELETE", f"/api/v1/keys/{body['data']['id']}", headers=owner)
                n += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            time.sleep(0.3)
            result = subprocess.run([sys.executable, "-m", "app", "backup", str(backup_path)], capture_output=True,
                                    text=True, timeout=60, cwd=ROOT, env=server.env, check=False)
            time.sleep(0.3)
        finally:
            stop.set()
            writer.join()
        assert result.returncode == 0, result.stderr
        assert minted, "no writes ran during the backup"
        after = server.request("POST", "/api/v1/keys", {"name": "after-backup"}, owner)[2]["data"]
    with sqlite3.connect(backup_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # Restore as the README says: the service stopped, the file replaced, its -wal and -shm removed.
    database = server.database_path
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(backup_path, database)
    with LiveServer("serve", tmp_path, {**env, "CREATE_DATABASE": "off"}) as restored:
        for key in before:
            status, _, body = restored.request("GET", "/api/v1/whoami", headers={"X-API-Key": key["key"]})
            assert status == 200 and body["data"]["id"] == key["id"]
        status, _, body = restored.request("GET", "/api/v1/whoami", headers={"X-API-Key": after["key"]})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"  # minted after the copy was taken


def test_backup_never_overwrites_a_file(tmp_path):
    path = tmp_path / "keys.db"
    SQLiteStore(path).close()
    (tmp_path / "taken.db").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "app", "backup", str(tmp_path / "taken.db")], capture_output=True,
                            text=True, timeout=60, cwd=ROOT, check=False,
                            env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{path}"})
    assert result.returncode == 1 and "exists already" in result.stderr
    assert (tmp_path / "taken.db").read_text() == "keep me"


def gunicorn_entry_point(tmp_path, env: dict[str, str]) -> LiveServer:
    """The ASGI entry point as app/asgi.py documents it, started by gunicorn itself (not `serve`)."""
    server = LiveServer("asgi", tmp_path, env)
    server.argv = [sys.executable, "-m", "gunicorn", "-k", "app.asgi.Worker", "--workers", "1",
                   "--bind", f"127.0.0.1:{server.port}", "--no-control-socket", "app.asgi:from_env()"]
    return server


def test_the_asgi_entry_point_without_app_env_serves_no_development_feature(tmp_path):
    # LiveServer passes no APP_ENV: a real secret and nothing else, as the review started it.
    with gunicorn_entry_point(tmp_path, {"SUPABASE_JWT_SECRET": SECRET}) as server:
        status, headers, _ = server.request("GET", "/dev/login?user=anyone&tier=pro")
        assert status == 404 and "set-cookie" not in headers
        status, _, body = server.request("GET", "/api/v1/keys", headers={"Prefer": "code=200"})
        assert status == 401 and body["error"]["code"] == "missing_session"  # Prefer is not honoured
        assert server.request("GET", "/api/v1/keys", headers={"Prefer": "delay=soon"})[0] == 401
        assert server.request("GET", "/")[0] == 404  # nor the key page
        assert "env=production" in server.output() and "env=development" not in server.output()
    assert not list(tmp_path.rglob(".supabase-jwt-secret"))


def startup_line(server: LiveServer) -> str:
    return next(line for line in server.output().splitlines() if "socdefenders-keys" in line and " starting (" in line)


def test_the_asgi_entry_point_under_gunicorn_says_gunicorns_worker_count(tmp_path):
    # `-w 1` on the command line; WEB_CONCURRENCY, which gunicorn's command line overrides, says 3.
    server = gunicorn_entry_point(tmp_path, {"SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "3"})
    with server:
        line = startup_line(server)
    assert "starting (gunicorn worker)" in line and " workers=1" in line, line


def test_the_asgi_entry_point_under_plain_uvicorn_says_uvicorn_and_one_worker(tmp_path):
    server = LiveServer("uvicorn", tmp_path, {"SUPABASE_JWT_SECRET": SECRET})
    server.env.pop("WEB_CONCURRENCY", None)
    server.argv = [sys.executable, "-m", "uvicorn", "--factory", "app.asgi:from_env",
                   "--host", "127.0.0.1", "--port", str(server.port)]
    with server:
        line = startup_line(server)
    assert "starting (uvicorn)" in line and " workers=1" in line and "gunicorn" not in line, line


def test_the_asgi_entry_point_without_app_env_or_secret_refuses_to_start(tmp_path):
    server = gunicorn_entry_point(tmp_path, {})
    result = subprocess.run(server.argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=server.env,
                            check=False)
    assert result.returncode != 0
    assert "configuration error: SUPABASE_JWT_SECRET is required in production" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob(".supabase-jwt-secret"))
    short = subprocess.run(server.argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                           env={**server.env, "SUPABASE_JWT_SECRET": "abc"}, check=False)
    assert short.returncode != 0 and "SUPABASE_JWT_SECRET must be at least 32 bytes" in short.stderr


def ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
@pytest.mark.parametrize("command", ["run", "serve"])
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_run_and_serve_listen_on_ipv6_loopback_and_print_it_in_brackets(tmp_path, command, host):
    env = {"HOST": host, "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "1", "TMPDIR": str(tmp_path),
           "APP_ENV": "development" if command == "run" else "production"}
    server = LiveServer(command, tmp_path, env)
    server.base = f"http://[::1]:{server.port}"  # answered over IPv6, or the server never starts
    with server:
        assert server.request("GET", "/healthz")[0] == 200
        if command == "run":
            banner = server.output()
            assert f"http://[::1]:{server.port}/openapi.json" in banner and "http://::1:" not in banner
            assert f"http://localhost:{server.port}/dev/login?user=" in banner
    assert list(tmp_path.glob("socdefenders-keys-metrics-*")) == []


def test_a_serve_that_fails_to_start_leaves_no_metrics_directory(tmp_path):
    database = tmp_path / "keys.db"
    SQLiteStore(database).close()
    # gunicorn refuses to start after its configuration is read: it cannot write its pid file.
    result = start("serve", database, PORT=str(free_port()), HOST="127.0.0.1", TMPDIR=str(tmp_path),
                   GUNICORN_CMD_ARGS=f"--pid {tmp_path}/no-such-dir/gunicorn.pid")
    assert result.returncode != 0
    assert list(tmp_path.glob("socdefenders-keys-metrics-*")) == []
