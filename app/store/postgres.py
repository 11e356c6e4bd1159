"""The key store on PostgreSQL: one database shared by every instance and worker.

Times are integer microseconds since the Unix epoch (UTC), as on SQLite. Each worker process
holds a bounded pool of connections (`psycopg_pool`). Every wait is bounded: connecting, a
statement (locks included) and the wait for a free connection; past it, or with the server
unreachable, the store raises `StoreUnavailable` (the service answers 503 and the rate
limiter fails closed). Broken connections are dropped by the pool and replaced, so the
service recovers by itself when the server is back; a pooled connection the server closed
while it sat idle (a restart, a failover) is found out before it is lent, so it costs no
request a 503.

Writes that must be atomic across instances lock the rows they decide on:
- minting locks the account row (`FOR UPDATE`), so the name check, the key cap and the insert
  of one account's keys happen one at a time;
- a key's use locks the key row, then its account's rate-window rows, runs the domain's
  `count_in` rule on them and writes what it says, all in one transaction; a revocation
  committed before the lock is seen, one committed after waits for this request to be counted.
"""

from __future__ import annotations

import hmac
import json
import re
import select
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from app.domain import records
from app.domain.errors import StoreUnavailable
from app.domain.keys import check_room_for_key, roll_over_cap
from app.domain.ratelimit import count_in, tier_subject
from app.domain.records import Account, Consumption, KeyEvent, KeyRecord, Rolled, StoredWindow, Window
from app.domain.tiers import DEFAULT_TIER
from app.store import postgres_migrations
from app.store.migrations import ACTIVE_UNTIL

SCHEMA_VERSION = postgres_migrations.SCHEMA_VERSION
DEFAULT_POOL_SIZE = 10
DEFAULT_TIMEOUT_MS = 5000
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_KEY_COLUMNS = (
    "k.id, k.user_id, k.name, k.preview, a.tier, k.created_us, k.expires_us, k.revoked_us, "
    "k.total_requests, k.last_used_us, k.replaced_by, k.revoked_reason"
)
_KEY_FROM = "api_keys k JOIN accounts a ON a.user_id = k.user_id"
# An account's active keys (user id, then now), as the `api_keys_active` index holds them: the
# cost is the active keys', however many revoked and expired ones the account keeps.
_ACTIVE = f"user_id = %s AND revoked_us IS NULL AND {ACTIVE_UNTIL} > %s"
_EVENT_COLUMNS = (
    "e.id, e.user_id, e.key_id, e.type, e.key_name, e.key_preview, e.request_id, e.occurred_us, e.details"
)


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


class PostgresStore:
    """A Store on one PostgreSQL database (or one schema of it), shared by every instance."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        migrate: bool = True,
    ) -> None:
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
        if migrate:
            self.migrate()

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
    def _write(self, durable: bool = True) -> Iterator[psycopg.Connection]:
        """Run one transaction, committed before the block's caller goes on.

        Durable: flushed to disk before the commit returns (key lifecycle). Not durable (rate
        counts and usage, as on SQLite): visible to every instance and applied in order at
        commit, but a server crash may lose the last fraction of a second of them; this spares
        each counted request a disk flush, which would otherwise set the hot-key limit.
        """
        with self._conn() as conn, conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield conn

    def close(self) -> None:
        """Close every connection of the pool."""
        self._pool.close()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema; safe when several instances start at once."""
        with self._conn() as conn:
            return postgres_migrations.migrate(conn)

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        with self._conn() as conn:
            conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchall()

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

    # -- accounts -------------------------------------------------------------------------

    def ensure_account(self, user_id: str, now_us: int) -> Account:
        """Return the user's account, creating it on the default tier if new."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT user_id, tier, created_us FROM accounts WHERE user_id = %s", (user_id,)
            ).fetchone()
            if row is None:
                # Inserted, or found inserted by another instance meanwhile. DO UPDATE (a no-op
                # write) returns that row even when it was committed after this statement's
                # snapshot was taken, which a SELECT beside DO NOTHING would not see.
                row = conn.execute(
                    "INSERT INTO accounts (user_id, tier, created_us) VALUES (%s, %s, %s) "
                    "ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id "
                    "RETURNING user_id, tier, created_us",
                    (user_id, DEFAULT_TIER, now_us),
                ).fetchone()
        assert row is not None
        return Account(*row)

    def set_tier(self, user_id: str, tier: str, now_us: int, create: bool = True) -> Account | None:
        """Set the user's tier, creating the account if needed and `create`; None if it is not there."""
        with self._conn() as conn:
            if not create:
                row = conn.execute(
                    "UPDATE accounts SET tier = %s WHERE user_id = %s RETURNING user_id, tier, created_us", (tier, user_id)
                ).fetchone()
                return Account(*row) if row else None
            row = conn.execute(
                "INSERT INTO accounts (user_id, tier, created_us) VALUES (%s, %s, %s) "
                "ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier RETURNING user_id, tier, created_us",
                (user_id, tier, now_us),
            ).fetchone()
        assert row is not None
        return Account(*row)

    # -- keys -----------------------------------------------------------------------------

    def insert_key(self, record: KeyRecord, digest: str, max_active: int, event: KeyEvent) -> None:
        """Store a new key and its `minted` event, enforcing name uniqueness and the key cap."""
        now = record.created_us
        with self._write() as conn:
            # The account row is the turnstile: one mint per account at a
            # time, in every instance, so the name check and the count below stay true until commit.
            locked = conn.execute(
                "SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (record.user_id,)
            ).fetchone()
            if locked is None:
                conn.execute(
                    "INSERT INTO accounts (user_id, tier, created_us) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (record.user_id, DEFAULT_TIER, now),
                )
                conn.execute("SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (record.user_id,))
            row = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE name = %s) FROM api_keys WHERE {_ACTIVE}",  # nosec B608
                (record.name, record.user_id, now),
            ).fetchone()
            assert row is not None
            count, same_name = row
            check_room_for_key(record.name, bool(same_name), count, max_active)
            conn.execute(
                "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (record.id, record.user_id, record.name, digest, record.preview, now, record.expires_us),
            )
            _insert_event(conn, event)

    def get_key(self, user_id: str, key_id: str, include_revoked: bool = False) -> KeyRecord | None:
        """Return the user's key with this id unless it is revoked (or, with `include_revoked`, even so)."""
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608 -- module constants; values bound
                "WHERE k.id = %s AND k.user_id = %s" + ("" if include_revoked else " AND k.revoked_us IS NULL"),
                (key_id, user_id),
            ).fetchone()
        return KeyRecord(*row) if row else None

    def list_keys(
        self, user_id: str, limit: int, before: tuple[int, str] | None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        """Return up to `limit` keys, newest first, older than the `before` position; revoked ones only if asked."""
        sql = f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} WHERE k.user_id = %s"  # nosec B608
        if not include_revoked:
            sql += " AND k.revoked_us IS NULL"
        with self._conn() as conn:
            rows = _newest_first(conn, sql, [user_id], "k", "api_keys", "created_us", before, limit)
        return [KeyRecord(*row) for row in rows]

    def revoke_key(
        self, user_id: str, key_id: str, now_us: int, event: KeyEvent, reason: str = records.REVOKED_BY_OWNER
    ) -> KeyRecord | None:
        """Revoke the user's key for `reason` and record the event; None if there is no such unrevoked key."""
        with self._write() as conn:
            # Locking the key row waits for a request counting it to finish; a second revocation
            # waits for the first and then finds the key revoked.
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608 -- module constants; values bound
                "WHERE k.id = %s AND k.user_id = %s AND k.revoked_us IS NULL FOR NO KEY UPDATE OF k",
                (key_id, user_id),
            ).fetchone()
            if row is None:
                return None
            # The account's rate windows stay: its other keys, and any minted next, share them.
            conn.execute(
                "UPDATE api_keys SET revoked_us = %s, revoked_reason = %s WHERE id = %s", (now_us, reason, key_id)
            )
            _insert_event(conn, event)
        return KeyRecord(*row)

    def roll_key(
        self, user_id: str, key_id: str, plan: Callable[[KeyRecord], Rolled], digest: str, max_active: int
    ) -> Rolled | None:
        """Replace the user's key as `plan` says, in one transaction; None if there is no such key.

        As `SQLiteStore.roll_key`. The account row is locked first, as minting does, so the key
        cap holds against concurrent mints and rolls; then the key row, so a request counting
        the old key, or a second roll, waits for this one and then sees it.
        """
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (user_id,)).fetchone() is None:
                return None
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608 -- module constants; values bound
                "WHERE k.id = %s AND k.user_id = %s FOR NO KEY UPDATE OF k",
                (key_id, user_id),
            ).fetchone()
            if row is None:
                return None
            rolled = plan(KeyRecord(*row))
            now = rolled.new.created_us
            if rolled.old.expires_us is None or rolled.old.expires_us > now:
                counted = conn.execute(
                    f"SELECT count(*) FROM api_keys WHERE {_ACTIVE}", (user_id, now)  # nosec B608 -- constants
                ).fetchone()
                assert counted is not None
                if counted[0] >= max_active:
                    raise roll_over_cap(counted[0], max_active)
            conn.execute(
                "UPDATE api_keys SET expires_us = %s, replaced_by = %s WHERE id = %s",
                (rolled.old.expires_us, rolled.old.replaced_by, rolled.old.id),
            )
            new = rolled.new
            conn.execute(
                "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (new.id, new.user_id, new.name, digest, new.preview, new.created_us, new.expires_us),
            )
            for event in rolled.events:
                _insert_event(conn, event)
        return rolled

    def revoke_leaked(
        self, digests: Sequence[str], now_us: int, event: Callable[[KeyRecord], KeyEvent]
    ) -> list[KeyRecord]:
        """Revoke every active key stored under one of `digests` as leaked, each with its `event`, at once.

        The key rows are locked in digest order, so two reports naming the same keys take turns
        rather than deadlock.
        """
        if not digests:
            return []
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM {_KEY_FROM} "  # nosec B608 -- module constants; values bound
                "WHERE k.digest = ANY(%s) AND k.revoked_us IS NULL AND (k.expires_us IS NULL OR k.expires_us > %s) "
                "ORDER BY k.digest FOR NO KEY UPDATE OF k",
                (list(digests), now_us),
            ).fetchall()
            found = [KeyRecord(*row) for row in rows]
            for record in found:
                conn.execute(
                    "UPDATE api_keys SET revoked_us = %s, revoked_reason = %s WHERE id = %s",
                    (now_us, records.REVOKED_AS_LEAKED, record.id),
                )
                _insert_event(conn, event(record))
        return found

    # -- events ---------------------------------------------------------------------------

    def list_events(self, user_id: str, limit: int, before: tuple[int, str] | None) -> list[KeyEvent]:
        """Return up to `limit` of the user's key events, newest first, older than `before`."""
        sql = f"SELECT {_EVENT_COLUMNS} FROM key_events e WHERE e.user_id = %s"  # nosec B608
        with self._conn() as conn:
            rows = _newest_first(conn, sql, [user_id], "e", "key_events", "occurred_us", before, limit)
        return [
            KeyEvent(
                id=row[0], user_id=row[1], key_id=row[2], type=row[3], key_name=row[4],
                key_preview=row[5], request_id=row[6], occurred_us=row[7], details=json.loads(row[8]),
            )
            for row in rows
        ]

    def prune(self, before_us: int, limit: int) -> tuple[int, int]:
        """Delete up to `limit` rows past retention, in one short transaction; return (keys, events).

        As `SQLiteStore.prune`. Rows another transaction holds (a key being used right now, or
        a batch another instance is deleting) are skipped, not waited for: the next sweep
        takes them.
        """
        with self._write(durable=False) as conn:
            keys = 0
            for column in ("revoked_us", "expires_us"):
                deleted = conn.execute(
                    f"DELETE FROM api_keys WHERE id IN (SELECT id FROM api_keys WHERE {column} < %s "  # nosec B608 -- literal column
                    "LIMIT %s FOR UPDATE SKIP LOCKED)",
                    (before_us, limit - keys),
                )
                keys += deleted.rowcount
            events = conn.execute(
                "DELETE FROM key_events WHERE id IN (SELECT id FROM key_events WHERE occurred_us < %s "
                "LIMIT %s FOR UPDATE SKIP LOCKED)",
                (before_us, limit - keys),
            ).rowcount
        return keys, events

    # -- rate limits ----------------------------------------------------------------------

    def consume(self, subject: str, windows: Sequence[Window], now_us: int) -> Consumption:
        """Count one request against every window of `subject` if all have room, atomically.

        `windows` are ordered shortest first. (Keys are counted by `use_key`.)
        """
        with self._write(durable=False) as conn:
            return _count(conn, subject, windows, now_us)

    def expire_windows(self, current: Sequence[Window]) -> int:
        """Delete every subject's windows that began before the `current` window of their kind; return how many.

        A row a request holds locked is waited for, then re-read: counted in the current window
        by then, it is kept.
        """
        with self._write(durable=False) as conn:
            return sum(
                conn.execute('DELETE FROM rate_windows WHERE "window" = %s AND start < %s', (w.kind, w.start)).rowcount
                for w in current
            )

    def use_key(
        self, digest: str, now_us: int, admit: Callable[[KeyRecord], Sequence[Window]], request_id: str
    ) -> tuple[KeyRecord, Consumption] | None:
        """Look up the key stored under `digest` and count one request of it, in one transaction.

        As `SQLiteStore.use_key`: `admit` sees the key as stored now and raises to refuse it
        (nothing is written) or returns its account's windows to count it in.
        """
        with self._write(durable=False) as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS}, k.digest FROM {_KEY_FROM} "  # nosec B608 -- module constants; values bound
                "WHERE k.digest = %s FOR NO KEY UPDATE OF k",
                (digest,),
            ).fetchone()
            if row is None or not hmac.compare_digest(row[-1], digest):
                return None
            record = KeyRecord(*row[:-1])
            counted = _count(conn, tier_subject(record.user_id), admit(record), now_us, record, request_id)
        if counted.usage is not None:
            total_requests, last_used_us = counted.usage
            record = replace(record, total_requests=total_requests, last_used_us=last_used_us)
        return record, counted


def _locked_windows(conn: psycopg.Connection, subject: str, kinds: Sequence[str]) -> dict[str, StoredWindow]:
    """Read `subject`'s windows with their rows locked until the transaction ends.

    A subject's first request finds no rows to lock: it inserts empty ones (start 0, count 0,
    which the rule reads as no window) so that it, and any request racing it, has a row to
    queue on.
    """
    # Always in the same order: two requests of one account (two of its keys, or two
    # key-management calls) locking its rows in opposite orders would deadlock.
    select = 'SELECT "window", start, count, blocked FROM rate_windows WHERE subject = %s ORDER BY "window" FOR UPDATE'
    rows = conn.execute(select, (subject,)).fetchall()
    if {kind for kind, *_ in rows} < set(kinds):
        conn.execute(
            pgsql.SQL('INSERT INTO rate_windows (subject, "window", start, count, blocked) VALUES {} '
                      "ON CONFLICT DO NOTHING").format(
                pgsql.SQL(", ").join(pgsql.SQL("(%s, %s, 0, 0, false)") for _ in kinds)
            ),
            [value for kind in kinds for value in (subject, kind)],
        )
        rows = conn.execute(select, (subject,)).fetchall()
    return {kind: StoredWindow(start, count, blocked) for kind, start, count, blocked in rows}


def _count(
    conn: psycopg.Connection,
    subject: str,
    windows: Sequence[Window],
    now_us: int,
    key: KeyRecord | None = None,
    request_id: str = "",
) -> Consumption:
    """Count a request in `subject`'s windows by the domain's rule, inside the caller's transaction.

    For a `key`, an admitted request also bumps its usage, and the first refusal in a window
    is recorded as a `rate_limited` event about that key (the windows are its account's).
    """
    stored = _locked_windows(conn, subject, [w.kind for w in windows])
    result = count_in(windows, stored)
    starts = result.starts or {}
    if result.blocked_by is not None:
        kind = result.blocked_by
        if result.first_block:
            conn.execute(
                'UPDATE rate_windows SET blocked = true WHERE subject = %s AND "window" = %s AND start = %s',
                (subject, kind, starts[kind]),
            )
            if key is not None:
                limit = next(w.limit for w in windows if w.kind == kind)
                details = {"window": kind, "limit": limit, "applies_to": "account"}
                _insert_event(conn, KeyEvent.about(key, "rate_limited", request_id, now_us, details))
        return result
    # The rows exist and are locked: overwrite them (a new window restarts its row).
    counts = list(result.counts.items())
    update = pgsql.SQL(
        "UPDATE rate_windows w SET start = v.start, count = v.count, "
        "blocked = CASE WHEN w.start = v.start THEN w.blocked ELSE false END "
        'FROM (VALUES {}) AS v ("window", start, count) WHERE w.subject = %s AND w."window" = v."window"'
    ).format(pgsql.SQL(", ").join(pgsql.SQL("(%s::text, %s::bigint, %s::bigint)") for _ in counts))
    params: list[Any] = [value for kind, count in counts for value in (kind, starts[kind], count)] + [subject]
    if key is None:
        conn.execute(update, params)
        return result
    # One statement for both writes: the windows, and the key's usage returned as it now stands.
    usage = conn.execute(
        pgsql.SQL("WITH counted AS ({}) UPDATE api_keys SET total_requests = total_requests + 1, "
                  "last_used_us = %s WHERE id = %s RETURNING total_requests, last_used_us").format(update),
        params + [now_us, key.id],
    ).fetchone()
    assert usage is not None
    return replace(result, usage=(usage[0], usage[1]))


def _newest_first(
    conn: psycopg.Connection, sql: str, params: list[Any], alias: str, table: str, time_column: str,
    before: tuple[int, str] | None, limit: int,
) -> list[tuple[Any, ...]]:
    """Run `sql` as one page of a newest-first listing, after the `before` (time, id) position."""
    if before is not None:
        # Ties in time fall back to insertion order (seq); a cursor naming no row of this
        # account's ends at its time, so another account's id reads as one that does not exist.
        sql += (f" AND ({alias}.{time_column}, {alias}.seq) < "  # nosec B608 -- literals from this module
                f"(%s, (SELECT seq FROM {table} WHERE id = %s AND user_id = {alias}.user_id))")
        params = params + list(before)
    sql += f" ORDER BY {alias}.{time_column} DESC, {alias}.seq DESC LIMIT %s"
    return conn.execute(sql, params + [limit]).fetchall()  # type: ignore[call-overload]


def _insert_event(conn: psycopg.Connection, event: KeyEvent) -> None:
    conn.execute(
        "INSERT INTO key_events (id, user_id, key_id, type, key_name, key_preview, request_id, "
        "occurred_us, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (event.id, event.user_id, event.key_id, event.type, event.key_name, event.key_preview,
         event.request_id, event.occurred_us, json.dumps(event.details)),
    )
