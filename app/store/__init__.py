"""Storage engines for the domain's `Store` protocol (`app.domain.store`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.store.errors import DatabaseMissing, SchemaTooNew, StoreStartError
from app.store.sqlite import SCHEMA_VERSION, SQLiteStore

if TYPE_CHECKING:
    from app.config import Settings
    from app.domain.store import Store

__all__ = ["SCHEMA_VERSION", "DatabaseMissing", "SQLiteStore", "SchemaTooNew", "StoreStartError", "open_store"]


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
