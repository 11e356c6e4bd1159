"""Liveness."""

from __future__ import annotations

from handlers.context import services


def get_health() -> dict[str, str]:
    services().store.ping()
    return {"status": "ok"}
