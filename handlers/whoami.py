"""The calling key, authenticated by the key itself."""

from __future__ import annotations

from typing import Any

from handlers.context import services
from handlers.render import render_current_key


def get_current_key(token_info: dict[str, Any]) -> dict[str, Any]:
    return {"data": render_current_key(services().keys.info(token_info["key"]), token_info["rate_limit"])}
