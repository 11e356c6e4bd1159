"""What the domain keeps: accounts, keys, key events and rate-limit windows, as frozen records.

Times are integer microseconds since the Unix epoch (UTC), except window starts (seconds).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from app.domain.tiers import Tier

R = TypeVar("R")


def evolve(record: R, **changes: Any) -> R:
    """`dataclasses.replace` for the frozen records here (none has `__post_init__` or init-only
    fields): a copy with `changes`, without replace's per-call walk over every field, which a
    key's use paid twice per request."""
    fields = record.__dict__
    unknown = changes.keys() - fields.keys()
    if unknown:
        raise TypeError(f"{type(record).__name__} has no field {', '.join(sorted(unknown))}")
    new = object.__new__(type(record))
    new.__dict__.update(fields)
    new.__dict__.update(changes)
    return new


# Why a key was revoked, as stored with it and told to whoever presents or lists it.
REVOKED_BY_OWNER = "owner"  # DELETE /api/v1/keys/{key_id}
REVOKED_AS_LEAKED = "leaked"  # a leak report (POST /api/v1/leaks)


@dataclass(frozen=True)
class Account:
    user_id: str
    tier: str
    created_us: int


@dataclass(frozen=True)
class KeyRecord:
    id: str
    user_id: str
    name: str
    preview: str
    tier: str
    created_us: int
    expires_us: int | None
    revoked_us: int | None
    total_requests: int
    last_used_us: int | None
    replaced_by: str | None = None  # the key that replaced this one when it was rolled
    revoked_reason: str | None = None  # why it was revoked: REVOKED_BY_OWNER or REVOKED_AS_LEAKED
    # The scopes it was minted with (narrowed since, never widened); None: its tier's full set.
    scopes: tuple[str, ...] | None = None
    # The addresses and CIDR blocks it may be used from, as written; None: anywhere.
    allowed_ips: tuple[str, ...] | None = None


@dataclass(frozen=True)
class KeyInfo:
    """A key as its owner is shown it: the record, its tier's terms and its status at one moment."""

    key: KeyRecord
    tier: Tier
    status: str  # "active", "expired" or "revoked"
    scopes: tuple[str, ...]  # in force now (app.domain.grants.effective_scopes)


@dataclass(frozen=True)
class KeyEvent:
    id: str
    user_id: str
    key_id: str
    type: str
    key_name: str
    key_preview: str
    request_id: str
    occurred_us: int
    details: dict[str, Any]

    @classmethod
    def about(
        cls, key: KeyRecord, kind: str, request_id: str, occurred_us: int, details: dict[str, Any] | None = None
    ) -> KeyEvent:
        """A new event of `kind` about `key`, naming it as it is now."""
        return cls(
            id=str(uuid.uuid4()), user_id=key.user_id, key_id=key.id, type=kind, key_name=key.name,
            key_preview=key.preview, request_id=request_id, occurred_us=occurred_us, details=details or {},
        )


@dataclass(frozen=True)
class Rolled:
    """A roll as written: the old key as it now stands, its replacement, and both events."""

    old: KeyRecord
    new: KeyRecord
    events: tuple[KeyEvent, ...]


@dataclass(frozen=True)
class Window:
    """One rate-limit window to count a request against."""

    kind: str  # "minute" or "day"
    start: int  # window start, Unix seconds
    limit: int


@dataclass(frozen=True)
class StoredWindow:
    """A subject's window of one kind as the store holds it."""

    start: int
    count: int
    blocked: bool  # a request in it has been refused already


@dataclass(frozen=True)
class Consumption:
    """What counting one request against a subject's windows did."""

    allowed: bool
    counts: dict[str, int]  # requests counted in each window, this one included if allowed
    blocked_by: str | None  # the window that refused the request
    first_block: bool  # the first refusal in that window
    usage: tuple[int, int] | None = None  # the key's total_requests and last_used_us after this one
    starts: dict[str, int] | None = None  # the window each count belongs to (see the rule)
