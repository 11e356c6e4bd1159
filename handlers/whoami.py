"""The calling key, authenticated by the key itself."""

from __future__ import annotations

from typing import Any

from handlers.context import services


def get_current_key(token_info: dict[str, Any]) -> dict[str, Any]:
    decision = token_info["rate_limit"]
    info = services().keys.key_info(token_info["key"])
    info["rate_limit"] = {
        window: {"limit": state.limit, "remaining": state.remaining, "reset": state.reset}
        for window, state in (("minute", decision.minute), ("day", decision.day))
    }
    return {"data": info}
