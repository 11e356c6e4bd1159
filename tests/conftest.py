"""Fixtures: a fresh app on a temporary database, a clock the tests move by hand."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from app import create_app
from app.config import Settings
from app.domain.sessions import issue_token
from app.domain.store import Store
from app.store import open_store

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


# -- engines ------------------------------------------------------------------------------
# A test module that sets `ENGINES = ("sqlite", "postgresql")` runs each of its tests that
# uses `settings` (or `store`, `app`, `client`, ...) once per engine; a test marked
# `sqlite_only` (it reaches into SQLite's files or locks) runs on SQLite alone. PostgreSQL
# runs are skipped, saying so, when TEST_DATABASE_URL is unreachable, unless
# REQUIRE_POSTGRES=1 (CI), which makes that a failure.

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: runs on SQLite alone (it reaches into SQLite internals)")
    config.addinivalue_line("markers", "postgresql_only: runs on PostgreSQL alone (its locks and timeouts)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    engines = getattr(metafunc.module, "ENGINES", ("sqlite",))
    if "engine" in metafunc.fixturenames and metafunc.definition.get_closest_marker("sqlite_only") is None:
        if metafunc.definition.get_closest_marker("postgresql_only") is not None:
            engines = tuple(e for e in engines if e == "postgresql")
        metafunc.parametrize("engine", engines, indirect=True)


_postgres_checked: dict[str, str | None] = {}


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None if they can (checked once)."""
    if TEST_DATABASE_URL not in _postgres_checked:
        import psycopg

        try:
            psycopg.connect(TEST_DATABASE_URL, connect_timeout=3).close()
            _postgres_checked[TEST_DATABASE_URL] = None
        except psycopg.Error as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _postgres_checked[TEST_DATABASE_URL] = f"PostgreSQL tests did not run: TEST_DATABASE_URL unreachable ({reason})"
    return _postgres_checked[TEST_DATABASE_URL]


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    name = getattr(request, "param", "sqlite")
    if name == "postgresql" and (reason := postgres_unavailable()):
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    return name


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema, dropped (with every connection to it) afterwards."""
    yield from fresh_pg_schema()


def fresh_pg_schema() -> Iterator[str]:
    """Yield a new PostgreSQL schema; drop it, and every connection to it, afterwards."""
    import psycopg

    if reason := postgres_unavailable():
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
            # Stores a test left open would otherwise keep their connections.
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (schema,))
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def schema_url(schema: str) -> str:
    """TEST_DATABASE_URL with `schema` as the search path, and as the application name."""
    options = quote(f"-c search_path={schema}", safe="")
    separator = "&" if "?" in TEST_DATABASE_URL else "?"
    return f"{TEST_DATABASE_URL}{separator}options={options}&application_name={schema}"


@pytest.fixture
def settings(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    database_url = schema_url(request.getfixturevalue("pg_schema")) if engine == "postgresql" else ""
    return Settings(jwt_secret=SECRET, database_path=tmp_path / "keys.db", cors_origin_regex="",
                    database_url=database_url, database_pool_size=4)


@pytest.fixture
def open_stores(settings: Settings) -> Iterator[Callable[[], Store]]:
    """Open stores on the test's database, as further workers or instances would; closed after."""
    opened: list[Store] = []

    def another() -> Store:
        opened.append(open_store(settings))
        return opened[-1]

    yield another
    for store in opened:
        store.close()


@pytest.fixture
def store(open_stores: Callable[[], Store]) -> Store:
    return open_stores()


@pytest.fixture
def query(open_stores: Callable[[], Store]) -> Callable[..., list[tuple]]:
    """Run one SQL query (`?` placeholders) on the test's database, whichever the engine."""
    opened: list[Any] = []

    def run(sql: str, params: tuple = ()) -> list[tuple]:
        if not opened:
            opened.append(open_stores())
        store = opened[0]
        with store._conn() as conn:
            return conn.execute(store.sql(sql), params).fetchall()

    return run


@pytest.fixture
def make_app(settings: Settings, clock: FakeClock) -> Iterator[Callable[..., Any]]:
    apps: list[Any] = []

    def make(**changes: Any) -> Any:
        apps.append(create_app(replace(settings, **changes), clock=clock))
        return apps[-1]

    yield make
    for app in apps:
        app.app.extensions["services"].store.close()


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
