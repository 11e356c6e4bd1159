"""What handlers and security functions work with: the services wired once per app."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.domain.keys import Clock, KeyService
from app.domain.ratelimit import Limits, RateLimiter
from app.domain.sessions import SessionVerifier
from app.domain.store import Store


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
