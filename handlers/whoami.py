"""The calling key, authenticated by the key itself."""

from __future__ import annotations

from typing import Any

from handlers.context import services


def get_current_key(token_info: dict[str, Any]) -> dict[str, Any]:
    info = services().keys.key_info(token_info["key"])
    info["rate_limit"] = token_info["rate_limit"].windows_info()
    return {"data": info}
