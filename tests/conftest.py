"""Fixtures: a fresh app on a temporary database, a clock the tests move by hand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from app.config import Settings
from app.domain.sessions import issue_token
from app.store import SQLiteStore

SECRET = "test-secret-0123456789-0123456789-abcdef"
START = 1_795_000_000.0  # a fixed instant in November 2026


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(jwt_secret=SECRET, database_path=tmp_path / "keys.db", cors_origin_regex="")


@pytest.fixture
def store(settings: Settings) -> SQLiteStore:
    return SQLiteStore(settings.database_path)


@pytest.fixture
def make_app(settings: Settings, clock: FakeClock) -> Callable[..., Any]:
    def make(**changes: Any) -> Any:
        return create_app(replace(settings, **changes), clock=clock)

    return make


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Any:
    with app.test_client() as test_client:
        yield test_client


@pytest.fixture
def session(clock: FakeClock) -> Callable[[str], dict[str, str]]:
    """Return the cookies of a signed-in user."""

    def cookies(user_id: str = "user-1", ttl: int = 3600) -> dict[str, str]:
        return {"sb-access-token": issue_token(SECRET, user_id, clock(), ttl)}

    return cookies


@pytest.fixture
def mint(client: Any, session: Callable[..., dict[str, str]]) -> Callable[..., dict[str, Any]]:
    """Mint a key over HTTP and return the 201 body's `data`."""

    def do(name: str = "prod-splunk-2026q2", user_id: str = "user-1", **body: Any) -> dict[str, Any]:
        response = client.post("/api/v1/keys", json={"name": name, **body}, cookies=session(user_id))
        assert response.status_code == 201, response.text
        return response.json()["data"]

    return do
