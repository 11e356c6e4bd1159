"""The refusals the HTTP layer makes on its own, before a request reaches an operation."""

from __future__ import annotations

from app.domain.errors import ServiceError


class RequestTimeout(ServiceError):
    """The request's head or body did not arrive in time."""


class RequestTargetTooLong(ServiceError):
    """The request's path and query are longer than the service accepts."""


class HeadersTooLarge(ServiceError):
    """The request's headers are too large or too many."""
