"""The store on PostgreSQL: what differs from SQLite, for the one store in `app.store.sql`.

One database shared by every instance and worker. Each worker process holds a bounded pool of
connections (`psycopg_pool`). Every wait is bounded: connecting, a statement (locks included)
and the wait for a free connection; past it, or with the server unreachable, the store raises
`StoreUnavailable` (the service answers 503 and the rate limiter fails closed). Broken
connections are dropped by the pool and replaced, so the service recovers by itself when the
server is back; a pooled connection the server closed while it sat idle (a restart, a
failover) is found out before it is lent, so it costs no request a 503. Writes lock the rows
they decide on (`FOR UPDATE`, `FOR NO KEY UPDATE OF k`: the dialect below); a write that need
not be durable commits with `synchronous_commit = off`.
"""

from __future__ import annotations

import re
import select
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from app.domain.errors import StoreUnavailable
from app.store import postgres_migrations
from app.store.errors import Migrated, StoreStartError
from app.store.sql import SQLStore

SCHEMA_VERSION = postgres_migrations.SCHEMA_VERSION
PIPELINE = psycopg.Pipeline.is_supported()
DEFAULT_POOL_SIZE = 10
DEFAULT_TIMEOUT_MS = 5000
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

def connection_kwargs(url: str, timeout_ms: int, schema: str | None = None) -> dict[str, Any]:
    """The libpq parameters for `url` with this store's timeouts (and `schema` first on the path)."""
    params: dict[str, Any] = conninfo_to_dict(url)
    options = [params.pop("options", "")] if params.get("options") else []
    options += [
        f"-c statement_timeout={timeout_ms}",
        f"-c lock_timeout={timeout_ms}",
        # A worker that stops mid-transaction must not hold its rows locked for long.
        f"-c idle_in_transaction_session_timeout={max(timeout_ms * 2, 10_000)}",
    ]
    if schema is not None:
        if not SCHEMA_NAME.match(schema):
            raise ValueError(f"not a plain schema name: {schema!r}")
        options.append(f"-c search_path={schema}")
    params["options"] = " ".join(options)
    params.setdefault("connect_timeout", max(2, -(-timeout_ms // 1000)))  # libpq counts whole seconds, 2 at least
    params.setdefault("application_name", "socdefenders-keys")
    return params


class PostgresStore(SQLStore):
    """A Store on one PostgreSQL database (or one schema of it), shared by every instance."""

    DIALECT: ClassVar[dict[str, str]] = {
        "param": "%s", "lock_row": " FOR UPDATE", "lock_key": " FOR NO KEY UPDATE OF k",
        "skip_locked": " FOR UPDATE SKIP LOCKED", "seq": "seq",
    }

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        migrate: bool = True,
    ) -> None:
        super().__init__()
        self._timeout_s = timeout_ms / 1000
        kwargs = connection_kwargs(url, timeout_ms, schema)
        kwargs["autocommit"] = True  # reads are one round trip; writes open their own transaction
        self._pool = ConnectionPool(
            kwargs=kwargs,
            min_size=min(2, pool_size),
            max_size=pool_size,
            timeout=self._timeout_s,
            check=self._check_idle,
            # Never log the connection string: it may carry a password.
            name="keys",
            open=False,
        )
        self._pool.open(wait=False)
        # What the start-up migration found and left (None: not asked for).
        try:
            self.migrated = self.migrate() if migrate else None
        except psycopg.Error as error:  # reached, but refused: no such schema, no CREATE right, a table in the way
            self._pool.close()
            # The server's own sentence, without the statement it quotes.
            reason = error.diag.message_primary or str(error).strip().split("\n")[0] or type(error).__name__
            raise StoreStartError(f"the postgresql schema cannot be created or upgraded: {reason}") from None

    # -- connections ----------------------------------------------------------------------

    def _check_idle(self, conn: psycopg.Connection) -> None:
        """Raise if the server closed `conn` while it sat in the pool (the pool then lends another).

        An idle connection has nothing to read unless the server spoke first: one that restarts,
        fails over or ends the connection sends its farewell and closes the socket. So polling
        the socket, a system call with no round trip, is the check; only a connection with
        something to read is tried with an empty query. One found dead means its idle siblings
        likely died with it: the pool tests them all now, rather than lend each in turn, with
        its growing pause between failed checks.
        """
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        if not poller.poll(0):
            return
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error:
            self._pool.check()
            raise

    @contextmanager
    def _conn(self, timeout_s: float | None = None) -> Iterator[psycopg.Connection]:
        """Lend a pooled connection (waiting at most `timeout_s`, else the store's timeout); a server
        that cannot answer in time is StoreUnavailable."""
        try:
            with self._pool.connection(timeout=timeout_s) as conn:
                yield conn
        except psycopg.OperationalError as error:
            # Unreachable, shut down, too slow (statement or lock timeout), no free connection
            # in time, or a transaction that lost a deadlock or serialisation race: none of
            # them a fault in the request, all worth a retry.
            raise StoreUnavailable("The key store is temporarily unavailable; retry shortly.") from error

    @contextmanager
    def _write(self, *, durable: bool) -> Iterator[psycopg.Connection]:
        """Run one transaction, committed before the block's caller goes on.

        Durable: flushed to disk before the commit returns (key lifecycle). Not durable (rate
        counts, usage and sweeps): visible to every instance and applied in order at
        commit, but a server crash may lose the last fraction of a second of them; this spares
        each counted request a disk flush, which would otherwise set the hot-key limit.
        """
        with self._conn() as conn, conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield conn

    def _batch(self, conn: psycopg.Connection) -> AbstractContextManager[Any]:
        """Pipeline the block's statements: sent together, their results read at its end (libpq 14 and later)."""
        return conn.pipeline() if PIPELINE else nullcontext()

    def close(self) -> None:
        """Close every connection of the pool."""
        self._pool.close()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> Migrated:
        """Create or upgrade the schema; safe when several instances start at once. Says what it found and left."""
        with self._conn() as conn:
            return postgres_migrations.migrate(conn)

    def check_ready(self, timeout_s: float) -> None:
        """Read the database, and that it is a primary, within `timeout_s`; StoreUnavailable if it cannot.

        A read-only transaction: it takes no transaction id and no row lock, so it neither
        waits for writers nor costs a commit. A standby (a read replica) cannot take the
        service's writes, so it is not ready.
        """
        with self._conn(timeout_s) as conn, conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(max(1, int(timeout_s * 1000))),))
            row = conn.execute("SELECT pg_is_in_recovery(), EXISTS (SELECT 1 FROM accounts)").fetchone()
        if row is None or row[0]:
            raise StoreUnavailable("The key store's database is a read-only standby.")

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self._conn() as conn:
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            return int(row[0]) if row else 0
