"""The services wired once per app: what handlers and security functions work with.

Nothing here speaks HTTP: a rate-limit decision is returned as it is, and the web layer
renders it as headers (`app.web.ratelimit_headers`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from app import metrics, probes
from app.config import Settings
from app.domain.keys import Clock, KeyService
from app.domain.ratelimit import Decision, Limits, RateLimiter, leak_report_subject
from app.domain.sessions import SessionVerifier
from app.domain.store import Store
from app.store import open_store
from app.version import __version__


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

    def admit_leak_report(self, address: str) -> Decision:
        """Count a leak report from `address`; return the decision, or raise RateLimited past its limit."""
        now = self.clock()
        decision = self.limiter.admit(leak_report_subject(address), self.leak_report_limits, now)
        if not decision.allowed:
            metrics.LEAK_REPORTS_REFUSED.labels(decision.blocked_by or "minute").inc()
            raise decision.refusal(now, "leak reports from this address")
        metrics.LEAK_REPORTS_ADMITTED.inc()
        return decision

    def report_leaks(self, candidates: Sequence[str], source: str | None, request_id: str) -> int:
        """Revoke the active keys among `candidates`; return how many were received (all the reporter is told)."""
        report = self.keys.report_leaks(candidates, source, request_id)
        if report.revoked:
            metrics.REVOKED.inc(report.revoked)  # api_keys_revoked_total counts leaked keys too
        return report.received

    def metrics_for(self, address: str | None) -> tuple[bytes, str] | None:
        """The metrics page and its content type, or None for a client outside METRICS_ALLOW.

        `address` is None when the client is not known (a request proxied by a peer that is
        no trusted proxy): refused.
        """
        if address is None or not metrics.allowed(address, self.settings.metrics_allow):
            return None
        return metrics.exposition()


def build_services(settings: Settings, clock: Clock = time.time, store: Store | None = None) -> Services:
    """Wire the domain services for `settings`."""
    store = store if store is not None else open_store(settings)
    limiter = RateLimiter(store)
    return Services(
        settings=settings,
        store=store,
        keys=KeyService(store, clock, settings.max_active_keys, limiter),
        sessions=SessionVerifier(settings.jwt_secret, allow_anonymous=settings.allow_anonymous_sessions),
        limiter=limiter,
        clock=clock,
        management_limits=Limits(settings.management_limit_per_minute, settings.management_limit_per_day),
        leak_report_limits=Limits(settings.leak_report_limit_per_minute, settings.leak_report_limit_per_day),
        readiness=probes.Readiness(store, clock),
    )
