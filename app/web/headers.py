"""The headers every response carries: its request id, `Cache-Control: no-store`, the
protective headers, and the rate-limit headers of what the security functions counted.

`ResponseHeadersMiddleware` stamps them on each response on its way out;
`app.web.boundary` stamps them earlier when responses are validated, and the server's own
refusals (`app.web.transport`) stamp theirs with `stamp`. Either way once: `stamp` marks
the message.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.web.paths import DOCS_PREFIX
from app.web.ratelimit_headers import RATE_LIMIT_HEADER_NAMES, rate_limit_headers
from app.web.state import RequestState, request_state

# On every response: the API's answers are JSON for programs, never a page to frame, sniff
# as HTML or follow links from.
PROTECTIVE_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
# Swagger UI's page loads its own scripts, styles and icons and runs one inline script.
DOCS_PAGE_POLICY = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

_WIRE_NAMES = {name: name.lower().encode("latin-1") for name in RATE_LIMIT_HEADER_NAMES}


class ResponseHeadersMiddleware:
    """Stamp every response with the headers `stamp` adds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        if scope["path"].startswith(DOCS_PREFIX):
            state.docs_page = True

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                stamp(message, state)
            await send(message)

        await self.app(scope, receive, stamped)


def stamp(message: Message, state: RequestState) -> None:
    """Add X-Request-ID, any rate-limit headers, `Cache-Control: no-store` and the protective
    headers to a response start."""
    if message.get("stamped"):
        return
    message["stamped"] = True  # a response passing both middlewares is stamped once
    # Responses carry secrets (a new key) or per-account data: no cache may keep them.
    added = {b"x-request-id": state.request_id.encode("latin-1"), b"cache-control": b"no-store", **PROTECTIVE_HEADERS}
    if state.docs_page:
        added[b"content-security-policy"] = DOCS_PAGE_POLICY
        # Its "Try it out" posts to this server: the Origin it sends must name the page.
        added[b"referrer-policy"] = b"same-origin"
    if state.page_headers:
        added.update(state.page_headers)  # a page's own policy (app.web.pages)
    if state.rate_limit is not None:  # what a security function or handler counted
        for name, value in rate_limit_headers(state.rate_limit).items():
            added[_WIRE_NAMES[name]] = value.encode("latin-1")
    replaced = set(added)
    if message["status"] == 204:
        replaced.add(b"content-type")
    kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in replaced]
    message["headers"] = kept + list(added.items())
