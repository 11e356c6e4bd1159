"""What opening a store found: why it cannot be opened at start (each in one line, with no
credentials), or what its migration did (`Migrated`)."""

from __future__ import annotations

from typing import NamedTuple


class Migrated(NamedTuple):
    """What a migration found under its lock, and the version it left: `found` 0 is a schema it created."""

    found: int
    now: int

    def report(self, engine: str) -> str:
        """One line for an operator: created, upgraded, or already up to date."""
        if self.found == 0:
            return f"{engine}: created the schema at version {self.now}"
        if self.found < self.now:
            return f"{engine}: schema upgraded from version {self.found} to {self.now}"
        return f"{engine}: schema at version {self.now}, up to date"


class StoreStartError(Exception):
    """The configured database cannot serve as the store; the service refuses to start."""


class DatabaseMissing(StoreStartError):
    """The SQLite file does not exist and creating it was not asked for."""


class SchemaTooNew(StoreStartError):
    """The database was written by a newer version of the service (a rollback): left untouched."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"the database's schema is version {found}, newer than this version of the service "
            f"understands ({supported}); run the newer version, or restore a backup taken before the upgrade"
        )
        self.found = found
        self.supported = supported
