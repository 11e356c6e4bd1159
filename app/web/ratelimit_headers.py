"""The rate-limit headers that describe a rate-limit decision: the vendor's `X-RateLimit-*`
and the IETF HTTPAPI working group's `RateLimit` and `RateLimit-Policy` fields.

The IETF fields follow draft-ietf-httpapi-ratelimit-headers-11 (May 2026): each is a
Structured Fields List (RFC 9651) with one item per window, named by a String, so both
windows are described, not only the one that binds:

    RateLimit-Policy: "minute";q=10;w=60, "day";q=1000;w=86400
    RateLimit: "minute";r=7;t=42, "day";r=990;t=80000

`q` is the window's quota and `w` its length in seconds; `r` the requests left in it and
`t` the seconds until it ends (rounded up, as `Retry-After` is, so `Retry-After` is never
earlier than the end of the window that refused).
"""

from __future__ import annotations

from app.domain.ratelimit import DAY, MINUTE, Decision, WindowState, seconds_until

RATELIMIT_DRAFT = "draft-ietf-httpapi-ratelimit-headers-11"
# Every header these functions may set, for CORS' `expose_headers` (with `Retry-After`).
RATE_LIMIT_HEADER_NAMES = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit",
    "RateLimit-Policy",
)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """Return the rate-limit headers for `decision`.

    The vendor defines X-RateLimit-Limit as the per-minute figure. Remaining and Reset describe
    the window that binds, so a client that waits until Reset is let in again. `RateLimit`
    and `RateLimit-Policy` describe both windows, each by name.
    """
    binding = decision.binding
    windows = (("minute", decision.minute, MINUTE), ("day", decision.day, DAY))
    return {
        "X-RateLimit-Limit": str(decision.minute.limit),
        "X-RateLimit-Remaining": str(binding.remaining),
        "X-RateLimit-Reset": str(binding.reset),
        "RateLimit-Policy": ", ".join(f'"{name}";q={state.limit};w={length}' for name, state, length in windows),
        "RateLimit": ", ".join(_service_limit(name, state, decision.at) for name, state, _ in windows),
    }


def _service_limit(name: str, state: WindowState, now: float) -> str:
    return f'"{name}";r={state.remaining};t={seconds_until(state.reset, now)}'
