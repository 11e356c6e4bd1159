"""bench/corestore.py (the SQLAlchemy Core trial `make bench BENCH=core` measures) gives the shipped store's answers.

One sequence, run once on the shipped `SQLiteStore` and once on `CoreStore` (statements built
per call, or once: `PrebuiltCoreStore`), each on a fresh file, with the same clock and the same
ids and secrets: mints (the key-management limit counted before each, as the web layer does),
a mint refused for a taken name, whoamis of a free account's keys past its 10 a minute (the
first refusal recorded once), the next minute, a revoke, a whoami of the revoked key and of an
unknown one. Every answer (records, decisions, refusals) and every row of every table
afterwards must be identical.
"""

from __future__ import annotations

import itertools
import secrets
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "sqlalchemy", reason="SQLAlchemy (development dependency, `make install`) is missing: bench/corestore.py needs it"
)

from app.domain.errors import ServiceError  # noqa: E402
from app.domain.keys import KeyService  # noqa: E402
from app.domain.ratelimit import Limits, management_subject  # noqa: E402
from app.store import SQLiteStore  # noqa: E402
from bench.corestore import CoreStore, PrebuiltCoreStore  # noqa: E402
from tests.conftest import FakeClock  # noqa: E402

MANAGEMENT = Limits(30, 1_000)
TABLE_ORDER = {"accounts": "user_id", "api_keys": "rowid", "key_events": "rowid", "rate_windows": "subject, \"window\""}


def outcome(call: Any) -> Any:
    """What a call answered: its value, or the refusal it raised (class, message, details)."""
    try:
        return ("ok", call())
    except ServiceError as refusal:
        return ("refused", type(refusal).__name__, refusal.message, refusal.details)


def scenario(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    ids = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(ids)))
    draws = itertools.count(1)
    monkeypatch.setattr(secrets, "randbelow", lambda n: (next(draws) * 0x9E3779B97F4A7C15) % n)
    clock = FakeClock()
    keys = KeyService(store, clock)
    answers: list[Any] = []

    def mint(user: str, name: str, **options: Any) -> Any:
        answers.append(outcome(lambda: keys._limiter.admit(management_subject(user), MANAGEMENT, clock())))
        minted = outcome(lambda: keys.mint(user, name, options.get("days"), f"req-{len(answers)}",
                                           options.get("scopes"), options.get("allowed_ips")))
        answers.append(minted)
        return minted[1] if minted[0] == "ok" else None

    def whoami(secret: str, address: str | None = "203.0.113.9") -> None:
        answers.append(outcome(lambda: keys.use(secret, ["iocs:read"], f"req-{len(answers)}", address)))

    laptop = mint("alice", "laptop", days=30)
    ci = mint("alice", "ci", scopes=["iocs:read", "lookup:read"], allowed_ips=["203.0.113.0/24"])
    mint("alice", "laptop")  # the name is taken
    server = mint("bob", "server")
    keys.set_tier("bob", "pro")
    assert laptop and ci and server
    first, second, pro = laptop.secret, ci.secret, server.secret
    for _ in range(7):
        whoami(first)
        clock.advance(0.5)
    for _ in range(5):  # the account's 8th to 12th requests this minute: two refused, the first refusal recorded
        whoami(second)
        clock.advance(0.5)
    whoami(second, "198.51.100.1")  # outside its allowlist: refused before anything is counted
    whoami(pro)
    clock.advance(60)  # the next minute: admitted again, the day still counting
    whoami(first)
    answers.append(outcome(lambda: keys.revoke("alice", laptop.record.id, "req-revoke")))
    whoami(first)  # revoked
    whoami("sk_live_" + "0" * 38)  # malformed: refused without the store
    whoami(second)
    answers.append(outcome(lambda: keys.account("carol")))  # a new account, created
    answers.append(outcome(lambda: keys.account("carol")))  # and found
    return answers


def tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        # bandit B608: table names and orders from this module's constant.
        return {name: conn.execute(f"SELECT * FROM {name} ORDER BY {order}").fetchall()  # nosec B608
                for name, order in TABLE_ORDER.items()}
    finally:
        conn.close()


@pytest.mark.parametrize("kind", [CoreStore, PrebuiltCoreStore], ids=["built-per-call", "built-once"])
def test_the_core_store_answers_and_stores_exactly_what_the_shipped_store_does(kind, tmp_path, monkeypatch):
    shipped = SQLiteStore(tmp_path / "shipped.db")
    try:
        expected = scenario(shipped, monkeypatch)
    finally:
        shipped.close()

    core = kind(tmp_path / "core.db")
    executed: list[str] = []  # every statement SQLite ran on the Core engine's connections
    from sqlalchemy import event

    event.listen(core._engine, "connect", lambda dbapi_connection, record: dbapi_connection.set_trace_callback(
        executed.append))
    sync = core._log_sync.sync

    def marked_sync() -> None:
        # The Core engine's own durable writes are marked; the shipped store's writes, which
        # this store keeps for revoking and the rest, run on a connection not traced here.
        if sys._getframe(1).f_code.co_name == "_core_write":
            executed.append(LOG_SYNCED)
        sync()

    monkeypatch.setattr(core._log_sync, "sync", marked_sync)
    try:
        answers = scenario(core, monkeypatch)
    finally:
        core.close()

    assert answers == expected
    assert tables(tmp_path / "core.db") == tables(tmp_path / "shipped.db")
    # The scenario exercised what the trial is about.
    uses = [a[1] for a in expected if a[0] == "ok" and type(a[1]).__name__ == "KeyUse"]
    assert len(uses) == 15 and [u.decision.allowed for u in uses].count(False) == 2
    assert [u.key.total_requests for u in uses if u.key.name == "laptop"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert sorted(a[1] for a in expected if a[0] == "refused") == [
        "AddressNotAllowed", "DuplicateName", "InvalidAPIKey", "RevokedAPIKey"]
    stored = tables(tmp_path / "core.db")
    assert sum(1 for e in stored["key_events"] if e[3] == "rate_limited") == 1
    # ... and that it went through SQLAlchemy, not the shipped store's queries: every statement
    # of a mint and of a whoami was executed by the Core engine, in the shipped transactions.
    transactions = write_transactions(executed)
    for fragment in ("FROM api_keys JOIN accounts", "ON CONFLICT (user_id) DO UPDATE", "count(*) FILTER",
                     "INSERT INTO api_keys", "INSERT INTO key_events", "UPDATE rate_windows SET start",
                     "UPDATE rate_windows SET blocked", "RETURNING total_requests", "INSERT INTO rate_windows"):
        assert any(fragment in statement for _, statements in transactions for statement in statements), fragment
    # A key (and an account) is committed and then its log synced; a counted request is not.
    for durable, statements in transactions:
        text = "\n".join(statements)
        assert durable == ("INSERT INTO api_keys" in text or "INSERT INTO accounts" in text and "DO UPDATE" in text), text
    assert any(not durable and "RETURNING total_requests" in "".join(s) for durable, s in transactions)


LOG_SYNCED = "-- the log synced"  # marks, in a trace of statements, a durable write's sync


def write_transactions(executed: list[str]) -> list[tuple[bool, list[str]]]:
    """The write transactions in `executed` (BEGIN IMMEDIATE to COMMIT): whether the log was synced
    after each (a durable write), and its statements. Any other statement outside one is a read in
    a transaction of its own, or a PRAGMA."""
    found: list[tuple[bool, list[str]]] = []
    current = None
    for statement in executed:
        if statement == "BEGIN IMMEDIATE":
            current = []
        elif statement == "COMMIT" and current is not None:
            found.append((False, current))
            current = None
        elif statement == LOG_SYNCED:
            assert current is None and found and not found[-1][0], "a sync follows the COMMIT of one write"
            found[-1] = (True, found[-1][1])
        elif current is not None:
            current.append(statement)
        else:
            assert statement.startswith(("PRAGMA", "BEGIN", "SELECT", "ROLLBACK")), statement
    return found


def test_the_core_statements_lock_where_the_shipped_postgresql_queries_do():
    from sqlalchemy.dialects import postgresql

    from app.store.postgres import PostgresStore
    from bench import corestore

    def pg(statement: Any) -> str:
        return str(statement.compile(dialect=postgresql.dialect()))

    shipped = PostgresStore.compiled()
    assert shipped["key_by_digest"].endswith(" FOR NO KEY UPDATE OF k")
    assert pg(corestore.key_by_digest("d")).endswith(" FOR NO KEY UPDATE OF api_keys")
    assert shipped["windows"].endswith(" FOR UPDATE")
    assert pg(corestore.account_windows("s")).endswith(" FOR UPDATE")
    assert shipped["lock_account"].endswith(" FOR UPDATE")
    assert pg(corestore.lock_account("u")).endswith(" FOR UPDATE")


def test_the_core_key_cap_count_uses_the_active_keys_index(tmp_path):
    """The active-keys count is written on the index's own expression, so it reads the index, as the shipped query does."""
    from sqlalchemy.dialects import sqlite

    from bench import corestore

    store = CoreStore(tmp_path / "core.db")
    try:
        with store._read() as conn:
            statement = corestore.active_keys("alice", "laptop", 1)
            compiled = statement.compile(dialect=sqlite.dialect())
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled),
                                        tuple(compiled.params[p] for p in compiled.positiontup)).all()
    finally:
        store.close()
    assert any("api_keys_active" in row[-1] for row in plan), plan
