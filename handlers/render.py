"""The contract's schemas, rendered from the domain's records: one function per schema.

The domain returns records (`app.domain.records`); what a client reads is written here, next
to the handlers that answer with it, and checked against `openapi.json` by response validation.
"""

from __future__ import annotations

from typing import Any

from app.domain.keys import rfc3339
from app.domain.ratelimit import Decision, WindowState
from app.domain.records import KeyEvent, KeyInfo


def render_api_key_info(info: KeyInfo) -> dict[str, Any]:
    """APIKeyInfo: a key as its owner is shown it (never its secret)."""
    key, tier = info.key, info.tier
    rendered: dict[str, Any] = {
        "id": key.id,
        "name": key.name,
        "key_preview": key.preview,
        "tier": tier.name,
        "scopes": list(info.scopes),
        "granted_scopes": None if key.scopes is None else list(key.scopes),
        "allowed_ips": None if key.allowed_ips is None else list(key.allowed_ips),
        "rate_limit_per_minute": tier.per_minute,
        "rate_limit_per_day": tier.per_day,
        "total_requests": key.total_requests,
        "last_used_at": rfc3339(key.last_used_us),
        "created_at": rfc3339(key.created_us),
        "expires_at": rfc3339(key.expires_us),
        "status": info.status,
    }
    if key.replaced_by is not None:
        rendered["replaced_by"] = key.replaced_by
    if key.revoked_us is not None:
        rendered |= {"revoked_at": rfc3339(key.revoked_us), "revoked_reason": key.revoked_reason}
    return rendered


def render_api_key_created(info: KeyInfo, secret: str) -> dict[str, Any]:
    """APIKeyCreated: a new key, with its secret (under both names clients read), shown this once."""
    return {**render_api_key_info(info), "key": secret, "full_key": secret}


def render_rate_limit_window(window: WindowState) -> dict[str, int]:
    """RateLimitWindow: one window's limit, what is left of it, and when it resets."""
    return {"limit": window.limit, "remaining": window.remaining, "reset": window.reset}


def render_current_key(info: KeyInfo, decision: Decision) -> dict[str, Any]:
    """CurrentKey: the calling key, and both its account's windows after this request."""
    windows = {"minute": render_rate_limit_window(decision.minute), "day": render_rate_limit_window(decision.day)}
    return {**render_api_key_info(info), "rate_limit": windows}


def render_key_event(event: KeyEvent) -> dict[str, Any]:
    """KeyEvent: one entry of the audit trail, naming the key as it was then."""
    return {
        "id": event.id,
        "type": event.type,
        "occurred_at": rfc3339(event.occurred_us),
        "key_id": event.key_id,
        "key_name": event.key_name,
        "key_preview": event.key_preview,
        "request_id": event.request_id,
        "details": event.details,
    }
