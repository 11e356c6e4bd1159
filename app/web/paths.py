"""Path hygiene and HEAD: what no route may be reached by, and HEAD answered where the contract defines it.

- A path with a control character, a trailing slash (outside Swagger UI's pages) or an
  encoded slash or backslash is a 404 before routing. No route has a control character (and
  Starlette's `$` matches before a final newline, which would route `/api/v1/keys/%0A` past
  security to a handler), nor a trailing slash (which the router would answer with a 307
  redirect the contract does not describe). Nor an encoded slash: the server decodes `%2F`
  before routing, so `/api/v1%2Fkeys` would reach the route a proxy rule written for
  `/api/v1/keys` never saw.
- HEAD is answered where the contract defines it (the probes) as its GET, without the body,
  and elsewhere with 405 (404 off the contract's paths) before any work is done.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from app.web.contract import ContractIndex
from app.web.errors import MESSAGES, envelope
from app.web.messages import send_json, without_body
from app.web.state import request_state

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
ENCODED_SLASH = re.compile(rb"%2f|%5c", re.IGNORECASE)  # `/` and `\`
DOCS_PREFIX = "/ui"  # Swagger UI's pages: `/ui/` is its index


class PathHygieneMiddleware:
    """404 for paths no route may be reached by; HEAD as its GET where the contract defines it, else 405."""

    def __init__(self, app: ASGIApp, contract: ContractIndex) -> None:
        self.app = app
        self.contract = contract

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            allow = self.contract.allowed_methods(scope["path"])
            if "HEAD" not in (allow or "").split(", "):
                # Without a body, as HEAD must be: 405 on our paths, 404 elsewhere.
                await send_json(send, 405 if allow else 404, b"", [(b"allow", allow.encode())] if allow else None)
                return
            # Answered as its GET (as Starlette's router would route it anyway), so that
            # response validation checks the GET's answer; the body is then left out. A
            # copy: the server's own scope stays HEAD, so it expects no body either.
            scope = {**scope, "method": "GET"}
            request_state(scope).method = "GET"
            send = without_body(send)
        path = scope["path"]
        if (
            CONTROL_CHARACTERS.search(path)
            or (path.endswith("/") and path != "/" and not path.startswith(DOCS_PREFIX))
            or ENCODED_SLASH.search(scope.get("raw_path") or b"")
        ):
            await send_json(send, 404, envelope("not_found", MESSAGES[404], None, request_state(scope).request_id))
            return
        await self.app(scope, receive, send)
