"""The domain's `Store` protocol (`app.domain.store`) on SQL: one store (`app.store.sql`), two engines.

Every query is written once, in `app.store.sql`; what differs between SQLite and PostgreSQL
lives in each engine's subclass (`app.store.sqlite`, `app.store.postgres`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.store.errors import DatabaseMissing, SchemaTooNew, StoreStartError
from app.store.sqlite import SCHEMA_VERSION, SQLiteStore

if TYPE_CHECKING:
    from app.config import Settings
    from app.domain.store import Store

__all__ = [
    "SCHEMA_VERSION", "DatabaseMissing", "SQLiteStore", "SchemaTooNew", "StoreStartError", "open_store", "unreachable",
]


def open_store(settings: Settings, migrate: bool = True, create: bool | None = None) -> Store:
    """Open the store `settings` name: PostgreSQL for a postgresql:// DATABASE_URL, else SQLite.

    A missing SQLite file is created only with `create` (default: `settings.create_database`).
    """
    if settings.engine == "postgresql":
        from app.store.postgres import PostgresStore  # the driver loads only where it is used

        return PostgresStore(
            settings.database_url, pool_size=settings.database_pool_size,
            timeout_ms=settings.database_timeout_ms, migrate=migrate,
        )
    return SQLiteStore(settings.database_path, create=settings.create_database if create is None else create)


def unreachable(settings: Settings) -> str | None:
    """Why the database `settings` name cannot be reached, in one line, or None (SQLite: a file is always reached).

    One attempt, so that the reason (refused, no such database, authentication) is the one
    line, rather than a pool's retries logged one by one and a bare "unavailable".
    """
    if settings.engine != "postgresql":
        return None
    import psycopg

    from app.store.postgres import connection_kwargs

    try:
        psycopg.connect(**connection_kwargs(settings.database_url, settings.database_timeout_ms)).close()
    except psycopg.Error as exc:
        # libpq's message names the host, port, database and user, never the password.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return f"the postgresql database cannot be reached: {reason}"
    return None
