"""Storage engines for the domain's `Store` protocol (`app.domain.store`)."""

from app.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]
