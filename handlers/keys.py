"""Key management: mint, list, read, change, roll and revoke (session cookie)."""

from __future__ import annotations

from typing import Any

from app.domain.keys import MINT_WARNING, rfc3339
from handlers.context import request_id, services
from handlers.render import render_api_key_created, render_api_key_info


def create_api_key(body: dict[str, Any], user: str) -> tuple[dict[str, Any], int]:
    keys = services().keys
    minted = keys.mint(
        user, body["name"], body.get("expires_in_days"), request_id(), body.get("scopes"), body.get("allowed_ips")
    )
    data = render_api_key_created(keys.info(minted.record), minted.secret)
    meta = {"warning": MINT_WARNING}
    if minted.name_hint:
        meta["name_hint"] = minted.name_hint
    return {"data": data, "meta": meta}, 201


def list_api_keys(
    user: str, limit: int = 20, cursor: str | None = None, include_revoked: bool = False
) -> dict[str, Any]:
    keys = services().keys
    page = keys.list(user, limit, cursor, include_revoked)
    account = keys.account(user)
    meta = {
        "limit": limit,
        "next_cursor": page.next_cursor,
        "account": {"user_id": account.user_id, "tier": account.tier},
    }
    return {"data": [render_api_key_info(keys.info(r)) for r in page.items], "meta": meta}


def get_api_key(key_id: str, user: str) -> dict[str, Any]:
    keys = services().keys
    return {"data": render_api_key_info(keys.info(keys.get(user, key_id)))}


def update_api_key(key_id: str, body: dict[str, Any], user: str) -> dict[str, Any]:
    keys = services().keys
    return {"data": render_api_key_info(keys.info(keys.update(user, key_id, body, request_id())))}


def revoke_api_key(key_id: str, user: str) -> tuple[None, int]:
    services().keys.revoke(user, key_id, request_id())
    return None, 204


def roll_api_key(key_id: str, body: dict[str, Any], user: str) -> tuple[dict[str, Any], int]:
    keys = services().keys
    rolled = keys.roll(user, key_id, body.get("grace_period_minutes", 0), request_id())
    data = render_api_key_created(keys.info(rolled.minted.record), rolled.minted.secret)
    rolled_from = {"id": rolled.old.id, "expires_at": rfc3339(rolled.old.expires_us)}
    return {"data": data, "meta": {"warning": MINT_WARNING, "rolled_from": rolled_from}}, 201
