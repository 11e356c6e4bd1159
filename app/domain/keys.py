"""Key minting and verification: the rules of the key lifecycle."""

from __future__ import annotations

import functools
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from app.domain import keymaterial
from app.domain.errors import (
    AddressNotAllowed,
    DuplicateName,
    ExpiredAPIKey,
    InsufficientScope,
    InvalidAPIKey,
    InvalidParameter,
    KeyLimitReached,
    KeyNotFound,
    KeyNotRollable,
    RevokedAPIKey,
    ServiceError,
)
from app.domain.grants import address_allowed, allowed_networks, allowlist, effective_scopes, granted_scopes
from app.domain.ratelimit import Decision, Limits, RateLimiter
from app.domain.records import REVOKED_AS_LEAKED, Account, KeyEvent, KeyInfo, KeyRecord, Rolled, Window
from app.domain.store import Store
from app.domain.tiers import get_tier

Clock = Callable[[], float]
DAY_US = 86_400 * 1_000_000
MINUTE_US = 60 * 1_000_000
MAX_GRACE_MINUTES = 7 * 24 * 60
CURSOR = re.compile(r"^([0-9]{16})([0-9a-f]{32})$")

# Names the vendor's naming convention calls useless for audit trails, and their kin.
USELESS_NAME = re.compile(r"^(my[ _-]?)?(api[ _-]?)?(key|test|token|temp|tmp|default|new)[ _-]?[0-9]*$", re.IGNORECASE)
NAME_HINT = (
    "Names like 'key1', 'my key' or 'test' make audit trails useless. Prefer descriptive, "
    "deployment-aware names such as 'prod-splunk-2026q2', 'staging-sentinel' or 'tom-laptop-dev'."
)
MINT_WARNING = "Store this API key securely. It will not be shown again."
MAX_USER_ID_LENGTH = 200
MAX_NAME_LENGTH = 100  # characters, as stored (in NFC): the contract's maxLength
# Format characters beyond the Basic Multilingual Plane: invisible, and out of reach of the
# contract's pattern (JSON Schema tools differ on astral characters in a regex), so removed
# from a name before it is stored or compared.
INVISIBLE_BEYOND_BMP = re.compile(
    "[\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
    # and the non-characters that end every plane beyond the first (U+1FFFE, ..., U+10FFFF)
    + "".join(chr(plane * 0x10000 + 0xFFFE) + chr(plane * 0x10000 + 0xFFFF) for plane in range(1, 17))
    + "]"
)


def canonical_name(name: str) -> str:
    """Return the form a key name is stored and compared in; InvalidParameter if none is left.

    One spelling per name: `é` typed as one code point or as `e` and a combining accent looks
    the same, so names are kept in NFC, without invisible format characters (and without the
    spaces that removing them would leave doubled or at an end), and at most MAX_NAME_LENGTH
    characters long in that form.
    """
    if INVISIBLE_BEYOND_BMP.search(name):
        name = " ".join(word for word in INVISIBLE_BEYOND_BMP.sub("", name).split(" ") if word)
        if not name:
            raise InvalidParameter(
                "name is invalid: it must contain a visible character.",
                {"field": "name", "in": "body", "constraint": "pattern"},
            )
    name = unicodedata.normalize("NFC", name)
    # The contract's maxLength counts the name as sent; NFC can make it longer (U+FB2C is three
    # code points in NFC), and the bound holds on what is stored.
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidParameter(
            f"name is invalid: must be at most {MAX_NAME_LENGTH} characters in Unicode NFC, the form it is "
            f"stored in ({len(name)} here: some characters, such as U+FB2C, are several in NFC).",
            {"field": "name", "in": "body", "constraint": "maxLength", "expected": MAX_NAME_LENGTH},
        )
    return name


def valid_user_id(user_id: str) -> bool:
    """Tell whether `user_id` can name an account: printable, not blank, no surrounding space."""
    return 0 < len(user_id) <= MAX_USER_ID_LENGTH and user_id.isprintable() and user_id.strip() == user_id


@dataclass(frozen=True)
class MintedKey:
    """A new key: its record and the secret, which exists nowhere else."""

    record: KeyRecord
    secret: str
    name_hint: str | None


@dataclass(frozen=True)
class RolledKey:
    """A roll: the replacement (with its secret) and the old key as it now stands."""

    minted: MintedKey
    old: KeyRecord


class LeakReport(NamedTuple):
    """What a leak report did: the candidates received, and how many active keys it revoked."""

    received: int
    revoked: int


class KeyUse(NamedTuple):
    """A presented key that was found, and whether its rate limit admitted this request."""

    key: KeyRecord
    decision: Decision


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


class KeyService:
    """Mint, list, read, revoke and verify API keys."""

    def __init__(
        self, store: Store, clock: Clock, max_active_keys: int = 50, limiter: RateLimiter | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_active = max_active_keys
        self._limiter = limiter if limiter is not None else RateLimiter(store)

    def now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def account(self, user_id: str) -> Account:
        """Return the user's account, created on the free tier at first sight."""
        return self._store.ensure_account(user_id, self.now_us())

    def set_tier(self, user_id: str, tier: str, create: bool = True) -> Account | None:
        """Move the user's account, and with it every key it holds, to `tier`.

        An account not yet seen is created when `create`, else left alone and None returned.
        """
        if not valid_user_id(user_id):
            raise InvalidParameter(
                f"A user id is 1 to {MAX_USER_ID_LENGTH} printable characters with no surrounding space.",
                {"field": "user_id"},
            )
        get_tier(tier)
        return self._store.set_tier(user_id, tier, self.now_us(), create)

    def mint(
        self,
        user_id: str,
        name: str,
        expires_in_days: int | None,
        request_id: str,
        scopes: Sequence[str] | None = None,
        allowed_ips: Sequence[str] | None = None,
    ) -> MintedKey:
        """Mint a key for the user; the secret is returned here and never again.

        `scopes` (default: the tier's full set) must be a non-empty subset of the account's tier's;
        `allowed_ips` (default: anywhere) up to MAX_ALLOWED_IPS addresses or CIDR blocks.
        """
        name = canonical_name(name)
        account = self.account(user_id)
        if scopes is not None:
            scopes = granted_scopes(scopes, get_tier(account.tier).scopes, account.tier)
        if allowed_ips is not None:
            allowed_ips = allowlist(allowed_ips)
        now = self.now_us()
        secret = keymaterial.generate()
        record = KeyRecord(
            id=str(uuid.uuid4()),
            user_id=user_id,
            name=name,
            preview=keymaterial.preview(secret),
            tier=account.tier,
            created_us=now,
            expires_us=None if expires_in_days is None else now + expires_in_days * DAY_US,
            revoked_us=None,
            total_requests=0,
            last_used_us=None,
            scopes=None if scopes is None else tuple(scopes),
            allowed_ips=None if allowed_ips is None else tuple(allowed_ips),
        )
        details = {
            **({} if record.scopes is None else {"scopes": list(record.scopes)}),
            **({} if record.allowed_ips is None else {"allowed_ips": list(record.allowed_ips)}),
        }
        self._store.insert_key(
            record,
            keymaterial.digest(secret),
            self._max_active,
            KeyEvent.about(record, "minted", request_id, now, details),
        )
        hint = NAME_HINT if USELESS_NAME.match(name.strip()) else None
        return MintedKey(record, secret, hint)

    def roll(self, user_id: str, key_id: str, grace_minutes: int, request_id: str) -> RolledKey:
        """Replace the user's key with a new one of the same name, tier and expiry.

        The old key keeps working for `grace_minutes` (never past its own expiry), then
        answers as expired, naming its replacement. KeyNotRollable for a revoked, expired or
        already rolled key; KeyNotFound if the user has no key with this id.
        """
        if not 0 <= grace_minutes <= MAX_GRACE_MINUTES:
            raise InvalidParameter(
                f"grace_period_minutes must be from 0 to {MAX_GRACE_MINUTES}.",
                {"field": "grace_period_minutes", "in": "body"},
            )
        now = self.now_us()
        secret = keymaterial.generate()
        new_id = str(uuid.uuid4())

        def plan(old: KeyRecord) -> Rolled:
            refuse_roll(old, now)
            stops = now + grace_minutes * MINUTE_US
            if old.expires_us is not None:
                stops = min(stops, old.expires_us)
            new = KeyRecord(
                id=new_id,
                user_id=old.user_id,
                name=old.name,
                preview=keymaterial.preview(secret),
                tier=old.tier,
                created_us=now,
                expires_us=old.expires_us,
                revoked_us=None,
                total_requests=0,
                last_used_us=None,
                scopes=old.scopes,
                allowed_ips=old.allowed_ips,  # a roll changes the secret, nothing it may do
            )
            after = replace(old, expires_us=stops, replaced_by=new_id)
            return Rolled(
                after,
                new,
                (
                    KeyEvent.about(
                        after, "rolled", request_id, now, {"replaced_by": new_id, "expires_at": rfc3339(stops)}
                    ),
                    KeyEvent.about(new, "minted", request_id, now, {"rolled_from": old.id}),
                ),
            )

        rolled = self._store.roll_key(user_id, key_id.lower(), plan, keymaterial.digest(secret), self._max_active)
        if rolled is None:
            raise KeyNotFound("No API key with this id exists for this account.", {"key_id": key_id})
        return RolledKey(MintedKey(rolled.new, secret, None), rolled.old)

    def update(self, user_id: str, key_id: str, changes: dict[str, Any], request_id: str) -> KeyRecord:
        """Rename the user's key, narrow its scopes or change its allowlist, each change an event.

        `changes` holds any of `name`, `scopes` (a non-empty subset of those the key was minted
        with, or of its tier's set for a key minted with all of them) and `allowed_ips` (None
        removes the allowlist). A change to what a key already is records nothing. KeyNotFound
        for a revoked key or one of another account; DuplicateName if another active key has the name.
        """
        name = canonical_name(changes["name"]) if "name" in changes else None
        allowed: tuple[str, ...] | None = None
        if changes.get("allowed_ips") is not None:
            allowed = allowlist(changes["allowed_ips"])
        now = self.now_us()

        def plan(old: KeyRecord) -> tuple[KeyRecord, list[KeyEvent]]:
            new, events = old, []
            if name is not None and name != old.name:
                new = replace(new, name=name)
                events.append(KeyEvent.about(new, "renamed", request_id, now, {"previous_name": old.name}))
            if "scopes" in changes:
                grantable = get_tier(old.tier).scopes if old.scopes is None else old.scopes
                scopes = granted_scopes(changes["scopes"] or (), grantable, old.tier, widening=True)
                if scopes != old.scopes:
                    new = replace(new, scopes=scopes)
                    events.append(
                        KeyEvent.about(
                            new,
                            "scopes_changed",
                            request_id,
                            now,
                            {
                                "previous_scopes": None if old.scopes is None else list(old.scopes),
                                "scopes": list(scopes),
                            },
                        )
                    )
            if "allowed_ips" in changes and allowed != old.allowed_ips:
                new = replace(new, allowed_ips=allowed)
                events.append(
                    KeyEvent.about(
                        new,
                        "allowlist_changed",
                        request_id,
                        now,
                        {
                            "previous_allowed_ips": None if old.allowed_ips is None else list(old.allowed_ips),
                            "allowed_ips": None if allowed is None else list(allowed),
                        },
                    )
                )
            return new, events

        updated = self._store.update_key(user_id, key_id.lower(), plan)
        if updated is None:
            self.get(user_id, key_id)  # says why: revoked, or no such key
            raise KeyNotFound("No API key with this id exists for this account.", {"key_id": key_id})
        return updated

    def report_leaks(self, candidates: Sequence[str], source: str | None, request_id: str) -> LeakReport:
        """Revoke every active key among `candidates` at once; say how many were received and revoked.

        Only well-formed, checksummed candidates are looked up: the rest cost no database read.
        What was found is not told to the reporter (only `received` is), so a report is no
        oracle for which keys exist; `revoked` is for the operator's metrics.
        """
        digests = sorted({keymaterial.digest(c) for c in candidates if keymaterial.is_well_formed(c)})
        if source is not None:  # stored and shown to the owner: never a secret
            source = keymaterial.redact(source)
        revoked: list[KeyRecord] = []
        if digests:
            now = self.now_us()
            revoked = self._store.revoke_leaked(
                digests, now, lambda record: KeyEvent.about(record, "leaked", request_id, now, {"source": source})
            )
        return LeakReport(len(candidates), len(revoked))

    def list(self, user_id: str, limit: int, cursor: str | None, include_revoked: bool = False) -> Page:
        """Return a page of the user's keys, newest first: unrevoked ones, or all with `include_revoked`."""
        records = self._store.list_keys(user_id, limit + 1, decode_cursor(cursor), include_revoked)
        return _page(records, limit, lambda r: (r.created_us, r.id))

    def get(self, user_id: str, key_id: str) -> KeyRecord:
        """Return the user's unrevoked key; KeyNotFound otherwise, whoever owns it.

        A revoked key is gone, as DELETE promised, but its owner is told when and why.
        """
        record = self._store.get_key(user_id, key_id.lower(), include_revoked=True)
        if record is None:
            raise KeyNotFound("No API key with this id exists for this account.", {"key_id": key_id})
        if record.revoked_us is not None:
            revoked = revocation(record)
            raise KeyNotFound(
                f"This API key was revoked ({revoked['reason']}); it is listed with include_revoked=true.",
                {"key_id": record.id, "revoked": True, **revoked},
            )
        return record

    def revoke(self, user_id: str, key_id: str, request_id: str) -> KeyRecord:
        """Revoke the user's key at once; KeyNotFound if there is no such unrevoked key."""
        now = self.now_us()
        existing = self.get(user_id, key_id)
        revoked = self._store.revoke_key(
            user_id, existing.id, now, KeyEvent.about(existing, "revoked", request_id, now)
        )
        if revoked is None:  # revoked by a concurrent request in between
            raise KeyNotFound("No API key with this id exists for this account.", {"key_id": key_id})
        return revoked

    def events(self, user_id: str, limit: int, cursor: str | None) -> Page:
        """Return a page of the user's key events, newest first."""
        events = self._store.list_events(user_id, limit + 1, decode_cursor(cursor))
        return _page(events, limit, lambda e: (e.occurred_us, e.id))

    def use(
        self, presented: str, required_scopes: Sequence[str] | None, request_id: str, address: str | None = None
    ) -> KeyUse:
        """Authenticate `presented`, check its scopes and count it against its account's tier limits.

        Raises the precise 401 (invalid, revoked, expired) or 403 (scope), in that order, naming
        the key it found (`ServiceError.key`) when it was found; the decision says whether the
        rate limit admitted the request. The limits are the account's: all its keys count in
        one minute and one day window, which a new tier's limits apply to from the next request
        on, counts kept. The lookup and the count are one transaction, so a key revoked or moved
        to another tier in any worker is treated as such from the next request on. A key with an
        allowlist used from another `address` (the client's) is 403 before anything else is
        checked or counted.
        """
        if not keymaterial.is_well_formed(presented):
            # Caught by the checksum: no database access for a mistyped or made-up key.
            raise InvalidAPIKey("The API key is malformed or mistyped.")
        now = self._clock()
        now_us = int(now * 1_000_000)
        found: list[KeyRecord] = []
        counted_in: list[tuple[Window, Window]] = []

        def admit(record: KeyRecord) -> tuple[Window, Window]:
            found.append(record)
            networks = allowed_networks(record)
            if not address_allowed(address, networks):
                raise AddressNotAllowed(
                    "This API key may not be used from this address.", {"key_id": record.id, "address": address}
                )
            if record.revoked_us is not None:
                message = "This API key has been revoked."
                if record.revoked_reason == REVOKED_AS_LEAKED:
                    message = "This API key was reported as leaked and has been revoked; use another key."
                raise RevokedAPIKey(message, {"key_id": record.id, **revocation(record)})
            if record.expires_us is not None and record.expires_us <= now_us:
                details: dict[str, Any] = {"key_id": record.id, "expired_at": rfc3339(record.expires_us)}
                if record.replaced_by is not None:
                    raise ExpiredAPIKey(
                        "This API key was rolled and its grace period has ended; use the key that replaced it.",
                        {**details, "rolled": True, "replaced_by": record.replaced_by},
                    )
                raise ExpiredAPIKey("This API key has expired.", details)
            self.authorize(record, required_scopes)
            tier = get_tier(record.tier)
            counted_in.append(self._limiter.windows(Limits(tier.per_minute, tier.per_day), now))
            return counted_in[0]

        try:
            used = self._store.use_key(keymaterial.digest(presented), now_us, admit, request_id)
        except ServiceError as refusal:
            if found:
                refusal.key = found[0]
            raise
        if used is None:
            raise InvalidAPIKey("The API key is not recognised.")
        record, result = used  # its usage as this request's own transaction counted it
        return KeyUse(record, self._limiter.decide(counted_in[0], result, now))

    @staticmethod
    def authorize(record: KeyRecord, required_scopes: Sequence[str] | None) -> None:
        """Raise InsufficientScope unless the key's scopes in force include every required scope."""
        granted = effective_scopes(record)
        missing = [s for s in required_scopes or () if s not in granted]
        if missing:
            raise InsufficientScope(
                f"This API key lacks the scope required by this operation: {', '.join(missing)} "
                f"(its scopes in force: {', '.join(granted) or 'none'}; tier {record.tier}).",
                {"required_scopes": list(required_scopes or ()), "missing_scopes": missing},
            )

    def info(self, record: KeyRecord) -> KeyInfo:
        """Describe a key as its owner is shown it now: its tier's terms and its status."""
        expired = record.expires_us is not None and record.expires_us <= self.now_us()
        status = "revoked" if record.revoked_us is not None else "expired" if expired else "active"
        return KeyInfo(record, get_tier(record.tier), status, effective_scopes(record))


def revocation(key: KeyRecord) -> dict[str, Any]:
    """Say when a revoked key was revoked and why (`owner`, `leaked`), as error details and key fields show it."""
    return {"reason": key.revoked_reason, "revoked_at": rfc3339(key.revoked_us)}


def refuse_roll(key: KeyRecord, now_us: int) -> None:
    """Raise KeyNotRollable unless `key` is active and has not been rolled."""
    if key.revoked_us is not None:
        raise KeyNotRollable(
            "This API key has been revoked and cannot be rolled; mint a new one.",
            {"key_id": key.id, "reason": "revoked"},
        )
    if key.replaced_by is not None:
        raise KeyNotRollable(
            "This API key was rolled already; roll its replacement instead.",
            {"key_id": key.id, "reason": "rolled", "replaced_by": key.replaced_by},
        )
    if key.expires_us is not None and key.expires_us <= now_us:
        raise KeyNotRollable(
            "This API key has expired and cannot be rolled; mint a new one.", {"key_id": key.id, "reason": "expired"}
        )


def check_room_for_key(name: str, name_taken: bool, active: int, max_active: int) -> None:
    """Raise DuplicateName or KeyLimitReached unless a new key called `name` may be minted.

    Each store runs this inside the transaction that counted the account's active keys.
    """
    if name_taken:
        raise DuplicateName(f"An active API key named {name!r} already exists.", {"field": "name"})
    if active >= max_active:
        raise KeyLimitReached(
            f"This account already has {active} active API keys, the most allowed; revoke one before minting another.",
            {"limit": max_active},
        )


def check_name_free(name: str, name_taken: bool) -> None:
    """Raise DuplicateName if another active key of the account is called `name` (a rename's check)."""
    if name_taken:
        raise DuplicateName(f"An active API key named {name!r} already exists.", {"field": "name"})


def check_room_for_roll(rolled: Rolled, active: int, max_active: int) -> None:
    """Raise KeyLimitReached if `rolled` would keep one key more active than the account may hold.

    `active` is the account's active keys as counted when the replacement is made. A roll whose
    old key stops at once swaps one active key for another; one with a grace period keeps both
    active until the old one expires, so it needs room for one more. Each store runs this
    inside the transaction that counted them.
    """
    now = rolled.new.created_us
    old_stays_active = rolled.old.expires_us is None or rolled.old.expires_us > now
    if old_stays_active and active >= max_active:
        raise KeyLimitReached(
            f"This account already has {active} active API keys, the most allowed, and a roll with a grace "
            "period keeps both keys active; revoke one first, or roll with grace_period_minutes 0.",
            {"limit": max_active},
        )


def rfc3339(us: int | None) -> str | None:
    """Format microseconds since the epoch as an RFC 3339 UTC time."""
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    return f"{utc_seconds(seconds)}.{micros:06d}Z"


@functools.lru_cache(maxsize=256)
def utc_seconds(seconds: int) -> str:
    """A whole second since the epoch as `YYYY-MM-DDTHH:MM:SS`, UTC (the few in use remembered:
    a key's times, and now, are written on every answer and every log line)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def encode_cursor(position: tuple[int, str]) -> str:
    """Encode a (time, uuid) listing position as an opaque cursor."""
    return f"{position[0]:016d}{uuid.UUID(position[1]).hex}"


def decode_cursor(cursor: str | None) -> tuple[int, str] | None:
    """Decode a cursor made by encode_cursor (the contract's pattern admits no other)."""
    if cursor is None:
        return None
    match = CURSOR.match(cursor)
    if match is None:
        raise InvalidParameter("cursor is not a cursor this server issued.", {"field": "cursor"})
    return int(match.group(1)), str(uuid.UUID(match.group(2)))


def _page(items: list[Any], limit: int, position: Callable[[Any], tuple[int, str]]) -> Page:
    if len(items) > limit:
        return Page(items[:limit], encode_cursor(position(items[limit - 1])))
    return Page(items, None)
