"""Rate limiting: fixed per-minute and per-day windows counted in the shared store.

The rule (`count_in`) is a pure function of the stored counts; the store runs it inside the
transaction that reads and writes them. Fail-closed: if the store cannot count a request
(`StoreUnavailable`), the request is refused rather than admitted uncounted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.domain.errors import RateLimited, StoreUnavailable
from app.domain.records import Consumption, StoredWindow, Window
from app.domain.store import Store

MINUTE = 60
DAY = 86_400
MAX_ADDRESS_LENGTH = 45  # the longest IPv6 address as text, IPv4-mapped
# What a subject may hold: `account:` and a user id of up to 200 characters (MAX_USER_ID_LENGTH).
MAX_SUBJECT_LENGTH = 256
EXPIRY_INTERVAL = MINUTE  # how often each limiter deletes the windows that have passed


@dataclass(frozen=True)
class Limits:
    per_minute: int
    per_day: int


@dataclass(frozen=True)
class WindowState:
    limit: int
    remaining: int
    reset: int  # Unix seconds when the window ends


@dataclass(frozen=True)
class Decision:
    """The outcome of counting one request, and the state of both windows after it."""

    allowed: bool
    minute: WindowState
    day: WindowState
    blocked_by: str | None
    at: float  # the clock reading the request was counted at (Unix seconds)
    usage: tuple[int, int] | None = None  # the key's total_requests and last_used_us, counted with it

    @property
    def binding(self) -> WindowState:
        """Return the window that binds: the one a client must wait for to be let in again.

        The day once it has no more room left than the minute (then the minute's reset would
        not give any back), else the minute.
        """
        return self.day if self.blocked_by == "day" or self.day.remaining <= self.minute.remaining else self.minute

    def retry_after(self, now: float) -> int:
        """Return whole seconds until the refusing window resets, rounded up.

        Rounded up, never to the nearest: a client that waits exactly this long, from any
        fraction of a second, arrives at or after the reset. When both windows are exhausted
        the day refuses (`count_in`), so this is the wait for the day, not the minute.
        """
        window = self.day if self.blocked_by == "day" else self.minute
        return max(1, seconds_until(window.reset, now))

    def refusal(self, now: float, subject: str) -> RateLimited:
        """The 429 for this refused request, `subject` saying whose limit it was."""
        window = self.blocked_by or "minute"
        state = self.day if window == "day" else self.minute
        retry_after = self.retry_after(now)
        return RateLimited(
            f"Rate limit of {state.limit} requests per {window} exceeded for {subject}; retry after {retry_after} s.",
            {"window": window, "limit": state.limit, "reset": state.reset, "retry_after": retry_after},
            self,
            retry_after,
        )


class RateLimiter:
    """Admit or refuse requests per subject (a key or an account)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._next_expiry = 0.0

    def admit(self, subject: str, limits: Limits, now: float) -> Decision:
        """Count a request for `subject` if both its windows have room."""
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise ValueError(f"a rate-limit subject is at most {MAX_SUBJECT_LENGTH} characters")
        windows = self.windows(limits, now)
        decision = self.decide(windows, self._store.consume(subject, windows, int(now * 1_000_000)), now)
        if now >= self._next_expiry:
            self.expire(now)
        return decision

    def expire(self, now: float) -> None:
        """Delete every subject's windows that have passed at `now` (at most once per EXPIRY_INTERVAL).

        A passed window counts nothing (`count_in` restarts it), so its row only takes room:
        without this, every client address ever seen would keep its rows for good. Failing to
        delete is no reason to refuse anyone: the next interval tries again.
        """
        self._next_expiry = now + EXPIRY_INTERVAL
        with contextlib.suppress(StoreUnavailable):
            self._store.expire_windows(self.windows(Limits(0, 0), now))

    @staticmethod
    def windows(limits: Limits, now: float) -> tuple[Window, Window]:
        """The minute and day windows that a request made at `now` counts in, shortest first."""
        second = int(now)
        return (
            Window("minute", second - second % MINUTE, limits.per_minute),
            Window("day", second - second % DAY, limits.per_day),
        )

    @staticmethod
    def decide(windows: tuple[Window, Window], result: Consumption, now: float) -> Decision:
        """The decision, and its headers, from what counting in `windows` at `now` did."""
        minute, day = windows
        starts = result.starts or {}
        minute = Window("minute", starts.get("minute", minute.start), minute.limit)
        day = Window("day", starts.get("day", day.start), day.limit)
        return Decision(
            allowed=result.allowed,
            minute=_state(minute, result.counts["minute"], MINUTE),
            day=_state(day, result.counts["day"], DAY),
            blocked_by=result.blocked_by,
            at=now,
            usage=result.usage,
        )


def seconds_until(moment: int, now: float) -> int:
    """Return the whole seconds from `now` to `moment` (Unix seconds), rounded up; 0 if past."""
    return max(0, moment - math.floor(now))


def _state(window: Window, count: int, length: int) -> WindowState:
    return WindowState(window.limit, max(0, window.limit - count), window.start + length)


def tier_subject(user_id: str) -> str:
    """Return the subject an account's API-key requests are counted under, whichever key made them.

    Not `management_subject`: key management has its own budget.
    """
    return f"tier:{user_id}"


def management_subject(user_id: str) -> str:
    """Return the subject an account's key-management (session) requests are counted under."""
    return f"account:{user_id}"


def leak_report_subject(address: str) -> str:
    """Return the subject leak reports from one client address are counted under.

    An IPv4 address (or one written as IPv4-mapped IPv6) is its own subject; an IPv6 address
    counts with its /64, which one household or host is commonly given whole. Anything else
    (no address known) is cut to a bounded length.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"leaks:{address[:MAX_ADDRESS_LENGTH]}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"leaks:{ip.ipv4_mapped}"
        return f"leaks:{ipaddress.IPv6Network((int(ip) >> 64 << 64, 64))}"
    return f"leaks:{ip}"


def count_in(windows: Sequence[Window], stored: Mapping[str, StoredWindow]) -> Consumption:
    """Decide whether one more request fits in `windows` (shortest first), given what is stored.

    The rule, in plain numbers: a window that has started since the stored one restarts its
    count; a request that read the clock just before a boundary but is counted just after it
    counts in the newer window, never drags it back; the request is admitted only if every
    window has room; the longest exhausted window refuses it (it decides when a retry can
    succeed), and only its first refusal is a `first_block`. The store runs this inside the
    transaction that read `stored`, and writes what it says.
    """
    windows = [
        w if w.kind not in stored or stored[w.kind].start <= w.start else Window(w.kind, stored[w.kind].start, w.limit)
        for w in windows
    ]
    counts: dict[str, int] = {}
    blocked_by: Window | None = None
    for w in windows:
        held = stored.get(w.kind)
        counts[w.kind] = held.count if held is not None and held.start == w.start else 0
        if counts[w.kind] >= w.limit:
            blocked_by = w
    starts = {w.kind: w.start for w in windows}
    if blocked_by is not None:
        held = stored.get(blocked_by.kind)
        first = not (held is not None and held.start == blocked_by.start and held.blocked)
        return Consumption(False, counts, blocked_by.kind, first, starts=starts)
    return Consumption(True, {kind: count + 1 for kind, count in counts.items()}, None, False, starts=starts)
