"""Every error in the contract's `Error` envelope.

`envelope` serialises it (the request-context middleware uses it too, for the few answers
it gives before routing); `ErrorHandlers` maps our domain errors and everything Connexion
and Starlette raise (validation, security, 404, 405, 415, response validation) to it, plus
anything unexpected, which is logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from typing import Any

from connexion import FlaskApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from app.errors import ServiceError

log = logging.getLogger("app.errors")

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


# SQLite's answers that mean the key store cannot be used right now (locked past the busy
# timeout, read-only, full, failing to read or write, or not there), not that a request or
# the code is wrong: 503 with Retry-After, for the operator to clear and the client to retry.
STORE_UNAVAILABLE = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
})


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def key_operations(spec: dict) -> set[str]:
    """Return the operationIds authenticated by API key rather than by session."""
    return {
        operation["operationId"]
        for item in spec["paths"].values()
        for method, operation in item.items()
        if method in HTTP_METHODS
        and any(name != "CookieAuth" for requirement in operation.get("security", []) for name in requirement)
    }


def request_id_of(request: ConnexionRequest) -> str:
    """Return the id the request-context middleware gave this request."""
    return request.scope.get("state", {}).get("request_id", "req_unknown")


def envelope(code: str, message: str, details: dict[str, Any] | None, request_id: str) -> bytes:
    """Serialise the contract's `Error` envelope."""
    return json.dumps(
        {"error": {"code": code, "message": message, "details": details or {}, "request_id": request_id}}
    ).encode()


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
    """Error handlers for the app serving `spec`."""

    def __init__(self, spec: dict) -> None:
        self._key_operations = key_operations(spec)
        self._routes = [
            (re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$"),
             ", ".join(sorted(m.upper() for m in item if m in HTTP_METHODS)))
            for path, item in spec["paths"].items()
        ]

    def install(self, app: FlaskApp) -> None:
        app.add_error_handler(ServiceError, self.service_error)
        app.add_error_handler(ProblemException, self.problem)
        app.add_error_handler(HTTPException, self.http_exception)
        app.add_error_handler(sqlite3.OperationalError, self.store_unavailable)
        app.add_error_handler(Exception, self.unexpected)

    async def service_error(self, request: ConnexionRequest, exc: ServiceError) -> ConnexionResponse:
        return error_response(request, exc.status_code, exc.code, exc.message, exc.details, exc.headers)

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
            headers["Allow"] = self.allowed_methods(request.url.path) or headers.get("Allow", "")
        return error_response(request, status, code, message, headers=headers)

    def allowed_methods(self, path: str) -> str | None:
        """Return the Allow header value for a path, from the spec."""
        for pattern, methods in self._routes:
            if pattern.match(path):
                return methods
        return None

    async def store_unavailable(self, request: ConnexionRequest, exc: sqlite3.OperationalError) -> ConnexionResponse:
        # Extended codes (SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT, ...) carry their primary
        # code in the low byte.
        if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF not in STORE_UNAVAILABLE:
            return await self.unexpected(request, exc)  # a programming fault: no retry will help
        log.error("request %s: key store unavailable: %s", request_id_of(request), exc)
        return error_response(
            request, 503, "service_unavailable", "The service is temporarily unavailable; retry shortly.",
            headers={"Retry-After": "1"},
        )

    async def unexpected(self, request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        log.error("request %s failed", request_id_of(request), exc_info=exc)
        return error_response(request, 500, "internal_error", MESSAGES[500])

    def _unauthorized(self, request: ConnexionRequest, detail: str) -> ConnexionResponse:
        routing = request.scope.get("extensions", {}).get("connexion_routing", {})
        by_key = routing.get("operation_id") in self._key_operations
        if detail.startswith("No authorization token"):
            if by_key:
                return error_response(
                    request, 401, "missing_api_key",
                    'API key is required. Include it in the Authorization header as "Bearer sk_live_...", '
                    "in the X-API-Key header, or as the api_key query parameter.",
                )
            return error_response(request, 401, "missing_session", "Sign in: the sb-access-token session cookie is missing.")
        code = "invalid_api_key" if by_key else "invalid_session"
        return error_response(request, 401, code, "The credentials sent are malformed.")
