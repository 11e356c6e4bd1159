"""The gateway check over HTTP: what a reverse proxy sends, and what it gets back.

nginx (`auth_request`), Caddy (`forward_auth`) and Traefik (ForwardAuth) send the check the
original request's headers, and its method and URI in headers of their own:
`X-Forwarded-Method` and `X-Forwarded-Uri` (Caddy, Traefik), or `X-Original-Method` and
`X-Original-URI` (as the shipped nginx configuration sets them); the first pair wins when a
request carries both. The client's address is the rightmost `X-Forwarded-For` entry, the one
the proxy wrote, or else the proxy's own.

An allowed request is answered 200 with the identity headers for the upstream; a refusal with
the contract's envelope and its true status, or, with `refusal=header` (nginx, whose
`auth_request` passes only 401 and 403 and makes anything else a 500), with 401 or 403 and
the true status and envelope in `X-Gateway-Status` and `X-Gateway-Error`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app import metrics
from app.domain.errors import (
    InvalidAPIKey,
    InvalidParameter,
    MissingAPIKey,
    ProxyNotAllowed,
    RouteNotMapped,
    ServiceError,
)
from app.domain.gateway import ForwardedRequest, UnreadableRequest, parse_forwarded
from app.domain.grants import effective_scopes
from app.domain.ratelimit import Decision
from app.domain.records import KeyRecord
from app.web.clients import Proxies, resolve
from app.web.credentials import presented_keys
from app.web.errors import envelope, error_headers, status_and_code
from app.web.state import request_state

STATUS_HEADER = "X-Gateway-Status"
ERROR_HEADER = "X-Gateway-Error"
# Headers the check's answer carries for the upstream (and that a proxy must never take from the client).
IDENTITY_HEADERS = ("X-Account-Id", "X-Key-Id", "X-Key-Tier", "X-Key-Scopes")
UPSTREAM_URI_HEADER = "X-Upstream-Uri"


@dataclass(frozen=True)
class Passed:
    """A request the check lets through: the key, its scopes, the route's, and the count."""

    record: KeyRecord
    scopes: tuple[str, ...]
    required: tuple[str, ...]
    request: ForwardedRequest
    decision: Decision


# The request headers the check reads besides the key's: the original method and URI in either
# pair, and the client's address.
_FORWARDED = frozenset({b"x-forwarded-method", b"x-forwarded-uri", b"x-original-method", b"x-original-uri"})


def forwarded_headers(scope: dict[str, Any]) -> tuple[dict[bytes, str], list[str]]:
    """In one pass over the headers: the last value of each header of `_FORWARDED` that the
    request carries, and every X-Forwarded-For value, in order."""
    found: dict[bytes, str] = {}
    forwarded_for: list[str] = []
    for key, value in scope["headers"]:
        if key in _FORWARDED:
            found[key] = value.decode("latin-1")
        elif key == b"x-forwarded-for":
            forwarded_for.append(value.decode("latin-1"))
    return found, forwarded_for


def check(scope: dict[str, Any]) -> Passed:
    """Decide whether the request a proxy forwards may pass; raise the refusal's domain error."""
    state = request_state(scope)
    services = state.app_services()
    settings = services.settings
    client = state.client
    if not metrics.allowed(client.peer, settings.gateway_allow):
        raise ProxyNotAllowed(
            "The gateway check answers only the proxies named in GATEWAY_ALLOW.", {"peer": client.peer}
        )
    found, forwarded_for = forwarded_headers(scope)
    forwarded = forwarded_request(found)
    keys = presented_keys(scope)
    keys.update(forwarded.query_keys)
    if not keys:
        raise MissingAPIKey(
            'API key is required. Include it in the Authorization header as "Bearer sk_live_...", '
            "in the X-API-Key header, or as the api_key query parameter."
        )
    if len(keys) > 1:
        raise InvalidAPIKey("Send one API key, one way: this request carries more than one.")
    route = settings.gateway_routes.route_for(forwarded.method, forwarded.path)
    if route is None and not settings.gateway_routes.allow_unmapped:
        raise RouteNotMapped(
            f"No scope map names {forwarded.method} {forwarded.path}: it is not served through these keys.",
            {"method": forwarded.method, "path": forwarded.path},
        )
    required = route.scopes if route is not None else ()
    address = client_address(forwarded_for, client.peer)

    now = services.clock()
    try:
        record, decision = services.keys.use(keys.pop(), required, state.request_id, address=address)
    except ServiceError as refusal:
        if refusal.key is not None:  # a key found, then refused: its owner is known to the access line
            state.account_id, state.key_id = refusal.key.user_id, refusal.key.id
        raise
    state.account_id, state.key_id = record.user_id, record.id
    state.rate_limit = decision  # rendered as headers on the answer (app.web.headers.stamp)
    if not decision.allowed:
        raise decision.refusal(now, "this account's API keys, which share its tier's limits")
    return Passed(record, effective_scopes(record), required, forwarded, decision)


def forwarded_request(found: dict[bytes, str]) -> ForwardedRequest:
    """The original method and URI, from X-Forwarded-Method/-Uri or else X-Original-Method/-URI
    (`found`: the headers `forwarded_headers` read).

    A request carrying either X-Forwarded header is read from that pair alone.
    """
    method, uri = found.get(b"x-forwarded-method"), found.get(b"x-forwarded-uri")
    names = ("X-Forwarded-Method", "X-Forwarded-Uri")
    if method is None and uri is None:
        method, uri = found.get(b"x-original-method"), found.get(b"x-original-uri")
        names = ("X-Original-Method", "X-Original-URI")
    try:
        return parse_forwarded(method, uri)
    except UnreadableRequest as error:
        field = names[0] if error.part == "method" else names[1]
        raise InvalidParameter(f"{error} The proxy sends it in {field}.", {"in": "header", "field": field}) from None


# The check's proxy is trusted by GATEWAY_ALLOW: the address it appended is the client.
_THE_PROXY = Proxies(any_peer=True)


def client_address(forwarded_for: list[str], peer: str | None) -> str | None:
    """The client the proxy reports: the rightmost X-Forwarded-For entry, or the proxy itself."""
    return resolve(peer, forwarded_for, _THE_PROXY).address


def passed_headers(passed: Passed) -> dict[str, str]:
    """The headers of an allowed request's answer, for the proxy to copy upstream (the rate-limit
    headers are added with every key-authenticated answer)."""
    record = passed.record
    return {
        "X-Account-Id": record.user_id,
        "X-Key-Id": record.id,
        "X-Key-Tier": record.tier,
        "X-Key-Scopes": " ".join(passed.scopes),
        UPSTREAM_URI_HEADER: passed.request.upstream_uri,
        # The same in two parts, for proxies that rewrite path and query apart (Caddy).
        # ('$' as %24: Caddy puts the path in place with a regexp replacement, which expands '$1'.)
        "X-Upstream-Path": passed.request.upstream_path.replace("$", "%24"),
        "X-Upstream-Query": passed.request.upstream_query,
    }


def passed_body(passed: Passed) -> dict[str, Any]:
    """The body of an allowed request's answer."""
    return {
        "data": {
            "account_id": passed.record.user_id,
            "key_id": passed.record.id,
            "tier": passed.record.tier,
            "scopes": list(passed.scopes),
            "granted_scopes": None if passed.record.scopes is None else list(passed.record.scopes),
            "allowed_ips": None if passed.record.allowed_ips is None else list(passed.record.allowed_ips),
            "required_scopes": list(passed.required),
            "method": passed.request.method,
            "path": passed.request.path,
            "upstream_uri": passed.request.upstream_uri,
            "rate_limit": {
                name: {"limit": w.limit, "remaining": w.remaining, "reset": w.reset}
                for name, w in (("minute", passed.decision.minute), ("day", passed.decision.day))
            },
        }
    }


def refusal_in_headers(error: ServiceError, request_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Answer a refusal as nginx's auth_request can pass it on: 401 or 403, the truth in headers."""
    status, code = status_and_code(error)
    body = json.loads(envelope(code, error.message, error.details, request_id))
    headers = {
        **error_headers(error),
        STATUS_HEADER: str(status),
        # ASCII JSON, on one line: a header carries it unchanged, and nginx answers it as the body.
        ERROR_HEADER: json.dumps(body, separators=(", ", ": ")),
    }
    return body, 401 if status == 401 else 403, headers
