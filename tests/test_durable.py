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


def test_a_mint_is_answered_after_its_sync_while_the_worker_answers_others(make_app, token, monkeypatch):
    app = make_app()
    real, syncing, release = os.fdatasync, threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        syncing.set()
        assert release.wait(10)
        real(fd)

    async def scenario() -> None:
        assert (await call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem-0"})).status == 201
        monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
        minting = asyncio.create_task(call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem-1"}))
        await until(syncing.is_set)
        # The disk is busy with the mint's sync: the same loop reads and answers other requests ...
        assert (await call(app, "GET", "/healthz")).status == 200
        listed = await call(app, "GET", "/api/v1/keys", token("user-1"))
        # (The key is committed: its owner's list shows it, the window README "Keys and what is stored" names.)
        assert listed.status == 200 and sorted(k["name"] for k in listed.json()["data"]) == ["siem-0", "siem-1"]
        # ... while the mint is not answered until its key is on disk.
        await asyncio.sleep(0.05)
        assert not minting.done()
        release.set()
        minted = await minting
        assert minted.status == 201 and minted.json()["data"]["key"].startswith("sk_live_")

    asyncio.run(scenario())


def test_mints_committed_during_one_sync_are_answered_by_the_next_one(make_app, token, monkeypatch):
    app = make_app()
    store = app.app.extensions["services"].store
    real, syncs = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 1:  # under way while the other seven commit
            deadline = time.monotonic() + 10
            while store._log_sync._asked < 8 and time.monotonic() < deadline:
                time.sleep(0.001)
        real(fd)

    async def scenario() -> list[Answer]:
        monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
        return await asyncio.gather(*(
            call(app, "POST", "/api/v1/keys", token(f"user-{i}"), {"name": "siem"}) for i in range(8)
        ))

    answers = asyncio.run(scenario())
    assert [a.status for a in answers] == [201] * 8
    assert len(syncs) == 2  # the first mint's, then one for the seven that committed while it ran
    stored = {row[0] for row in store._connection().execute("SELECT user_id FROM api_keys")}
    assert stored == {f"user-{i}" for i in range(8)}


def test_a_failed_sync_answers_503_to_each_request_it_was_to_confirm_and_no_other(make_app, token, monkeypatch):
    app = make_app()
    store = app.app.extensions["services"].store
    real, syncs = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 1:
            deadline = time.monotonic() + 10
            while store._log_sync._asked < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            real(fd)
        elif len(syncs) == 2:  # the two mints that committed meanwhile
            raise OSError(5, "Input/output error")
        else:
            real(fd)

    async def scenario() -> list[Answer]:
        monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
        return await asyncio.gather(*(
            call(app, "POST", "/api/v1/keys", token(f"user-{i}"), {"name": "siem"}) for i in range(3)
        ))

    answers = asyncio.run(scenario())
    assert [a.status for a in answers] == [201, 503, 503]
    for refused in answers[1:]:
        error = refused.json()["error"]
        assert error["code"] == "service_unavailable" and error["details"] == {"reason": "unconfirmed"}
        assert "sk_live_" not in refused.body.decode() and "Input/output" not in refused.body.decode()

    async def after() -> Answer:
        return await call(app, "POST", "/api/v1/keys", token("user-9"), {"name": "siem"})

    assert asyncio.run(after()).status == 201 and len(syncs) == 3  # the next write is synced afresh


def test_an_error_after_a_durable_write_is_answered_after_the_write_is_synced(make_app, token, monkeypatch):
    import handlers.keys

    app = make_app()
    real, synced_at = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        time.sleep(0.02)
        real(fd)
        synced_at.append(time.monotonic())

    def broken(*args: Any) -> Any:
        raise RuntimeError("rendering failed")

    async def scenario() -> Answer:
        monkeypatch.setattr(writer.os, "fdatasync", fdatasync)
        monkeypatch.setattr(handlers.keys, "render_api_key_created", broken)
        return await call(app, "POST", "/api/v1/keys", token("user-1"), {"name": "siem"})

    answer = asyncio.run(scenario())
    assert answer.status == 500 and answer.json()["error"]["code"] == "internal_error"
    assert len(synced_at) == 1 and synced_at[0] <= answer.started_at
