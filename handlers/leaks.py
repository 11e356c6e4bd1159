"""Leaked-key reports (no authentication: the reporter does not own the keys)."""

from __future__ import annotations

from typing import Any

from handlers.context import client_address, rate_limited, request_id, services


def report_leaked_keys(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    wired = services()
    rate_limited(wired.admit_leak_report(client_address()))
    received = wired.report_leaks(body["keys"], body.get("source"), request_id())
    return {"data": {"received": received}}, 202
