"""Why a store cannot be opened at start: each says so in one line, with no credentials."""

from __future__ import annotations


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
