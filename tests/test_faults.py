"""Fault drills against `make serve`'s two workers: the key store read-only, full, locked,
and the server killed mid-storm.

What a client must see each time: the store being unavailable is a 503
`service_unavailable` with `Retry-After` in the contract's envelope (never a 500, never a
201 for a key that was not kept), nothing half-written, and the service working again as
soon as the fault clears, without a restart.

How each fault is made, running as root (which file modes do not stop):
- read-only: `chattr +i` on the database and its write-ahead log. On ext4 the kernel then
  refuses writes even through descriptors opened before (EPERM), as a read-only disk
  would. A read-only remount is not possible here: the kernel refuses it (EBUSY) while
  any file on the filesystem is open for writing, and the server keeps its database open.
  The shared-memory index (`-shm`) made immutable is a drill of its own: it is memory-mapped,
  and writing to an immutable mapping is a SIGBUS, not an error SQLite could report.
- full: the database on a small tmpfs of its own, then filled with a filler file.
- locked: another connection holding `BEGIN EXCLUSIVE` past the 5 s busy timeout.
- killed: SIGKILL to one worker, and to the whole server, while clients mint.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from app.domain.sessions import issue_token
from tests.live import LiveServer

SECRET = "faults-test-secret-0123456789-0123456789-x"
ENV = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2"}
BUSY_TIMEOUT_S = 5


def cookie(user: str) -> dict[str, str]:
    return {"Cookie": f"sb-access-token={issue_token(SECRET, user, time.time(), 3600)}"}


def mint(server: LiveServer, user: str, name: str) -> tuple[int, dict[str, str], Any]:
    return server.request("POST", "/api/v1/keys", {"name": name}, cookie(user))


def whoami(server: LiveServer, key: str) -> tuple[int, dict[str, str], Any]:
    return server.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})


def stored(server: LiveServer, user: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The account's keys and key events, read as the account reads them."""
    status, _, keys = server.request("GET", "/api/v1/keys?limit=100", headers=cookie(user))
    assert status == 200, keys
    status, _, events = server.request("GET", "/api/v1/key-events?limit=100", headers=cookie(user))
    assert status == 200, events
    return keys["data"], events["data"]


def assert_unavailable(answer: tuple[int, dict[str, str], Any]) -> None:
    status, headers, body = answer
    assert status == 503, (status, body)
    assert body["error"]["code"] == "service_unavailable", body
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["request_id"] == headers["x-request-id"]
    assert int(headers["retry-after"]) >= 1


def eventually(call: Any, done: Any, within: float = 5.0) -> Any:
    """Call until done(result), for a few seconds at most; return the last result."""
    deadline = time.monotonic() + within
    while True:
        result = call()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


# -- which store faults are 503s, in process ------------------------------------------------

@pytest.mark.parametrize(("code", "status"), [
    pytest.param(sqlite3.SQLITE_BUSY, 503, id="busy"),
    pytest.param(sqlite3.SQLITE_BUSY_SNAPSHOT, 503, id="busy-snapshot"),
    pytest.param(sqlite3.SQLITE_LOCKED, 503, id="locked"),
    pytest.param(sqlite3.SQLITE_READONLY, 503, id="read-only"),
    pytest.param(sqlite3.SQLITE_IOERR_WRITE, 503, id="write-failed"),
    pytest.param(sqlite3.SQLITE_IOERR_FSYNC, 503, id="fsync-failed"),
    pytest.param(sqlite3.SQLITE_FULL, 503, id="full"),
    pytest.param(sqlite3.SQLITE_CANTOPEN, 503, id="cannot-open"),
    pytest.param(sqlite3.SQLITE_ERROR, 500, id="sql-error-is-a-bug"),
])
def test_a_store_that_cannot_be_used_is_a_503_and_a_bug_is_a_500(
    client: Any, monkeypatch: pytest.MonkeyPatch, code: int, status: int,
) -> None:
    from app.store import SQLiteStore

    def failing_check(self: SQLiteStore, timeout_s: float) -> None:
        error = sqlite3.OperationalError("what SQLite said")
        error.sqlite_errorcode = code
        with self._conn():  # as a query on the store's connection would fail
            raise error

    monkeypatch.setattr(SQLiteStore, "check_ready", failing_check)
    response = client.get("/readyz")
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == ("service_unavailable" if status == 503 else "internal_error")
    assert "what SQLite said" not in response.text
    if status == 503:
        assert response.headers["retry-after"] == "1"


def test_a_mint_whose_disk_sync_fails_is_a_503_saying_the_key_may_be_stored(
    client: Any, session: Any, settings: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if settings.engine != "sqlite":
        pytest.skip("SQLite's log sync; PostgreSQL syncs inside its own commit")
    from app.store import writer

    real, failures = os.fdatasync, [OSError(errno.EIO, "Input/output error")]

    def fdatasync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    assert client.post("/api/v1/keys", json={"name": "siem-0"}, cookies=session()).status_code == 201
    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    response = client.post("/api/v1/keys", json={"name": "siem-1"}, cookies=session())
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "service_unavailable" and error["request_id"] == response.headers["x-request-id"]
    assert "may have been saved" in error["message"] and error["details"] == {"reason": "unconfirmed"}
    assert "sk_live_" not in response.text
    assert "Input/output" not in response.text and response.headers["retry-after"] == "1"
    # The disk answers again: so does the service. The key whose sync failed was committed,
    # and is there for its owner to see (and revoke); its secret was never shown.
    assert client.post("/api/v1/keys", json={"name": "siem-2"}, cookies=session()).status_code == 201
    listed = client.get("/api/v1/keys", cookies=session()).json()["data"]
    assert sorted(key["name"] for key in listed) == ["siem-0", "siem-1", "siem-2"]


# -- read-only ------------------------------------------------------------------------------

@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files immutable (even to root) for the block, and always undo it."""
    done: list[Path] = []
    try:
        for path in paths:
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def require_chattr(directory: Path) -> None:
    probe = directory / "chattr-probe"
    probe.write_bytes(b"x")
    try:
        with immutable(probe):
            try:
                probe.write_bytes(b"y")
            except PermissionError:
                return
        pytest.skip("chattr +i does not stop root's writes here")
    except (FileNotFoundError, subprocess.CalledProcessError):
        pytest.skip("chattr +i is not available on this filesystem")
    finally:
        probe.unlink(missing_ok=True)


@contextmanager
def server_with_chattr(tmp_path: Path) -> Iterator[LiveServer]:
    """A production server with two workers, where `chattr +i` stops root's writes (else skipped)."""
    require_chattr(tmp_path)
    with LiveServer("serve", tmp_path, ENV) as server:
        yield server


def test_read_only_database_answers_503_and_recovers_without_restart(tmp_path: Path) -> None:
    with server_with_chattr(tmp_path) as server:
        database = server.database_path
        status, _, body = mint(server, "ro-user", "before-read-only")
        assert status == 201, body
        key = body["data"]["key"]
        assert whoami(server, key)[0] == 200
        before = stored(server, "ro-user")

        with immutable(database, database.with_name(database.name + "-wal")):
            # Four of each, so both workers meet the fault.
            for attempt in range(4):
                assert_unavailable(mint(server, "ro-user", f"during-read-only-{attempt}"))
                assert_unavailable(whoami(server, key))

        status, _, body = eventually(lambda: mint(server, "ro-user", "after-read-only"), lambda a: a[0] != 503)
        assert status == 201, body
        assert whoami(server, body["data"]["key"])[0] == 200
        assert whoami(server, key)[0] == 200
        keys, events = stored(server, "ro-user")
        assert [k["name"] for k in keys] == ["after-read-only", "before-read-only"]
        assert [(e["type"], e["key_name"]) for e in events] == [
            ("minted", "after-read-only"), *((e["type"], e["key_name"]) for e in before[1])]
        # Refused key checks were not counted: the one before the fault, the one after.
        assert next(k for k in keys if k["name"] == "before-read-only")["total_requests"] == 2
        assert "Traceback" not in server.output()


def test_a_worker_restarted_while_the_database_is_read_only_starts_and_recovers(tmp_path: Path) -> None:
    with server_with_chattr(tmp_path) as server:
        database = server.database_path
        status, _, body = mint(server, "ro-restart", "before")
        assert status == 201, body
        workers = sorted(set(re.findall(r"Booting worker with pid: (\d+)", server.output())))
        with immutable(database, database.with_name(database.name + "-wal")):
            os.kill(int(workers[0]), signal.SIGTERM)  # gunicorn boots a replacement, which meets the fault
            eventually(lambda: len(set(re.findall(r"Booting worker with pid: (\d+)", server.output()))),
                       lambda booted: booted == 3, within=15)
            time.sleep(1)  # the replacement's start-up: before this fix, a failure that stopped the server
            for attempt in range(4):  # both workers, the new one included, answer, and refuse to write
                assert_unavailable(mint(server, "ro-restart", f"during-{attempt}"))
        assert "Shutting down: Master" not in server.output()
        for attempt in range(6):  # writes work again on both workers, without a restart
            status, _, body = eventually(lambda a=attempt: mint(server, "ro-restart", f"after-{a}"),
                                         lambda answer: answer[0] != 503)
            assert status == 201, body
        names = [k["name"] for k in stored(server, "ro-restart")[0]]
        assert sorted(names) == sorted(["before", *(f"after-{a}" for a in range(6))])


def test_workers_started_while_the_log_index_is_immutable_write_again_once_it_is_not(tmp_path: Path) -> None:
    """`chattr +i` on `-shm` mid-run: the workers die of SIGBUS inside SQLite (nothing in the
    process can catch it) and gunicorn boots others, which map the index read-only. They
    answer 503 and are not ready; once the file can be written, they write again, without a
    restart, although their checkpointer and readiness check opened it read-only too."""
    with server_with_chattr(tmp_path) as server:
        shm = server.database_path.with_name(server.database_path.name + "-shm")
        status, _, body = mint(server, "shm-user", "before")
        assert status == 201, body
        booted = len(set(re.findall(r"Booting worker with pid: (\d+)", server.output())))
        with immutable(shm):
            for attempt in range(4):  # each worker's next write ends it; the answer is lost with it
                with suppress(OSError, http.client.HTTPException):
                    mint(server, "shm-user", f"lost-{attempt}")
            eventually(lambda: len(set(re.findall(r"Booting worker with pid: (\d+)", server.output()))),
                       lambda n: n >= booted + 2, within=15)
            time.sleep(1)  # the replacements start, checkpoint and sweep, on the read-only index
            for attempt in range(4):
                assert_unavailable(mint(server, "shm-user", f"during-{attempt}"))
            status, _, body = server.request("GET", "/readyz")
            assert status == 503 and body["error"]["details"] == {"reason": "read_only"}, body
        assert "was sent SIGBUS" in server.output()
        for attempt in range(6):  # both workers write again, without a restart
            status, _, body = eventually(lambda a=attempt: mint(server, "shm-user", f"after-{a}"),
                                         lambda answer: answer[0] != 503)
            assert status == 201, body
        assert eventually(lambda: server.request("GET", "/readyz")[0], lambda s: s == 200) == 200
        names = {k["name"] for k in stored(server, "shm-user")[0]}
        assert {"before", *(f"after-{a}" for a in range(6))} <= names
        assert not any(name.startswith("during-") for name in names)


# -- disk full ------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, unmounted afterwards whatever happens."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem holding `directory` to the last byte; return the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
            block = b"\0" * size
            try:
                while True:
                    out.write(block)
            except OSError as error:
                assert error.errno == 28, error  # ENOSPC
    return filler


def test_full_disk_answers_503_keeps_every_201_and_recovers_without_restart(
    tmp_path: Path, small_disk: Path,
) -> None:
    env = {**ENV, "DATABASE_URL": f"sqlite:///{small_disk}/keys.db"}
    answered: dict[str, list[dict[str, Any]]] = {}  # user -> keys answered 201
    statuses: list[int] = []

    def try_mint(n: int) -> tuple[int, dict[str, str], Any]:
        user = f"full-{n // 5}"  # five keys per account: one whoami each stays inside any per-account limit
        answer = mint(server, user, f"storm-{n}")
        statuses.append(answer[0])
        if answer[0] == 201:
            answered.setdefault(user, []).append(answer[2]["data"])
        return answer

    with LiveServer("serve", tmp_path, env) as server:
        for n in range(5):
            assert try_mint(n)[0] == 201
        early_key = answered["full-0"][0]["key"]
        filler = fill(small_disk)
        try:
            # Some mints may still fit in room SQLite already holds (and must then be kept);
            # the rest must be refused plainly.
            for n in range(5, 65):
                answer = try_mint(n)
                if answer[0] != 201:
                    assert_unavailable(answer)
            assert 503 in statuses, "the store never ran out of room: the drill did not drill"
            status, _, body = whoami(server, early_key)
            assert status in (200, 503), (status, body)
            if status == 503:
                assert_unavailable((status, _, body))
        finally:
            filler.unlink()

        status, _, body = eventually(lambda: try_mint(len(statuses) + 1000), lambda a: a[0] != 503)
        assert status == 201, f"minting did not recover once space was freed: {status} {body}"
        for n in range(3):
            assert try_mint(2000 + n)[0] == 201
        assert set(statuses) <= {201, 503}, statuses

        # Every key answered 201 is kept and works; no key exists that was not answered 201.
        for user, keys in answered.items():
            listed, events = stored(server, user)
            assert sorted(k["id"] for k in listed) == sorted(k["id"] for k in keys), user
            assert sorted(e["key_id"] for e in events if e["type"] == "minted") == sorted(k["id"] for k in keys)
            for key in keys:
                assert whoami(server, key["key"])[0] == 200, key["name"]


# -- locked ---------------------------------------------------------------------------------

def test_database_locked_past_the_busy_timeout_answers_503_then_recovers(tmp_path: Path) -> None:
    with LiveServer("serve", tmp_path, ENV) as server:
        status, _, body = mint(server, "locked-user", "before-lock")
        assert status == 201, body
        key = body["data"]["key"]
        before = stored(server, "locked-user")

        holder = sqlite3.connect(server.database_path, isolation_level=None, timeout=0)
        answers: dict[str, Any] = {}
        try:
            holder.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            calls = {"mint": lambda: mint(server, "locked-user", "during-lock"), "whoami": lambda: whoami(server, key)}
            threads = [threading.Thread(target=lambda n=n, c=c: answers.__setitem__(n, c())) for n, c in calls.items()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=3 * BUSY_TIMEOUT_S)
            waited = time.monotonic() - started
        finally:
            holder.execute("ROLLBACK") if holder.in_transaction else None
            holder.close()

        assert set(answers) == {"mint", "whoami"}, f"no answer within {3 * BUSY_TIMEOUT_S} s: {answers}"
        assert_unavailable(answers["mint"])
        assert_unavailable(answers["whoami"])
        assert waited < 3 * BUSY_TIMEOUT_S

        status, _, body = mint(server, "locked-user", "after-lock")
        assert status == 201, body
        assert whoami(server, key)[0] == 200
        keys, events = stored(server, "locked-user")
        assert [k["name"] for k in keys] == ["after-lock", "before-lock"]
        assert len(events) == len(before[1]) + 1
        assert next(k for k in keys if k["name"] == "before-lock")["total_requests"] == 1


# -- killed mid-storm -----------------------------------------------------------------------

class Storm:
    """Clients minting keys as fast as the server answers, each key in an account of its own."""

    def __init__(self, server: LiveServer, label: str, clients: int = 4, most: int = 400) -> None:
        self.server, self.label, self.most = server, label, most
        self.answered: list[tuple[str, dict[str, Any]]] = []  # (user, data) for every 201
        self.sent = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Storm:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            with self._lock:
                if self.sent >= self.most:
                    return
                self.sent += 1
            user = f"{self.label}-{client}-{n}"
            n += 1
            try:
                status, _, body = mint(self.server, user, f"storm-{n}")
            except (OSError, http.client.HTTPException) as error:  # the server went away mid-request
                self.failures.append(type(error).__name__)
                time.sleep(0.05)
                continue
            if status == 201:
                with self._lock:
                    self.answered.append((user, body["data"]))
            else:
                self.failures.append(str(status))

    def wait_for(self, count: int, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while len(self.answered) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.answered) >= count, f"only {len(self.answered)} keys minted in {within} s"


def assert_every_201_kept(server: LiveServer, answered: list[tuple[str, dict[str, Any]]], in_flight: int) -> None:
    """Every key answered 201 is listed and works; at most `in_flight` others exist."""
    users = sorted({user for user, _ in answered})
    extra = 0
    for user in users:
        listed = {k["id"] for k in stored(server, user)[0]}
        mine = {data["id"] for u, data in answered if u == user}
        assert mine <= listed, f"{user}: keys answered 201 are gone: {mine - listed}"
        extra += len(listed - mine)
    assert extra <= in_flight
    for _, data in answered:
        status, _, body = whoami(server, data["key"])
        assert status == 200, (data["name"], status, body)


def test_sigkill_of_a_worker_mid_storm_loses_no_201(tmp_path: Path) -> None:
    with LiveServer("serve", tmp_path, ENV) as server:
        workers = sorted(set(re.findall(r"Booting worker with pid: (\d+)", server.output())))
        assert len(workers) == 2
        with Storm(server, "worker-kill") as storm:
            storm.wait_for(30)
            os.kill(int(workers[0]), signal.SIGKILL)
            at_kill = len(storm.answered)
            storm.wait_for(at_kill + 30)  # the other worker, then the replacement, go on minting
        assert_every_201_kept(server, storm.answered, in_flight=4)
        booted = set(re.findall(r"Booting worker with pid: (\d+)", server.output()))
        assert len(booted) == 3, "gunicorn did not replace the killed worker"


def test_sigkill_of_the_server_mid_storm_loses_no_201(tmp_path: Path) -> None:
    with LiveServer("serve", tmp_path, ENV) as server:
        with Storm(server, "server-kill") as storm:
            storm.wait_for(40)
            assert server.process is not None
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
            time.sleep(0.2)  # let the clients see the server gone
        answered = list(storm.answered)
    assert answered

    with LiveServer("serve", tmp_path, ENV) as again:
        assert_every_201_kept(again, answered, in_flight=4)
    conn = sqlite3.connect(again.database_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()

