"""What handlers and security functions work with: the services wired once per app."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.domain.keys import Clock, KeyService
from app.domain.ratelimit import Limits, RateLimiter, leak_report_subject
from app.domain.sessions import SessionVerifier
from app.domain.store import Store
from app.version import __version__
from app.web import metrics, probes
from app.web.clients import Client
from app.web.ratelimit_headers import rate_limit_headers


@dataclass(frozen=True)
class Services:
    """What handlers and security functions work with, wired once per app."""

    settings: Settings
    store: Store
    keys: KeyService
    sessions: SessionVerifier
    limiter: RateLimiter
    clock: Clock
    management_limits: Limits
    leak_report_limits: Limits
    readiness: probes.Readiness

    @property
    def version(self) -> str:
        return __version__

    def check_ready(self) -> None:
        """Raise StoreUnavailable unless the store answered its latest readiness check (at most a second old)."""
        self.readiness.check()

    def admit_leak_report(self, address: str) -> dict[str, str]:
        """Count a leak report from `address` (RateLimited past its limit); return its answer's rate-limit headers."""
        now = self.clock()
        decision = self.limiter.admit(leak_report_subject(address), self.leak_report_limits, now)
        if not decision.allowed:
            metrics.LEAK_REPORTS_REFUSED.labels(decision.blocked_by or "minute").inc()
            raise decision.refusal(now, "leak reports from this address")
        metrics.LEAK_REPORTS_ADMITTED.inc()
        return rate_limit_headers(decision)

    def metrics_for(self, client: Client) -> tuple[bytes, str] | None:
        """The metrics page and its content type, or None for a client outside METRICS_ALLOW.

        A request proxied by a peer that is no trusted proxy has no known client: refused.
        """
        if client.unknown or not metrics.allowed(client.address, self.settings.metrics_allow):
            return None
        return metrics.exposition()
