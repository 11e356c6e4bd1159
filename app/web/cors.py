"""CORS: Starlette's handling, with refused preflights in the contract's error envelope.

Which pages may *read* the answers (CORS_ORIGINS, CORS_ORIGIN_REGEX); which may *send* a
state-changing request with the session cookie is `app.web.csrf`'s check. Without either
setting (production's default) no origin is allowed, and every preflight is refused as one
from a disallowed origin is when they are set: one answer, 400 `cors_not_allowed`, either way.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from app.web.errors import envelope
from app.web.messages import send_json
from app.web.state import request_state

# What Starlette answers a preflight from an origin it does not allow, as the envelope's message.
DISALLOWED_ORIGIN = "Disallowed CORS origin."
PREFLIGHT_VARY = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling, with refused preflights in the contract's error envelope.

    With no origin allowed (neither CORS_ORIGINS nor CORS_ORIGIN_REGEX) it only refuses
    preflights: every other request passes untouched, without CORS headers.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        preflight = (
            headers is not None
            and scope["method"] == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        )
        if not (self.allow_origins or self.allow_origin_regex):
            if preflight:
                body = envelope("cors_not_allowed", DISALLOWED_ORIGIN, None, request_state(scope).request_id)
                await send_json(send, 400, body, [PREFLIGHT_VARY])
                return
            await self.app(scope, receive, send)
            return
        if preflight:
            assert headers is not None
            response = self.preflight_response(request_headers=headers)
            if response.status_code == 400:
                message = bytes(response.body).decode() + "."
                body = envelope("cors_not_allowed", message, None, request_state(scope).request_id)
                kept = [(k, v) for k, v in response.raw_headers if k not in (b"content-type", b"content-length")]
                await send_json(send, 400, body, kept)
                return
        await super().__call__(scope, receive, send)
