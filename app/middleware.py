"""Per-request context: request id, service lookup, rate-limit headers and the access log."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("app.access")
SECRET_QUERY_PARAMS = frozenset({"api_key"})


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


class RequestContextMiddleware:
    """Give each request an id and the services, and stamp its response headers.

    Security functions run outside Flask, so they find the services in `scope["state"]`;
    what they learn about rate limits comes back the same way and becomes headers here.
    """

    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["services"] = self.services
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                stamp(message, state)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    '%s "%s %s" %d %.1fms %s',
                    _client(scope), scope["method"], redacted_target(scope), status,
                    (time.perf_counter() - started) * 1000, request_id,
                )


class OperationBoundaryMiddleware:
    """The last stop before Flask: only routed operations pass, and their responses get headers.

    A path Connexion's router did not match (say `/api/v1/keys/%0A`) would otherwise fall
    through to Flask's own, more lenient router and reach a handler with no operation
    context; here it is a 404. It sits inside response validation, so successful responses
    carry the headers the contract requires when they are checked; errors raised further
    out are stamped by `RequestContextMiddleware`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id"):
            raise HTTPException(404)
        state = scope["state"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                stamp(message, state)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def stamp(message: Message, state: dict[str, Any]) -> None:
    """Add X-Request-ID and any rate-limit headers to a response-start message."""
    headers = MutableHeaders(scope=message)
    headers["X-Request-ID"] = state["request_id"]
    for name, value in state.get("rate_limit_headers", {}).items():
        headers[name] = value


def redacted_target(scope: Scope) -> str:
    """Return the request path and query with secret query parameters masked."""
    path = scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name in SECRET_QUERY_PARAMS for name, _ in pairs):
        query = urlencode([(n, "[REDACTED]" if n in SECRET_QUERY_PARAMS else v) for n, v in pairs])
    return f"{path}?{query}"


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"
