"""The key audit trail (session cookie)."""

from __future__ import annotations

from typing import Any

from handlers.context import services
from handlers.render import render_key_event


def list_key_events(user: str, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
    page = services().keys.events(user, limit, cursor)
    return {"data": [render_key_event(e) for e in page.items], "meta": {"limit": limit, "next_cursor": page.next_cursor}}
