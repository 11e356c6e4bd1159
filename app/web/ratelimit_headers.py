"""The X-RateLimit-* headers that describe a rate-limit decision."""

from __future__ import annotations

from app.domain.ratelimit import Decision


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """Return the X-RateLimit-* headers for `decision`.

    The vendor defines Limit as the per-minute figure. Remaining and Reset describe the window
    that binds, so a client that waits until Reset is let in again.
    """
    binding = decision.binding
    return {
        "X-RateLimit-Limit": str(decision.minute.limit),
        "X-RateLimit-Remaining": str(binding.remaining),
        "X-RateLimit-Reset": str(binding.reset),
    }
