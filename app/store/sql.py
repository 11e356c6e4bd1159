"""The key store, written once for SQLite and PostgreSQL: every query and every transaction.

Times are integer microseconds since the Unix epoch (UTC). Each query is written here once,
with `?` for its values and named fragments (`{lock_key}`, `{seq}`, ...) where the engines
differ, and compiled into the engine's SQL text once per engine class (`SQLStore.compiled`):
a request pays for no query building. What truly differs between the engines (placeholder
style, row-lock clauses, insertion order, the durable commit, how a transaction starts, which
faults mean "retry shortly", the SQLite writer lock and checkpointer) lives in the engine's
subclass: `SQLiteStore` (app/store/sqlite.py) and `PostgresStore` (app/store/postgres.py),
through the hooks below (`_conn`, `_write`, the `DIALECT` fragments).

Writes that must be atomic across workers and instances run in one transaction each. SQLite
runs one writer at a time, so its row-lock clauses are empty; PostgreSQL locks the rows each
write decides on:
- minting and rolling lock the account row, so the name check, the key cap and the insert of
  one account's keys happen one at a time;
- a key's use locks the key row, then its account's rate-window rows (always in the same
  order), runs the domain's `count_in` rule on them and writes what it says; a revocation
  committed before the lock is seen, one committed after waits for this request to be counted.

Durability is one rule on both engines: what a key's owner did (an account, a tier, a key
minted, rolled or revoked) is on disk before the call returns; counting requests, key usage
and the retention and expiry sweeps are not flushed one by one (a crash of the machine may
lose the last fraction of a second of counts, never a key).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from app.domain import records
from app.domain.keys import check_name_free, check_room_for_key, check_room_for_roll
from app.domain.ratelimit import count_in, tier_subject
from app.domain.records import Account, Consumption, KeyEvent, KeyRecord, Rolled, StoredWindow, Window
from app.domain.tiers import DEFAULT_TIER
from app.store.errors import Migrated
from app.store.schema import ACTIVE_UNTIL

EXPIRY_BATCH = 5000  # passed rate windows deleted per write transaction

_KEY = (
    "k.id, k.user_id, k.name, k.preview, a.tier, k.created_us, k.expires_us, k.revoked_us, "
    "k.total_requests, k.last_used_us, k.replaced_by, k.revoked_reason, k.scopes, k.allowed_ips FROM api_keys k "
    "JOIN accounts a ON a.user_id = k.user_id"
)
_ACCOUNT = "user_id, tier, created_us"
_NEW_KEY = (
    "INSERT INTO api_keys (id, user_id, name, digest, preview, created_us, expires_us, scopes, allowed_ips) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_REVOKE = "UPDATE api_keys SET revoked_us = ?, revoked_reason = ? WHERE id = ?"
# The page after a (time, id) position, newest first. Ties in time fall back to insertion order;
# a cursor naming no row of this account's ends at its time, so another account's id reads as
# one that does not exist.
_AFTER = " AND ({t}.{time}, {t}.{seq}) < (?, (SELECT {seq} FROM {table} WHERE id = ? AND user_id = {t}.user_id))"
_NEWEST = " ORDER BY {t}.{time} DESC, {t}.{seq} DESC LIMIT ?"
_KEYS = "SELECT " + _KEY + " WHERE k.user_id = ?"
_EVENTS = (
    "SELECT e.id, e.user_id, e.key_id, e.type, e.key_name, e.key_preview, e.request_id, e.occurred_us, "
    "e.details FROM key_events e WHERE e.user_id = ?"
)
_PAGES = {"keys": ("k", "created_us", "api_keys"), "events": ("e", "occurred_us", "key_events")}

# Every query, once. `{lock_row}` / `{lock_key}`: the row-lock clause for an account or window
# row / a key row (empty on SQLite, whose one writer at a time needs none); `{skip_locked}`:
# lock, skipping rows another transaction holds; `{seq}`: the column of insertion order.
# bandit B608: SQL from this module's constants; every value is a bound parameter.
QUERIES: dict[str, str] = {
    "account": f"SELECT {_ACCOUNT} FROM accounts WHERE user_id = ?",  # nosec B608
    # DO UPDATE (a no-op write) returns the row even when another instance committed it after
    # this statement's snapshot was taken, which a SELECT beside DO NOTHING would not see.
    "ensure_account": "INSERT INTO accounts (user_id, tier, created_us) VALUES (?, ?, ?) "  # nosec B608
    f"ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id RETURNING {_ACCOUNT}",
    "upsert_tier": "INSERT INTO accounts (user_id, tier, created_us) VALUES (?, ?, ?) "  # nosec B608
    f"ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier RETURNING {_ACCOUNT}",
    "update_tier": f"UPDATE accounts SET tier = ? WHERE user_id = ? RETURNING {_ACCOUNT}",  # nosec B608
    "add_account": "INSERT INTO accounts (user_id, tier, created_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    # The account row is the turnstile of its keys' lifecycle writes.
    "lock_account": "SELECT 1 FROM accounts WHERE user_id = ?{lock_row}",
    # An account's active keys, as the `api_keys_active` index holds them: the cost is the
    # active keys', however many revoked and expired ones the account keeps.
    "active_keys": f"SELECT count(*), count(*) FILTER (WHERE name = ?) FROM api_keys "  # nosec B608
    f"WHERE user_id = ? AND revoked_us IS NULL AND {ACTIVE_UNTIL} > ?",
    "new_key": _NEW_KEY,
    "key": f"SELECT {_KEY} WHERE k.id = ? AND k.user_id = ?",  # nosec B608
    "unrevoked_key": f"SELECT {_KEY} WHERE k.id = ? AND k.user_id = ? AND k.revoked_us IS NULL",  # nosec B608
    "lock_unrevoked_key": f"SELECT {_KEY} WHERE k.id = ? AND k.user_id = ? AND k.revoked_us IS NULL{{lock_key}}",  # nosec B608
    "lock_key": f"SELECT {_KEY} WHERE k.id = ? AND k.user_id = ?{{lock_key}}",  # nosec B608
    "key_by_digest": f"SELECT {_KEY.replace(' FROM', ', k.digest FROM', 1)} WHERE k.digest = ?{{lock_key}}",  # nosec B608
    "revoke": _REVOKE,
    "roll_old": "UPDATE api_keys SET expires_us = ?, replaced_by = ? WHERE id = ?",
    "update_key": "UPDATE api_keys SET name = ?, scopes = ?, allowed_ips = ? WHERE id = ?",
    "event": "INSERT INTO key_events (id, user_id, key_id, type, key_name, key_preview, request_id, "
    "occurred_us, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "prune_revoked": "DELETE FROM api_keys WHERE {seq} IN "
    "(SELECT {seq} FROM api_keys WHERE revoked_us < ? LIMIT ?{skip_locked})",
    "prune_expired": "DELETE FROM api_keys WHERE {seq} IN "
    "(SELECT {seq} FROM api_keys WHERE expires_us < ? LIMIT ?{skip_locked})",
    "prune_events": "DELETE FROM key_events WHERE {seq} IN "
    "(SELECT {seq} FROM key_events WHERE occurred_us < ? LIMIT ?{skip_locked})",
    # Always in the same order: two requests of one account locking its rows in opposite
    # orders would deadlock.
    "windows": 'SELECT "window", start, count, blocked FROM rate_windows WHERE subject = ? ORDER BY "window"{lock_row}',
    # A subject's first request finds no rows to lock: it inserts empty ones (start 0, count 0,
    # which the rule reads as no window) so that it, and any request racing it, has a row to
    # queue on. One row per subject and window kind, overwritten when a new window starts.
    "add_window": 'INSERT INTO rate_windows (subject, "window", start, count, blocked) VALUES (?, ?, 0, 0, ?) '
    "ON CONFLICT DO NOTHING",
    "count_window": "UPDATE rate_windows SET start = ?, count = ?, blocked = CASE WHEN start = ? THEN blocked ELSE ? END "
    'WHERE subject = ? AND "window" = ?',
    "block_window": 'UPDATE rate_windows SET blocked = ? WHERE subject = ? AND "window" = ? AND start = ?',
    "use": "UPDATE api_keys SET total_requests = total_requests + 1, last_used_us = ? WHERE id = ? "
    "RETURNING total_requests, last_used_us",
    "passed_windows": 'SELECT subject FROM rate_windows WHERE "window" = ? AND start < ? AND subject > ? '
    "ORDER BY subject LIMIT ?",
    # Re-checked as it deletes: a row counted in the current window meanwhile is kept.
    "expire_window": 'DELETE FROM rate_windows WHERE subject = ? AND "window" = ? AND start < ?',
    "ping": "SELECT 1 FROM accounts LIMIT 1",
    **{
        f"{name}_page{'_after' if after else ''}{'_all' if everything else ''}": (
            (_KEYS if name == "keys" else _EVENTS)
            + ("" if everything or name == "events" else " AND k.revoked_us IS NULL")
            + (_AFTER if after else "").format(t=t, time=time, table=table, seq="{seq}")
            + _NEWEST.format(t=t, time=time, seq="{seq}")
        )
        for name, (t, time, table) in _PAGES.items()
        for after in (False, True)
        for everything in (False, True)
    },
}


def _json_list(values: Sequence[str] | None) -> str | None:
    """A key's scopes or allowlist as stored: a JSON array, or NULL for none (unrestricted)."""
    return None if values is None else json.dumps(list(values))


def key_record(row: Sequence[Any]) -> KeyRecord:
    """A KeyRecord from a row of `_KEY`'s columns, its scopes and allowlist decoded."""
    *plain, scopes, allowed_ips = row
    return KeyRecord(  # type: ignore[misc]  # `plain` is the twelve fields before these two
        *plain,
        scopes=None if scopes is None else tuple(json.loads(scopes)),
        allowed_ips=None if allowed_ips is None else tuple(json.loads(allowed_ips)),
    )


def _new_key(record: KeyRecord, digest: str) -> tuple[Any, ...]:
    return (
        record.id,
        record.user_id,
        record.name,
        digest,
        record.preview,
        record.created_us,
        record.expires_us,
        _json_list(record.scopes),
        _json_list(record.allowed_ips),
    )


class SQLStore:
    """A Store on a SQL database; an engine's subclass supplies its connections and its dialect.

    Subclasses set `DIALECT` (the fragments above, and `param`, the placeholder) and implement
    `_conn` (a connection for reads, faults mapped to StoreUnavailable) and `_write` (a
    transaction committed before the block's caller goes on, durably when asked).
    """

    DIALECT: ClassVar[dict[str, str]]
    _compiled: ClassVar[dict[str, str]]
    # What the migration run when the store was opened found and left (None: none was run).
    migrated: Migrated | None = None

    @classmethod
    def compiled(cls) -> dict[str, str]:
        """Every query as this engine's SQL text, compiled once per engine class."""
        if "_compiled" not in cls.__dict__:
            fragments = {k: v for k, v in cls.DIALECT.items() if k != "param"}
            cls._compiled = {
                name: sql.format(**fragments).replace("?", cls.DIALECT["param"]) for name, sql in QUERIES.items()
            }
        return cls._compiled

    def __init__(self) -> None:
        self._q = self.compiled()

    # -- the engine's hooks ---------------------------------------------------------------

    def _conn(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self, *, durable: bool) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the engine's connections (and, on SQLite, its background thread)."""
        raise NotImplementedError

    def _batch(self, conn: Any) -> AbstractContextManager[Any]:
        """Send the block's statements together where the engine can (a network round trip saved)."""
        return nullcontext()

    def sql(self, text: str) -> str:
        """`text`, written with `?` placeholders, in this engine's placeholder style."""
        return text.replace("?", self.DIALECT["param"])

    def transaction(self) -> AbstractContextManager[Any]:
        """A durable write transaction on a DB-API connection, for bulk work (`app.store.transfer`)."""
        return self._write(durable=True)

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        with self._conn() as conn:
            conn.execute(self._q["ping"]).fetchall()

    # -- accounts -------------------------------------------------------------------------

    def ensure_account(self, user_id: str, now_us: int) -> Account:
        """Return the user's account, creating it on the default tier if new."""
        with self._conn() as conn:
            row = conn.execute(self._q["account"], (user_id,)).fetchone()
        if row is None:
            with self._write(durable=True) as conn:  # inserted, or found inserted by another worker
                row = conn.execute(self._q["ensure_account"], (user_id, DEFAULT_TIER, now_us)).fetchone()
        return Account(*row)

    def set_tier(self, user_id: str, tier: str, now_us: int, create: bool = True) -> Account | None:
        """Set the user's tier, creating the account if needed and `create`; None if it is not there."""
        with self._write(durable=True) as conn:
            if create:
                row = conn.execute(self._q["upsert_tier"], (user_id, tier, now_us)).fetchone()
            else:
                row = conn.execute(self._q["update_tier"], (tier, user_id)).fetchone()
        return Account(*row) if row else None

    # -- keys -----------------------------------------------------------------------------

    def insert_key(self, record: KeyRecord, digest: str, max_active: int, event: KeyEvent) -> None:
        """Store a new key and its `minted` event, enforcing name uniqueness and the key cap."""
        now = record.created_us
        with self._write(durable=True) as conn:
            conn.execute(self._q["add_account"], (record.user_id, DEFAULT_TIER, now))
            conn.execute(self._q["lock_account"], (record.user_id,)).fetchone()
            count, same_name = conn.execute(self._q["active_keys"], (record.name, record.user_id, now)).fetchone()
            check_room_for_key(record.name, bool(same_name), count, max_active)
            conn.execute(self._q["new_key"], _new_key(record, digest))
            self._insert_event(conn, event)

    def get_key(self, user_id: str, key_id: str, include_revoked: bool = False) -> KeyRecord | None:
        """Return the user's key with this id unless it is revoked (or, with `include_revoked`, even so)."""
        with self._conn() as conn:
            row = conn.execute(self._q["key" if include_revoked else "unrevoked_key"], (key_id, user_id)).fetchone()
        return key_record(row) if row else None

    def list_keys(
        self, user_id: str, limit: int, before: tuple[int, str] | None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        """Return up to `limit` keys, newest first, older than the `before` position; revoked ones only if asked."""
        return [key_record(row) for row in self._page("keys", user_id, limit, before, include_revoked)]

    def revoke_key(
        self, user_id: str, key_id: str, now_us: int, event: KeyEvent, reason: str = records.REVOKED_BY_OWNER
    ) -> KeyRecord | None:
        """Revoke the user's key for `reason` and record the event; None if there is no such unrevoked key."""
        with self._write(durable=True) as conn:
            # Locking the key row waits for a request counting it to finish; a second revocation
            # waits for the first and then finds the key revoked.
            row = conn.execute(self._q["lock_unrevoked_key"], (key_id, user_id)).fetchone()
            if row is None:
                return None
            # The account's rate windows stay: its other keys, and any minted next, share them.
            conn.execute(self._q["revoke"], (now_us, reason, key_id))
            self._insert_event(conn, event)
        return key_record(row)

    def roll_key(
        self, user_id: str, key_id: str, plan: Callable[[KeyRecord], Rolled], digest: str, max_active: int
    ) -> Rolled | None:
        """Replace the user's key as `plan` says, in one transaction; None if there is no such key.

        `plan` sees the key as stored now (revoked ones included) and raises to refuse the roll,
        writing nothing, or returns the old key as it will stand, its replacement and the events.
        The account row is locked first, as minting does, so the key cap (`check_room_for_roll`)
        holds against concurrent mints and rolls; then the key row, so a request counting the
        old key, or a second roll, waits for this one and then sees it.
        """
        with self._write(durable=True) as conn:
            if conn.execute(self._q["lock_account"], (user_id,)).fetchone() is None:
                return None
            row = conn.execute(self._q["lock_key"], (key_id, user_id)).fetchone()
            if row is None:
                return None
            rolled = plan(key_record(row))
            new = rolled.new
            active, _ = conn.execute(self._q["active_keys"], (new.name, user_id, new.created_us)).fetchone()
            check_room_for_roll(rolled, active, max_active)
            conn.execute(self._q["roll_old"], (rolled.old.expires_us, rolled.old.replaced_by, rolled.old.id))
            conn.execute(self._q["new_key"], _new_key(new, digest))
            for event in rolled.events:
                self._insert_event(conn, event)
        return rolled

    def update_key(
        self, user_id: str, key_id: str, plan: Callable[[KeyRecord], tuple[KeyRecord, Sequence[KeyEvent]]]
    ) -> KeyRecord | None:
        """Change the user's unrevoked key as `plan` says, with its events, in one transaction; None if there is none.

        `plan` sees the key as stored now and raises to refuse, writing nothing, or returns the
        key as it will stand and an event per change. The account row is locked first, as
        minting does, so a new name is checked against the active keys one write at a time.
        """
        with self._write(durable=True) as conn:
            if conn.execute(self._q["lock_account"], (user_id,)).fetchone() is None:
                return None
            row = conn.execute(self._q["lock_unrevoked_key"], (key_id, user_id)).fetchone()
            if row is None:
                return None
            old = key_record(row)
            new, events = plan(old)
            if not events:
                return new
            if new.name != old.name:
                _, same_name = conn.execute(self._q["active_keys"], (new.name, user_id, new.created_us)).fetchone()
                check_name_free(new.name, bool(same_name))
            conn.execute(self._q["update_key"], (new.name, _json_list(new.scopes), _json_list(new.allowed_ips), new.id))
            for event in events:
                self._insert_event(conn, event)
        return new

    def revoke_leaked(
        self, digests: Sequence[str], now_us: int, event: Callable[[KeyRecord], KeyEvent]
    ) -> list[KeyRecord]:
        """Revoke every active key stored under one of `digests` as leaked, each with its `event`, at once.

        The key rows are locked in digest order, so two reports naming the same keys take turns
        rather than deadlock.
        """
        if not digests:
            return []
        # bandit B608: SQL from module constants and one placeholder per digest; every value is bound.
        select = self.sql(
            f"SELECT {_KEY} WHERE k.digest IN ({', '.join('?' * len(digests))}) "  # nosec B608
            "AND k.revoked_us IS NULL AND (k.expires_us IS NULL OR k.expires_us > ?) "
            f"ORDER BY k.digest{self.DIALECT['lock_key']}"
        )
        with self._write(durable=True) as conn:
            found = [key_record(row) for row in conn.execute(select, (*digests, now_us)).fetchall()]
            for record in found:
                conn.execute(self._q["revoke"], (now_us, records.REVOKED_AS_LEAKED, record.id))
                self._insert_event(conn, event(record))
        return found

    # -- events ---------------------------------------------------------------------------

    def list_events(self, user_id: str, limit: int, before: tuple[int, str] | None) -> list[KeyEvent]:
        """Return up to `limit` of the user's key events, newest first, older than `before`."""
        return [
            KeyEvent(
                id=row[0],
                user_id=row[1],
                key_id=row[2],
                type=row[3],
                key_name=row[4],
                key_preview=row[5],
                request_id=row[6],
                occurred_us=row[7],
                details=json.loads(row[8]),
            )
            for row in self._page("events", user_id, limit, before)
        ]

    def prune(self, before_us: int, limit: int) -> tuple[int, int]:
        """Delete up to `limit` rows past retention, in one short transaction; return (keys, events).

        Keys revoked, or expired, before `before_us`, and key events that occurred before it.
        Each statement finds its rows through an index, so a batch costs its rows, not the table.
        Rows another transaction holds (PostgreSQL: a key being used right now, or a batch
        another instance is deleting) are skipped, not waited for: the next sweep takes them.
        """
        with self._write(durable=False) as conn:
            keys = 0
            for query in ("prune_revoked", "prune_expired"):
                keys += conn.execute(self._q[query], (before_us, limit - keys)).rowcount
            events = conn.execute(self._q["prune_events"], (before_us, limit - keys)).rowcount
        return keys, events

    # -- rate limits ----------------------------------------------------------------------

    def consume(self, subject: str, windows: Sequence[Window], now_us: int) -> Consumption:
        """Count one request against every window of `subject` if all have room, atomically.

        `windows` are ordered shortest first. (Keys are counted by `use_key`, which also bumps
        their usage and records refusals.)
        """
        with self._write(durable=False) as conn:
            return self._count(conn, subject, windows, now_us)

    def expire_windows(self, current: Sequence[Window]) -> int:
        """Delete every subject's windows that began before the `current` window of their kind; return how many.

        In batches, each its own transaction, so that other writers get their turn in between.
        """
        deleted = 0
        for w in current:
            after = ""  # each batch goes on from the last subject the one before it looked at
            while True:
                with self._write(durable=False) as conn:
                    subjects = [
                        s
                        for (s,) in conn.execute(
                            self._q["passed_windows"], (w.kind, w.start, after, EXPIRY_BATCH)
                        ).fetchall()
                    ]
                    cursor = conn.cursor()
                    cursor.executemany(self._q["expire_window"], [(s, w.kind, w.start) for s in subjects])
                    deleted += cursor.rowcount  # summed over the statements, by either driver
                if len(subjects) < EXPIRY_BATCH:
                    break
                after = subjects[-1]
        return deleted

    def use_key(
        self, digest: str, now_us: int, admit: Callable[[KeyRecord], Sequence[Window]], request_id: str
    ) -> tuple[KeyRecord, Consumption] | None:
        """Look up the key stored under `digest` and count one request of it, in one transaction.

        `admit` sees the key as stored at this moment (revoked, expired, its account's tier) and
        either raises to refuse it, writing nothing, or returns the windows to count it in. The
        windows are its account's (`tier_subject`), shared by all the account's keys; the usage
        counted is the key's own. None if no key has this digest. A key revoked or re-tiered in
        another worker or instance is seen at once.
        """
        with self._write(durable=False) as conn:
            row = conn.execute(self._q["key_by_digest"], (digest,)).fetchone()
            if row is None or not hmac.compare_digest(row[-1], digest):
                return None
            record = key_record(row[:-1])
            counted = self._count(conn, tier_subject(record.user_id), admit(record), now_us, record, request_id)
        if counted.usage is not None:
            # As the key stands after this request: its usage counted with it.
            total_requests, last_used_us = counted.usage
            record = records.evolve(record, total_requests=total_requests, last_used_us=last_used_us)
        return record, counted

    # -- inside a transaction -------------------------------------------------------------

    def _count(
        self,
        conn: Any,
        subject: str,
        windows: Sequence[Window],
        now_us: int,
        key: KeyRecord | None = None,
        request_id: str = "",
    ) -> Consumption:
        """Count a request in `subject`'s windows by the domain's rule, inside the caller's transaction.

        For a `key`, an admitted request also bumps its usage, and the first refusal in a window
        is recorded, once, as a `rate_limited` event about that key (the windows are its
        account's); a refusal after it writes nothing.
        """
        q = self._q
        rows = conn.execute(q["windows"], (subject,)).fetchall()
        if not {w.kind for w in windows} <= {kind for kind, *_ in rows}:
            conn.cursor().executemany(q["add_window"], [(subject, w.kind, False) for w in windows])
            rows = conn.execute(q["windows"], (subject,)).fetchall()
        result = count_in(
            windows, {kind: StoredWindow(start, count, bool(blocked)) for kind, start, count, blocked in rows}
        )
        starts = result.starts or {}
        if result.blocked_by is not None:
            kind = result.blocked_by
            if result.first_block:
                conn.execute(q["block_window"], (True, subject, kind, starts[kind]))
                if key is not None:
                    limit = next(w.limit for w in windows if w.kind == kind)
                    details = {"window": kind, "limit": limit, "applies_to": "account"}
                    self._insert_event(conn, KeyEvent.about(key, "rate_limited", request_id, now_us, details))
            return result
        # The rows exist (and, on PostgreSQL, are locked): overwrite them; a new window restarts its row.
        with self._batch(conn):  # the windows and the key's usage in one round trip
            conn.cursor().executemany(
                q["count_window"],
                [(starts[kind], count, starts[kind], False, subject, kind) for kind, count in result.counts.items()],
            )
            used = None if key is None else conn.execute(q["use"], (now_us, key.id))
        if used is None:
            return result
        usage = used.fetchone()
        return records.evolve(result, usage=(usage[0], usage[1]))

    def _page(
        self, name: str, user_id: str, limit: int, before: tuple[int, str] | None, everything: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """One page of a newest-first listing, after the `before` (time, id) position."""
        query = f"{name}_page{'_after' if before else ''}{'_all' if everything else ''}"
        params = [user_id, *(before or ()), limit]
        with self._conn() as conn:
            return iter(conn.execute(self._q[query], params).fetchall())

    def _insert_event(self, conn: Any, event: KeyEvent) -> None:
        conn.execute(
            self._q["event"],
            (
                event.id,
                event.user_id,
                event.key_id,
                event.type,
                event.key_name,
                event.key_preview,
                event.request_id,
                event.occurred_us,
                json.dumps(event.details),
            ),
        )
