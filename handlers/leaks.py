"""Leaked-key reports (no authentication: the reporter does not own the keys)."""

from __future__ import annotations

from typing import Any

from app.domain.ratelimit import leak_report_subject
from handlers.context import client_address, request_id, services


def report_leaked_keys(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    wired = services()
    wired.limiter.require(
        leak_report_subject(client_address()), wired.leak_report_limits, wired.clock(), "leak reports from this address"
    )
    received = wired.keys.report_leaks(body["keys"], body.get("source"), request_id())
    return {"data": {"received": received}}, 202
