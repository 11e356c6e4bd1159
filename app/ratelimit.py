"""Rate limiting: fixed per-minute and per-day windows counted in the shared store.

Fail-closed: if the store cannot count a request (its write lock stays taken past the
5 s busy timeout), the request is refused with 503 rather than admitted uncounted.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.store import Consumption, Store, Window

MINUTE = 60
DAY = 86_400


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
    """The outcome of counting one request, with what the X-RateLimit-* headers report."""

    allowed: bool
    minute: WindowState
    day: WindowState
    blocked_by: str | None
    usage: tuple[int, int] | None = None  # the key's total_requests and last_used_us, counted with it

    @property
    def headers(self) -> dict[str, str]:
        """Return the X-RateLimit-* headers."""
        # The vendor defines Limit as the per-minute figure. Remaining and Reset describe the
        # window that binds: the day once it has no more room left than the minute (then the
        # minute's reset would not give any back), else the minute. So a client that waits
        # until Reset is let in again.
        binding = self.day if self.blocked_by == "day" or self.day.remaining <= self.minute.remaining else self.minute
        return {
            "X-RateLimit-Limit": str(self.minute.limit),
            "X-RateLimit-Remaining": str(binding.remaining),
            "X-RateLimit-Reset": str(binding.reset),
        }

    def windows_info(self) -> dict[str, dict[str, int]]:
        """Describe both windows as the contract's `rate_limit` object (whoami)."""
        return {
            window: {"limit": state.limit, "remaining": state.remaining, "reset": state.reset}
            for window, state in (("minute", self.minute), ("day", self.day))
        }

    def retry_after(self, now: float) -> int:
        """Return whole seconds until the refusing window resets."""
        window = self.day if self.blocked_by == "day" else self.minute
        return max(1, window.reset - int(now))


class RateLimiter:
    """Admit or refuse requests per subject (a key or an account)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def admit(self, subject: str, limits: Limits, now: float) -> Decision:
        """Count a request for `subject` if both its windows have room."""
        windows = self.windows(limits, now)
        return self.decide(windows, self._store.consume(subject, windows, int(now * 1_000_000)))

    @staticmethod
    def windows(limits: Limits, now: float) -> tuple[Window, Window]:
        """The minute and day windows that a request made at `now` counts in, shortest first."""
        second = int(now)
        return (
            Window("minute", second - second % MINUTE, limits.per_minute),
            Window("day", second - second % DAY, limits.per_day),
        )

    @staticmethod
    def decide(windows: tuple[Window, Window], result: Consumption) -> Decision:
        """The decision, and its headers, from what counting in `windows` did."""
        minute, day = windows
        starts = result.starts or {}
        minute = Window("minute", starts.get("minute", minute.start), minute.limit)
        day = Window("day", starts.get("day", day.start), day.limit)
        return Decision(
            allowed=result.allowed,
            minute=_state(minute, result.counts["minute"], MINUTE),
            day=_state(day, result.counts["day"], DAY),
            blocked_by=result.blocked_by,
            usage=result.usage,
        )


def _state(window: Window, count: int, length: int) -> WindowState:
    return WindowState(window.limit, max(0, window.limit - count), window.start + length)
