"""Domain errors: flat classes carrying their data, one HTTP status and code each.

`app.http_errors.ErrorHandlers` turns them into the contract's `Error` envelope.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error a client is meant to see."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers: dict[str, str] = {}


class InvalidParameter(ServiceError):
    """A parameter or body field broke a rule of the contract."""

    code = "invalid_parameter"


class InvalidJSON(ServiceError):
    """The request body is not valid JSON text."""

    code = "invalid_json"


class PayloadTooLarge(ServiceError):
    """The request body is larger than the service accepts."""

    status_code = 413
    code = "payload_too_large"


class RequestTimeout(ServiceError):
    """The request's head or body did not arrive in time."""

    status_code = 408
    code = "request_timeout"


class RequestTargetTooLong(ServiceError):
    """The request's path and query are longer than the service accepts."""

    status_code = 414
    code = "uri_too_long"


class HeadersTooLarge(ServiceError):
    """The request's headers are too large or too many."""

    status_code = 431
    code = "request_header_fields_too_large"


class MissingSession(ServiceError):
    """No session cookie was sent."""

    status_code = 401
    code = "missing_session"


class InvalidSession(ServiceError):
    """The session token is not one we signed, or it has expired."""

    status_code = 401
    code = "invalid_session"


class MissingAPIKey(ServiceError):
    """No API key was sent."""

    status_code = 401
    code = "missing_api_key"


class InvalidAPIKey(ServiceError):
    """The API key is malformed, fails its checksum or is unknown."""

    status_code = 401
    code = "invalid_api_key"


class ExpiredAPIKey(ServiceError):
    """The API key has passed its expiry time."""

    status_code = 401
    code = "expired_api_key"


class RevokedAPIKey(ServiceError):
    """The API key was revoked."""

    status_code = 401
    code = "revoked_api_key"


class InsufficientScope(ServiceError):
    """The key is valid but its tier lacks a scope the operation requires."""

    status_code = 403
    code = "insufficient_scope"


class KeyNotFound(ServiceError):
    """No key with this id belongs to the caller."""

    status_code = 404
    code = "key_not_found"


class DuplicateName(ServiceError):
    """An active key of the caller already has this name."""

    status_code = 409
    code = "duplicate_name"


class KeyLimitReached(ServiceError):
    """The caller already has the maximum number of active keys."""

    status_code = 409
    code = "key_limit_reached"


class RateLimited(ServiceError):
    """A rate-limit window is exhausted."""

    status_code = 429
    code = "rate_limit_exceeded"


class ServiceUnavailable(ServiceError):
    """The key store could not be reached in time."""

    status_code = 503
    code = "service_unavailable"
