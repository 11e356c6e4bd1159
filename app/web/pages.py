"""What the server serves beside the contract's operations: the contract itself, the key page,
and (development only) `/dev/login` and `/dev/logout`.

- `GET /openapi.json`: the contract as it is in the repository, byte for byte (references
  intact, the same `servers`), so a code generator gets the document the team reviews.
- `GET /` and its two files under `/static/`: the key page, plain HTML, CSS and JavaScript
  (development, or `KEY_PAGE=on`). Its policy lets it load only its own files and call only
  this server; its referrer policy lets its requests say which page sent them (`Origin`),
  which the cross-site request check reads. The page is given, as attributes of its `<body>`,
  the rule minting uses to call a name poor (so that its list flags the same names) and whether
  `/dev/login` and `/dev/logout` exist.
- `GET /dev/login?user=USER_ID&tier=free|pro&next=/path` (development only): sets the session
  cookie for that user, and the account's tier when one is given (an empty `tier=`, which the
  key page's form sends for "keep current tier", keeps it), then redirects to the key page or `next`.
- `GET /dev/logout?next=/path` (development only): clears the session cookie, then redirects.
"""

from __future__ import annotations

import asyncio
import json
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from app.domain.errors import ServiceError
from app.domain.keys import MAX_USER_ID_LENGTH, NAME_HINT, USELESS_NAME, valid_user_id
from app.domain.sessions import issue_token
from app.domain.tiers import TIERS
from app.web.credentials import SESSION_COOKIE
from app.web.errors import MESSAGES, envelope, status_and_code
from app.web.messages import send_json
from app.web.state import request_state

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/static/keys.js": ("keys.js", b"text/javascript; charset=utf-8"),
    "/static/keys.css": ("keys.css", b"text/css; charset=utf-8"),
}
PAGE_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    b"referrer-policy": b"same-origin",
}
LOGIN_PATH = "/dev/login"
LOGOUT_PATH = "/dev/logout"
LOGIN_TTL_S = 24 * 3600
NEXT_MESSAGE = "next must be a path on this server, such as /ui/ (not another host)."


def render_page(html: bytes, dev_login: bool) -> bytes:
    """Fill the key page's `<body>` attributes: the poor-name rule, each tier's scopes and whether /dev/login exists."""
    # The page builds a case-insensitive JavaScript RegExp (USELESS_NAME is re.IGNORECASE) from
    # the pattern: the rule minting's meta.name_hint follows, written once.
    values = {
        "poor-name": USELESS_NAME.pattern,
        "name-hint": NAME_HINT,
        "dev-login": "on" if dev_login else "off",
        # Each tier's scopes, for the scope choices at mint and when a key is edited.
        "tier-scopes": json.dumps({name: list(tier.scopes) for name, tier in TIERS.items()}),
    }
    text = html.decode()
    for name, value in values.items():
        text = text.replace(f'data-{name}=""', f'data-{name}="{escape(value)}"', 1)
    return text.encode()


def safe_next(value: str) -> bool:
    """Tell whether `value` is a path on this server (never another host, however spelt)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return False
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


class PagesMiddleware:
    """Serve the contract file, the key page, `/dev/login` and `/dev/logout`; pass everything else on."""

    def __init__(self, app: ASGIApp, services: Any, spec_bytes: bytes | None, key_page: bool, dev_login: bool) -> None:
        self.app = app
        self.services = services
        # spec_bytes None (CONTRACT=off): /openapi.json is a 404 like any unknown path.
        self.routes: dict[str, tuple[bytes, bytes]] = (
            {"/openapi.json": (spec_bytes, b"application/json")} if spec_bytes else {}
        )
        if key_page:
            for path, (name, media) in PAGE_FILES.items():
                self.routes[path] = ((STATIC / name).read_bytes(), media)
            self.routes["/"] = (render_page(self.routes["/"][0], dev_login), PAGE_FILES["/"][1])
        self.dev_login = dev_login

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        known = path in self.routes or (self.dev_login and path in (LOGIN_PATH, LOGOUT_PATH))
        if not known:
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        if scope["method"] != "GET":
            body = envelope("method_not_allowed", MESSAGES[405], None, state.request_id)
            await send_json(send, 405, body, [(b"allow", b"GET")])
            return
        if path == LOGIN_PATH:
            await self._login(scope, send)
            return
        if path == LOGOUT_PATH:
            await self._logout(scope, send)
            return
        content, media = self.routes[path]
        if path in PAGE_FILES:
            state.page_headers = PAGE_HEADERS
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", media), (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})

    async def _login(self, scope: Scope, send: Send) -> None:
        state = request_state(scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        # An empty tier, as a form's "keep current tier" option sends it, is no tier.
        user, tier, target = query.get("user", ""), query.get("tier") or None, query.get("next", "/")
        problem = None
        if not valid_user_id(user):
            problem = (
                "user",
                f"user must be 1 to {MAX_USER_ID_LENGTH} printable characters with no surrounding space.",
            )
        elif tier is not None and tier not in TIERS:
            problem = ("tier", f"tier must be one of {', '.join(sorted(TIERS))}.")
        elif not safe_next(target):
            problem = ("next", NEXT_MESSAGE)
        if problem:
            details = {"field": problem[0], "in": "query"}
            await send_json(send, 400, envelope("invalid_parameter", problem[1], details, state.request_id))
            return
        keys = self.services.keys
        try:
            # The store blocks: off the event loop.
            await asyncio.to_thread(keys.set_tier if tier else keys.account, *((user, tier) if tier else (user,)))
        except ServiceError as error:
            status, code = status_and_code(error)
            await send_json(send, status, envelope(code, error.message, error.details, state.request_id))
            return
        token = issue_token(self.services.settings.jwt_secret, user, self.services.clock(), LOGIN_TTL_S)
        await redirect(send, target, f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={LOGIN_TTL_S}")

    async def _logout(self, scope: Scope, send: Send) -> None:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        target = query.get("next", "/")
        if not safe_next(target):
            details = {"field": "next", "in": "query"}
            await send_json(
                send, 400, envelope("invalid_parameter", NEXT_MESSAGE, details, request_state(scope).request_id)
            )
            return
        await redirect(send, target, f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")


async def redirect(send: Send, target: str, cookie: str) -> None:
    """Answer 303 to `target` (a path on this server), setting `cookie`."""
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", quote(target, safe="/?#&=%:;@!$'()*+,-._~").encode()),
                (b"set-cookie", cookie.encode()),
                (b"content-length", b"0"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
