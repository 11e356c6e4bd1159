"""A durable write's answer waits for the disk, and the worker's event loop does not (app.web.durable).

Each request here is one call of the ASGI app on one event loop, as a `serve` worker runs it,
so that several requests can be in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.store import writer
from tests.conftest import SECRET


@pytest.fixture(autouse=True)
def sqlite_only(settings: Any) -> None:
    if settings.engine != "sqlite":
        pytest.skip("SQLite's log sync; PostgreSQL syncs inside its own commit")


class Answer:
    """What one request was answered, and when (`time.monotonic()` at its response start)."""

    status = 0
    started_at = 0.0
    body = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: Any, method: str, path: str, cookie: str = "", body: Any = None) -> Answer:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = [(b"host", b"testserver")]
    if raw:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if cookie:
        headers.append((b"cookie", f"sb-access-token={cookie}".encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }
    answer, chunks, received = Answer(), [], False

    async def receive() -> dict:
        nonlocal received
        if received:
            await asyncio.sleep(3600)  # the client stays connected
        received = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer.status, answer.started_at = message["status"], time.monotonic()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    answer.body = b"".join(chunks)
    return answer


@pytest.fixture
def token(clock: Any) -> Callable[[str], str]:
    from app.domain.sessions import issue_token

    return lambda user: issue_token(SECRET, user, clock(), 3600)


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.fixture
def held_sync(monkeypatch: Any) -> tuple[threading.Event, threading.Event]:
    """Syncs of the log from now on wait for `release`; `syncing` is set when one has begun."""
    real, syncing, release = os.fdatasync, threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        syncing.set()
        assert release.wait(10)
        real(fd)

    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    return syncing, release


@pytest.mark.parametrize("tuned", [True, False], ids=["tuned", "plain-connexion"])
def test_a_mint_is_answered_after_its_sync_while_the_worker_answers_others(
    settings, clock, token, tuned, request
):
    from app.web.factory import create_app

    app = create_app(settings, clock=clock, tuned=tuned)
    request.addfinalizer(app.app.extensions["services"].store.close)

    async def scenario() -> None:
        assert (await call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem-0"})).status == 201
        syncing, release = request.getfixturevalue("held_sync")
        minting = asyncio.create_task(call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem-1"}))
        await until(syncing.is_set)
        # The disk is busy with the mint's sync: the same loop reads and answers other requests ...
        assert (await call(app, "GET", "/healthz")).status == 200
        listed = await call(app, "GET", "/api/v1/keys", token("user-1"))
        # (The key is committed: its owner's list shows it, the window README "Keys and what is stored" names.)
        assert listed.status == 200 and sorted(k["name"] for k in listed.json()["data"]) == ["siem-0", "siem-1"]
        # ... while the mint is not answered until its key is on disk, nor a refusal that
        # rests on it: "that name is taken" is said once the key that took it is on disk.
        again = asyncio.create_task(call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem-1"}))
        await asyncio.sleep(0.05)
        assert not minting.done() and not again.done()
        release.set()
        minted, refused = await minting, await again
        assert minted.status == 201 and minted.json()["data"]["key"].startswith("sk_live_")
        assert refused.status == 409 and refused.json()["error"]["code"] == "duplicate_name"
        assert refused.started_at >= minted.started_at

    asyncio.run(scenario())


def test_a_sync_that_does_not_end_answers_503_in_time_while_the_worker_answers_others(
    make_app, token, held_sync, monkeypatch, caplog
):
    from app.web import durable

    monkeypatch.setattr(durable, "SYNC_TIMEOUT_S", 0.3)
    app = make_app()
    syncing, release = held_sync

    async def scenario() -> tuple[Answer, Answer, float]:
        minting = asyncio.create_task(call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem"}))
        await until(syncing.is_set)
        started = time.monotonic()
        health = await call(app, "GET", "/healthz")
        return health, await minting, time.monotonic() - started

    try:
        health, minted, waited = asyncio.run(scenario())
    finally:
        release.set()
    assert health.status == 200
    assert minted.status == 503 and minted.json()["error"]["details"] == {"reason": "unconfirmed"}
    assert waited < 5  # answered at the timeout, not when the disk came back
    # The operator learns why from the log, as from a sync that failed.
    assert [r.getMessage() for r in caplog.records if "did not end" in r.getMessage()] == [
        "syncing the SQLite log did not end within 0.3 s: the writes waiting on it were answered 503 (unconfirmed)"]


def test_a_sync_that_raises_anything_answers_503_unconfirmed(make_app, token, monkeypatch):
    app = make_app()
    real, raised = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        if not raised:
            raised.append(fd)
            raise RuntimeError("not an OSError")
        real(fd)

    async def mint(name: str) -> Answer:
        return await call(app, "POST", "/api/v1/keys", token("user-1"), {"name": name})

    assert asyncio.run(mint("siem-0")).status == 201
    monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
    refused = asyncio.run(mint("siem-1"))
    assert refused.status == 503 and refused.json()["error"]["details"] == {"reason": "unconfirmed"}
    assert "not an OSError" not in refused.body.decode()
    assert asyncio.run(mint("siem-2")).status == 201  # the next sync is tried afresh


def first_then_others(app: Any, token: Callable[[str], str], others: int, monkeypatch: Any,
                      then: Callable[[int], None] = lambda n: None) -> tuple[list[Answer], int]:
    """Mint for user-0; once its sync is under way, mint for `others` more users, then let it end.

    The accounts exist beforehand, so each mint commits once. `then(n)` runs in the n-th sync
    (from 1), after the first has waited for the others' commits; it may raise. Returns the
    answers, user-0's first, and how many syncs there were.
    """
    store = app.app.extensions["services"].store
    for i in range(others + 1):
        store.ensure_account(f"user-{i}", 0)
    base, syncs, syncing = store._log_sync._asked, [], threading.Event()
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 1:  # under way while the others commit
            syncing.set()
            deadline = time.monotonic() + 10
            while store._log_sync._asked < base + 1 + others and time.monotonic() < deadline:
                time.sleep(0.001)
        then(len(syncs))
        real(fd)

    async def scenario() -> list[Answer]:
        monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
        first = asyncio.create_task(call(app, "POST", "/api/v1/keys", token("user-0"), {"name": "siem"}))
        await until(syncing.is_set)
        rest = await asyncio.gather(*(
            call(app, "POST", "/api/v1/keys", token(f"user-{i}"), {"name": "siem"}) for i in range(1, others + 1)
        ))
        return [await first, *rest]

    answers = asyncio.run(scenario())
    monkeypatch.undo()
    return answers, len(syncs)


def test_mints_committed_during_one_sync_are_answered_by_the_next_one(make_app, token, monkeypatch):
    app = make_app()
    answers, syncs = first_then_others(app, token, 7, monkeypatch)
    assert [a.status for a in answers] == [201] * 8
    assert syncs == 2  # the first mint's, then one for the seven that committed while it ran
    store = app.app.extensions["services"].store
    stored = {row[0] for row in store._connection().execute("SELECT user_id FROM api_keys")}
    assert stored == {f"user-{i}" for i in range(8)}


def test_a_failed_sync_answers_503_to_each_request_it_was_to_confirm_and_no_other(make_app, token, monkeypatch):
    app = make_app()

    def fail_second(n: int) -> None:
        if n == 2:  # the sync of the two mints that committed while the first one's ran
            raise OSError(5, "Input/output error")

    answers, _ = first_then_others(app, token, 2, monkeypatch, fail_second)
    assert [a.status for a in answers] == [201, 503, 503]
    for refused in answers[1:]:
        error = refused.json()["error"]
        assert error["code"] == "service_unavailable" and error["details"] == {"reason": "unconfirmed"}
        assert "sk_live_" not in refused.body.decode() and "Input/output" not in refused.body.decode()

    async def after() -> Answer:
        return await call(app, "POST", "/api/v1/keys", token("user-9"), {"name": "siem"})

    assert asyncio.run(after()).status == 201  # the next write is synced afresh


def mint_that_fails_after_writing(app: Any, token: Callable[[str], str], monkeypatch: Any,
                                  fdatasync: Callable[[int], None]) -> Answer:
    """Mint with the log synced by `fdatasync`, the handler raising once the key is stored."""
    import handlers.keys

    def broken(*args: Any) -> Any:
        raise RuntimeError("rendering failed")

    async def scenario() -> Answer:
        monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
        monkeypatch.setattr(handlers.keys, "render_api_key_created", broken)
        return await call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem"})

    return asyncio.run(scenario())


def test_an_error_after_a_durable_write_is_answered_after_the_write_is_synced(make_app, token, monkeypatch):
    real, synced_at = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        time.sleep(0.02)
        real(fd)
        synced_at.append(time.monotonic())

    answer = mint_that_fails_after_writing(make_app(), token, monkeypatch, fdatasync)
    assert answer.status == 500 and answer.json()["error"]["code"] == "internal_error"
    assert len(synced_at) == 1 and synced_at[0] <= answer.started_at


def test_an_error_after_a_durable_write_whose_sync_fails_says_the_change_may_be_saved(
    make_app, token, monkeypatch, caplog
):
    def fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    answer = mint_that_fails_after_writing(make_app(), token, monkeypatch, fdatasync)
    assert answer.status == 503 and answer.json()["error"]["details"] == {"reason": "unconfirmed"}
    # The error it stands in for is still logged, with the request's id.
    request_id = answer.json()["error"]["request_id"]
    assert any(r.getMessage() == f"request {request_id} failed" and r.exc_info for r in caplog.records)
