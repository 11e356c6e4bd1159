"""Per-request context: request id, service lookup, rate-limit headers and the access log."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.domain.errors import PayloadTooLarge, ServiceError
from app.web.errors import MESSAGES, envelope, error_code_of, status_and_code
from app.web.limits import MAX_BODY_BYTES, READ_TIMEOUT_SECONDS, HeadLimits
from app.web.ratelimit_headers import rate_limit_headers
from app.web.refusals import RequestTimeout

access_log = logging.getLogger("app.access")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
ENCODED_SLASH = re.compile(rb"%2f|%5c", re.IGNORECASE)  # `/` and `\`
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
DOCS_PREFIX = "/ui"
# A client address as logged: an IP address and port use none of the others. Anything else
# (a proxy's X-Forwarded-For is free text) is escaped, so it cannot pose as other fields.
NOT_IN_ADDRESSES = re.compile(r"[^0-9A-Za-z.:\[\]_-]")
CLIENT_CLOSED_REQUEST = 499  # logged, as nginx does, for a request whose client left before sending it whole
# The access log's route for requests no operation matched: the pages' fixed paths as they
# are, and nothing of any other path (it could carry a secret pasted into the wrong place).
PAGE_ROUTES = frozenset({"/", "/openapi.json", "/dev/login"})
NO_ROUTE = "-"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


class RequestContextMiddleware:
    """Set each request up and stamp its response: the first and last thing every request meets.

    - gives it an id and the services (security functions run outside Flask, so they find
      the services in `scope["state"]`; what they learn about rate limits comes back the
      same way and becomes headers here);
    - makes its Content-Type unambiguous, so that only a body declared as JSON is read as
      JSON (a missing one is not guessed: a cross-site form or Blob post has none);
    - refuses headers over `head_limits` (431), as the server does before the app exists;
    - receives the whole body before anything acts on it: within `max_body_bytes` (413) and
      `read_timeout` seconds (408), and if the client leaves first, nothing is done at all
      (not even authentication, which counts the request against a rate limit). The
      complete body is then described by its length, as a buffering proxy passes it on,
      also when it arrived chunked (Connexion takes a request without Content-Length for
      one without a body);
    - answers HEAD where the contract defines it (the probes) without the body, and
      elsewhere with 405 before any work is done;
    - writes one access-log line (`log_access`) with what an operator needs and no secret:
      the operation's route template, never the raw path or query; the account and key the
      security functions identified (`state["account_id"]`, `state["key_id"]`); the error
      code of an error answer, read from the start of its envelope as it is sent.
    """

    def __init__(self, app: ASGIApp, services: Any, allowed_methods: Callable[[str], str | None],
                 max_body_bytes: int = MAX_BODY_BYTES, read_timeout: float = READ_TIMEOUT_SECONDS,
                 head_limits: HeadLimits | None = None, routes: Mapping[str, str] | None = None,
                 route_of: Callable[[str], str | None] | None = None) -> None:
        self.app = app
        self.services = services
        self.routes = routes or {}  # operationId: path template
        self.route_of = route_of or (lambda path: None)  # the template a path matches, before routing
        self.allowed_methods = allowed_methods
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.head_limits = head_limits or HeadLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["services"] = self.services
        if scope["path"].startswith(DOCS_PREFIX):
            state["docs_page"] = True
        # Shared by every copy of the scope made further in, so routing facts reach the
        # error handlers (Starlette's test client adds it; uvicorn does not).
        scope.setdefault("extensions", {})
        started = time.perf_counter()
        method = scope["method"]  # as sent: HEAD is answered as GET below
        status = 500
        error_code: str | None = None

        async def stamped(message: Message) -> None:
            nonlocal status, error_code
            if message["type"] == "http.response.start":
                status = message["status"]
                stamp(message, state)
            elif status >= 400 and error_code is None:
                error_code = error_code_of(message.get("body", b"")) or ""
            await send(message)

        send_with_headers: Send = stamped

        try:
            try:
                self.head_limits.check_headers(scope["headers"])
                body = await self._read_body(receive, _has_body(scope["headers"]))
            except ServiceError as refusal:
                status, code = status_and_code(refusal)
                await send_json(send_with_headers, status,
                                envelope(code, refusal.message, refusal.details, request_id),
                                [(b"connection", b"close")])  # the rest of the request is not read
                return
            if scope["method"] == "HEAD":
                if not self._head_allowed(scope["path"]):
                    status = await self._refuse_head(scope, send_with_headers)
                    return
                # Answered as its GET (as Starlette's router would route it anyway), so that
                # response validation checks the GET's answer; the body is then left out. A
                # copy: the server's own scope stays HEAD, so it expects no body either.
                scope = {**scope, "method": "GET"}
                send_with_headers = _without_body(send_with_headers)
            path = scope["path"]
            if (CONTROL_CHARACTERS.search(path) or (path.endswith("/") and path != "/" and not path.startswith("/ui"))
                    or ENCODED_SLASH.search(scope.get("raw_path") or b"")):
                # No route has a control character (and Starlette's `$` matches before a
                # final newline, which would route `/api/v1/keys/%0A` past security to a
                # handler), nor a trailing slash (which the router would answer with a 307
                # redirect the contract does not describe). Nor an encoded slash: the server
                # decodes `%2F` before routing, so `/api/v1%2Fkeys` would reach the route a
                # proxy rule written for `/api/v1/keys` never saw.
                status = 404
                await send_json(send_with_headers, 404, envelope("not_found", MESSAGES[404], None, request_id))
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                _normalise_content_type(scope)
            if any(name == b"transfer-encoding" for name, _ in scope["headers"]):
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"transfer-encoding")]
                scope["headers"].append((b"content-length", str(len(body)).encode()))
            await self.app(scope, _replay(body, receive), send_with_headers)
        except ClientDisconnect:
            status = CLIENT_CLOSED_REQUEST
        finally:
            elapsed = time.perf_counter() - started
            operation = scope["extensions"].get("connexion_routing", {}).get("operation_id")
            metrics.record(operation, scope["method"], status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                route = self.routes.get(operation, NO_ROUTE) if operation else self._unrouted(scope["path"])
                log_access(request_id, method, route, status, elapsed, client_field(scope.get("client")),
                           state.get("account_id"), state.get("key_id"), error_code or None)

    def _unrouted(self, path: str) -> str:
        """The route of a request no operation took: refused before routing (its template,
        if its path matches one), a page, or none."""
        if CONTROL_CHARACTERS.search(path):
            return NO_ROUTE
        return self.route_of(path) or (
            path if path in PAGE_ROUTES else "/ui/*" if path.startswith(DOCS_PREFIX + "/") else NO_ROUTE)

    async def _read_body(self, receive: Receive, has_body: bool) -> bytes:
        """Receive the whole body; raise PayloadTooLarge, RequestTimeout or ClientDisconnect."""
        if not has_body:
            # No Content-Length or Transfer-Encoding: no body to wait for, and no timer needed
            # (setting one costs more than the rest of this request's reading).
            return await self._receive_body(receive)
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self._receive_body(receive)
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self.read_timeout:g} s.",
                {"limit_seconds": self.read_timeout},
            ) from None

    async def _receive_body(self, receive: Receive) -> bytes:
        limit, chunks, size = self.max_body_bytes, [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.", {"limit_bytes": limit})
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _head_allowed(self, path: str) -> bool:
        """Whether the contract defines HEAD on this path (the probes)."""
        return "HEAD" in (self.allowed_methods(path) or "").split(", ")

    async def _refuse_head(self, scope: Scope, send: Send) -> int:
        """Answer HEAD without a body (as HEAD must): 405 on our paths, 404 elsewhere."""
        allow = self.allowed_methods(scope["path"])
        status = 405 if allow else 404
        await send_json(send, status, b"", [(b"allow", allow.encode())] if allow else None)
        return status


def _without_body(send: Send) -> Send:
    """Send the response's status and headers (its Content-Length included), not its body: HEAD."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return send_head


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"transfer-encoding" or (name == b"content-length" and value != b"0") for name, value in headers)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Return a receive channel giving `body` in one message, then what `receive` gives."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a complete JSON response."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling, with refused preflights in the contract's error envelope."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if (headers is not None and scope["method"] == "OPTIONS" and "origin" in headers
                and "access-control-request-method" in headers):
            response = self.preflight_response(request_headers=headers)
            if response.status_code == 400:
                message = bytes(response.body).decode() + "."
                body = envelope("cors_not_allowed", message, None, scope["state"]["request_id"])
                kept = [(k, v) for k, v in response.raw_headers if k not in (b"content-type", b"content-length")]
                await send_json(send, 400, body, kept)
                return
        await super().__call__(scope, receive, send)


def _normalise_content_type(scope: Scope) -> None:
    """Lower-case the media type, and mark a missing or contradictory Content-Type as such."""
    values = [v for k, v in scope["headers"] if k == b"content-type"]
    distinct = {_media_type(v) for v in values}
    if len(distinct) == 1:
        value = _media_type(values[0])
    else:
        # None, or two that disagree: neither is guessed at; Connexion answers 415.
        value = b"application/x-missing-or-conflicting-content-type"
    scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [(b"content-type", value)]


def _media_type(value: bytes) -> bytes:
    media, _, params = value.partition(b";")
    params = b";".join(p.strip() for p in params.split(b";") if p.strip())
    return media.strip().lower() + (b"; " + params if params else b"")


class OperationBoundaryMiddleware:
    """The last stop before Flask: only routed operations pass, and (when responses are
    validated) their responses get their headers in time.

    A request Connexion's router did not match would otherwise fall through to Flask's own,
    more lenient router and reach a handler with no operation context; here it is a 404.
    This sits inside response validation, so when that is on, successful responses must
    carry the headers the contract requires before they are checked; otherwise
    `RequestContextMiddleware` stamps them on their way out. Either way once: `stamp`
    marks the message.
    """

    def __init__(self, app: ASGIApp, stamp_headers: bool = True) -> None:
        self.app = app
        self.stamp_headers = stamp_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id"):
            raise HTTPException(404)
        if not self.stamp_headers:
            await self.app(scope, receive, send)
            return
        state = scope["state"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                stamp(message, state)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def stamp(message: Message, state: dict[str, Any]) -> None:
    """Add X-Request-ID, any rate-limit headers, `Cache-Control: no-store` and the protective
    headers to a response start."""
    if message.get("stamped"):
        return
    message["stamped"] = True  # a response passing both middlewares is stamped once
    # Responses carry secrets (a new key) or per-account data: no cache may keep them.
    added = {b"x-request-id": state["request_id"].encode("latin-1"), b"cache-control": b"no-store",
             **PROTECTIVE_HEADERS}
    if state.get("docs_page"):
        added[b"content-security-policy"] = DOCS_PAGE_POLICY
        # Its "Try it out" posts to this server: the Origin it sends must name the page.
        added[b"referrer-policy"] = b"same-origin"
    added.update(state.get("page_headers", {}))  # a page's own policy (app.web.pages)
    decision = state.get("rate_limit")  # what a security function or handler counted
    if decision is not None:
        for name, value in rate_limit_headers(decision).items():
            added[name.lower().encode("latin-1")] = value.encode("latin-1")
    replaced = set(added)
    if message["status"] == 204:
        replaced.add(b"content-type")
    kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in replaced]
    message["headers"] = kept + list(added.items())


def log_access(request_id: str, method: str, route: str, status: int, elapsed: float, client: str,
               account_id: str | None = None, key_id: str | None = None, error_code: str | None = None) -> None:
    """Write one access line: the message for people, the same facts as fields for programs."""
    access_log.info("%s %s %d", method, route, status, extra={"fields": {
        "request_id": request_id, "method": method, "route": route, "status": status,
        "duration_ms": round(elapsed * 1000, 1), "client": client,
        "account_id": account_id, "key_id": key_id, "error_code": error_code,
    }})


def client_field(client: Any) -> str:
    """Return a client `(host, port)` as the access log shows it, escaped."""
    if not client:
        return "-"
    text = f"{client[0]}:{client[1]}"
    return NOT_IN_ADDRESSES.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


class SpecCacheMiddleware:
    """Swagger UI's copies of the contract, answered from memory after the first request.

    Connexion's Swagger UI layer serialises the whole contract again for every request
    (measured in process: 140 ms for `/ui/openapi.json`, 530 ms for its YAML), on the event
    loop and with no credentials needed: a handful of clients could stall every worker. The
    documents cannot change while the process runs, so each (path, root path) is rendered
    once; what is replayed is the answer as Connexion gave it, before `stamp` adds the
    per-request headers.
    """

    def __init__(self, app: ASGIApp, paths: Collection[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self._answers: dict[tuple[str, str], list[Message]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope.get("root_path", ""))
        answer = self._answers.get(key)
        if answer is not None:
            for message in answer:
                await send({**message, "headers": list(message.get("headers", ()))})
            return
        recorded: list[Message] = []

        async def record(message: Message) -> None:
            recorded.append({**message, "headers": list(message.get("headers", ()))})
            await send(message)

        await self.app(scope, receive, record)
        if recorded and recorded[0].get("status") == 200 and not recorded[-1].get("more_body", False):
            self._answers[key] = recorded
