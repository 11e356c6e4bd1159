"""Domain errors: flat classes carrying their data, and no knowledge of HTTP.

`app.web.errors` maps each to a status and a code of the contract's `Error` envelope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.domain.records import KeyRecord


class ServiceError(Exception):
    """Base of every error a client is meant to see."""

    # The key the request presented, when it was found before the refusal (a revoked, expired
    # or out-of-scope key): set by `KeyService.use`, for the access line to name its owner.
    key: KeyRecord | None = None

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidParameter(ServiceError):
    """A parameter or body field broke a rule of the contract."""


class InvalidJSON(ServiceError):
    """The request body is not valid JSON text, or exceeds a bound on what JSON it may hold."""


class PayloadTooLarge(ServiceError):
    """The request body is larger than the service accepts."""


class MissingSession(ServiceError):
    """No session cookie was sent."""


class InvalidSession(ServiceError):
    """The session token is not one we signed, or it has expired."""


class AnonymousSession(ServiceError):
    """The session is a valid token of an anonymous sign-in, which may not manage keys."""


class MissingAPIKey(ServiceError):
    """No API key was sent."""


class InvalidAPIKey(ServiceError):
    """The API key is malformed, fails its checksum or is unknown."""


class ExpiredAPIKey(ServiceError):
    """The API key has passed its expiry time."""


class RevokedAPIKey(ServiceError):
    """The API key was revoked."""


class InsufficientScope(ServiceError):
    """The key is valid but its tier lacks a scope the operation requires."""


class OriginNotAllowed(ServiceError):
    """A cookie-authenticated request that changes state came from a page on a foreign origin."""


class KeyNotFound(ServiceError):
    """No key with this id belongs to the caller."""


class DuplicateName(ServiceError):
    """An active key of the caller already has this name."""


class KeyLimitReached(ServiceError):
    """The caller already has the maximum number of active keys."""


class ScopeNotGranted(ServiceError):
    """A key's scopes can be narrowed, never widened: this one was not granted it at mint (`details.scope`)."""


class KeyNotRollable(ServiceError):
    """The key to roll is revoked, expired or rolled already (`details.reason` says which)."""


class RateLimited(ServiceError):
    """A rate-limit window is exhausted: `decision` describes both windows, `retry_after` says
    in how many seconds the refusing one resets."""

    # `decision` is an `app.domain.ratelimit.Decision`, which builds this error: typed loosely
    # here so that the two modules do not import each other.
    def __init__(self, message: str, details: dict[str, Any], decision: Any, retry_after: int) -> None:
        super().__init__(message, details)
        self.decision = decision
        self.retry_after = retry_after


class StoreUnavailable(ServiceError):
    """The key store could not be reached, or could not write, in time."""


class AddressNotAllowed(ServiceError):
    """The key's IP allowlist does not hold the address the request came from."""


class ProxyNotAllowed(ServiceError):
    """The gateway check was asked by a peer that is not a configured gateway proxy."""


class RouteNotMapped(ServiceError):
    """The gateway check was asked about a route no scope map names, and unmapped routes are refused."""
