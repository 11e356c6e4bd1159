"""Cross-site request forgery: where a cookie-authenticated request that changes state came from.

A browser sends the session cookie with any request to this server, whichever page made it.
CORS keeps a foreign page from *reading* the answer, not from *sending* a POST or DELETE
(a form, or a `fetch` in `no-cors` mode, needs no preflight). So such a request is refused,
with 403 `origin_not_allowed`, unless the page that sent it is this server's own or an
allowed origin: its `Origin` header, or without one its `Referer`, tells which. A request
with neither (curl, a server, an old client) is not a browser's cross-site request and
passes. `Origin: null` (a sandboxed frame, a `data:` page, a redirect across origins) names
no page that could be trusted, and is refused.

It runs after routing and before security, so that nothing is written (not even the
request's count against the account's rate limit) for a refused request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.domain.errors import OriginNotAllowed

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# What a browser puts in Origin and Referer as a host: an ASCII (punycode) name, an IPv4
# address, or an IPv6 literal (`urlsplit` gives it without brackets).
# Anchored, and no two runs that can trade characters: linear time on any input.
HOST_NAME = re.compile(r"\A(?:[a-z0-9_][a-z0-9_.-]*|[0-9a-f.]*:[0-9a-f:.]*)\Z")


def normalise_origin(value: str) -> str | None:
    """Return `scheme://host[:port]` for an origin or URL (default port dropped), or None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or not HOST_NAME.fullmatch(parts.hostname):
        return None  # a host no browser sends (`evil.example;t=...`): no origin at all
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        host += f":{port}"
    return f"{parts.scheme}://{host}"


class OriginPolicy:
    """Which pages may send state-changing, cookie-authenticated requests."""

    def __init__(self, origins: Iterable[str] = (), origin_regex: str = "") -> None:
        self.origins = frozenset(filter(None, (normalise_origin(o) for o in origins)))
        self.regex = re.compile(origin_regex) if origin_regex else None

    def allows(self, origin: str, own: str | None) -> bool:
        """Tell whether a page on `origin` (as sent) may act for the user of this server at `own`."""
        normal = normalise_origin(origin)
        if normal is None:  # `null`, or nothing an origin could be
            return False
        return normal == own or normal in self.origins or bool(self.regex and self.regex.fullmatch(normal))


def own_origin(scope: Scope, headers: Headers) -> str | None:
    """Return this server's origin as the request addressed it (its scheme and Host)."""
    host = headers.get("host")
    return normalise_origin(f"{scope.get('scheme', 'http')}://{host}") if host else None


class OriginCheckMiddleware:
    """Refuse a state-changing request to a cookie-authenticated operation from a foreign page."""

    def __init__(self, app: ASGIApp, operations: frozenset[str], policy: OriginPolicy) -> None:
        self.app = app
        self.operations = operations
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            operation = scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id")
            if operation in self.operations:
                self.check(scope)
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        origins = headers.getlist("origin")
        if origins:
            sent, header = origins, "Origin"
        elif "referer" in headers:
            sent, header = headers.getlist("referer"), "Referer"
        else:
            return  # not sent by a page: curl, a server, a client that names no page
        own = own_origin(scope, headers)
        refused = [value for value in sent if not self.policy.allows(value, own)]
        if refused or len(sent) > 1 and len(set(sent)) > 1:
            shown = (refused or sent)[0]
            if header == "Referer":
                # Its page's origin alone: the path and query of a page may carry a token or a key.
                shown = normalise_origin(shown) or "(not a URL)"
            shown = shown[:200]
            raise OriginNotAllowed(
                f"This request came from a page on {shown!r}, which may not change keys with this "
                "account's session. Send it from this server's own pages or an allowed origin "
                "(CORS_ORIGINS, CORS_ORIGIN_REGEX).",
                {"header": header, "origin": shown},
            )
