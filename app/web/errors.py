"""Every error in the contract's `Error` envelope, and the one table from domain errors to HTTP.

`envelope` serialises it (the layers in front of routing use it too, for the few answers
they give themselves); `ErrorHandlers` maps our domain errors (`DOMAIN_ERRORS`) and
everything Connexion and Starlette raise (validation, security, 404, 405, 415, response
validation) to it, plus anything unexpected, which is logged with its traceback and
answered with a bare 500.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from connexion import FlaskApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope

from app.domain import errors as domain
from app.domain.errors import ServiceError
from app.web.contract import ContractIndex
from app.web.credentials import SESSION_COOKIE, cookie_values, presented_keys
from app.web.ratelimit_headers import rate_limit_headers
from app.web.refusals import HeadersTooLarge, RequestTargetTooLong, RequestTimeout
from app.web.state import STATE_KEY

log = logging.getLogger("app.errors")

# Each error's status and code: the domain's, and the few the HTTP layer raises itself. A
# subclass not listed takes its nearest listed base's.
DOMAIN_ERRORS: dict[type[ServiceError], tuple[int, str]] = {
    ServiceError: (400, "bad_request"),
    domain.InvalidParameter: (400, "invalid_parameter"),
    domain.InvalidJSON: (400, "invalid_json"),
    domain.MissingSession: (401, "missing_session"),
    domain.InvalidSession: (401, "invalid_session"),
    domain.AnonymousSession: (401, "anonymous_session"),
    domain.MissingAPIKey: (401, "missing_api_key"),
    domain.InvalidAPIKey: (401, "invalid_api_key"),
    domain.ExpiredAPIKey: (401, "expired_api_key"),
    domain.RevokedAPIKey: (401, "revoked_api_key"),
    domain.InsufficientScope: (403, "insufficient_scope"),
    domain.OriginNotAllowed: (403, "origin_not_allowed"),
    domain.AddressNotAllowed: (403, "ip_not_allowed"),
    domain.ProxyNotAllowed: (403, "proxy_not_allowed"),
    domain.RouteNotMapped: (403, "route_not_mapped"),
    domain.KeyNotFound: (404, "key_not_found"),
    domain.DuplicateName: (409, "duplicate_name"),
    domain.KeyLimitReached: (409, "key_limit_reached"),
    domain.KeyNotRollable: (409, "key_not_rollable"),
    domain.ScopeNotGranted: (409, "scope_not_granted"),
    RequestTimeout: (408, "request_timeout"),
    domain.PayloadTooLarge: (413, "payload_too_large"),
    RequestTargetTooLong: (414, "uri_too_long"),
    domain.RateLimited: (429, "rate_limit_exceeded"),
    HeadersTooLarge: (431, "request_header_fields_too_large"),
    domain.StoreUnavailable: (503, "service_unavailable"),
}
# What a client should do about some of them, beyond the envelope.
STORE_RETRY_AFTER_S = 1


def status_and_code(error: ServiceError) -> tuple[int, str]:
    """Return the HTTP status and error code for a domain error."""
    for cls in type(error).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]  # type: ignore[index]
    raise TypeError(f"{type(error).__name__} is not a ServiceError")


def error_headers(error: ServiceError) -> dict[str, str]:
    """Return the headers a domain error's answer carries (Retry-After, X-RateLimit-*)."""
    if isinstance(error, domain.RateLimited):
        return {**rate_limit_headers(error.decision), "Retry-After": str(error.retry_after)}
    if isinstance(error, domain.StoreUnavailable):
        return {"Retry-After": str(STORE_RETRY_AFTER_S)}
    return {}


class HTTPServiceError(ServiceError):
    """A domain error with its status attached, for Connexion's security layer.

    When several security schemes fail, Connexion raises the one whose `status_code` ranks
    first (403, then 401); a domain error has none, so security functions raise this.
    """

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message, error.details)
        self.error = error
        self.status_code = status_and_code(error)[0]


# Connexion's codes for its own errors, by status.
STATUS_CODES = {
    400: "invalid_parameter",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
    500: "internal_error",
}
MESSAGES = {
    404: "No such endpoint. See /openapi.json for the ones this API serves.",
    405: "This method is not allowed on this endpoint; see the Allow header.",
    415: "Request body must be JSON (Content-Type: application/json).",
    500: "An unexpected error occurred.",
}


def request_id_of(request: ConnexionRequest) -> str:
    """Return the id the access log's layer gave this request."""
    return request_id_in(request.scope)


def request_id_in(scope: Scope) -> str:
    """Return the id the access log's layer gave the request of this ASGI scope."""
    state = scope.get("state", {}).get(STATE_KEY)
    return state.request_id if state is not None else "req_unknown"


def envelope(code: str, message: str, details: dict[str, Any] | None, request_id: str) -> bytes:
    """Serialise the contract's `Error` envelope."""
    return json.dumps(
        {"error": {"code": code, "message": message, "details": details or {}, "request_id": request_id}}
    ).encode()


# How every envelope begins (`envelope`, and the development server's examples, which name
# `code` first): the access log reads an answer's code from here, without parsing the body.
ENVELOPE_START = b'{"error": {"code": "'
ERROR_CODE = re.compile(rb"[a-z_]{1,64}")


def error_code_of(body: bytes) -> str | None:
    """Return the error code of an `Error` envelope's serialisation, or None for any other body."""
    if not body.startswith(ENVELOPE_START):
        return None
    end = body.find(b'"', len(ENVELOPE_START))
    code = body[len(ENVELOPE_START):end]
    return code.decode() if end > 0 and ERROR_CODE.fullmatch(code) else None


def error_response(
    request: ConnexionRequest,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ConnexionResponse:
    """Build an `Error` envelope response."""
    return ConnexionResponse(
        status_code=status,
        body=envelope(code, message, details, request_id_of(request)),
        mimetype="application/json",
        content_type="application/json",
        headers=headers or {},
    )


class ErrorHandlers:
    """Error handlers for the app serving the contract `contract` indexes."""

    def __init__(self, contract: ContractIndex) -> None:
        self.contract = contract

    def install(self, app: FlaskApp) -> None:
        app.add_error_handler(ServiceError, self.service_error)
        app.add_error_handler(ProblemException, self.problem)
        app.add_error_handler(HTTPException, self.http_exception)
        app.add_error_handler(Exception, self.unexpected)

    async def service_error(self, request: ConnexionRequest, exc: ServiceError) -> ConnexionResponse:
        error = exc.error if isinstance(exc, HTTPServiceError) else exc
        status, code = status_and_code(error)
        if status == 503:
            log.error("request %s: key store unavailable: %r", request_id_of(request), error.__cause__ or error)
        return error_response(request, status, code, error.message, error.details, error_headers(error))

    async def problem(self, request: ConnexionRequest, exc: ProblemException) -> ConnexionResponse:
        status = exc.status
        if status == 401:
            return self._unauthorized(request, str(exc.detail or ""))
        if status >= 500:
            # A response that broke the contract, or a server fault: say nothing of it to the client.
            log.error("request %s failed: %s", request_id_of(request), exc.detail)
            return error_response(request, 500, "internal_error", MESSAGES[500])
        code = STATUS_CODES.get(status, "bad_request")
        message = MESSAGES.get(status) or str(exc.detail or exc.title or "Bad request.")
        details = {}
        if message == "RequestBody is required":
            message, details = "A JSON request body is required.", {"field": "body", "constraint": "required"}
        return error_response(request, status, code, message, details, headers=dict(exc.headers or {}))

    async def http_exception(self, request: ConnexionRequest, exc: HTTPException) -> ConnexionResponse:
        status = exc.status_code
        code = STATUS_CODES.get(status, "http_error")
        message = MESSAGES.get(status) or str(exc.detail)
        headers = dict(exc.headers or {})
        if status == 405:
            # The router only knows the methods of the first route it matched; the spec knows all.
            headers["Allow"] = self.contract.allowed_methods(request.url.path) or headers.get("Allow", "")
        return error_response(request, status, code, message, headers=headers)

    async def unexpected(self, request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        log.error("request %s failed", request_id_of(request), exc_info=exc)
        return error_response(request, 500, "internal_error", MESSAGES[500])

    def _unauthorized(self, request: ConnexionRequest, detail: str) -> ConnexionResponse:
        # Connexion's own 401s: no credential of any scheme was found, or one it could not
        # read (say `Authorization: Bearer` with no token). Told apart by looking at the
        # request, not at Connexion's wording.
        routing = request.scope.get("extensions", {}).get("connexion_routing", {})
        by_key = routing.get("operation_id") in self.contract.key_operations
        if by_key:
            # A Bearer header without its token is a malformed key, not a missing one.
            missing = not presented_keys(request.scope) and not any(
                value.lower().split(maxsplit=1)[:1] == ["bearer"] for value in request.headers.getlist("authorization")
            )
        else:
            missing = not cookie_values("; ".join(request.headers.getlist("cookie")), SESSION_COOKIE)
        if missing:
            if by_key:
                return error_response(
                    request, 401, "missing_api_key",
                    'API key is required. Include it in the Authorization header as "Bearer sk_live_...", '
                    "in the X-API-Key header, or as the api_key query parameter.",
                )
            return error_response(request, 401, "missing_session", "Sign in: the sb-access-token session cookie is missing.")
        code = "invalid_api_key" if by_key else "invalid_session"
        return error_response(request, 401, code, "The credentials sent are malformed.")
