"""The gateway check a reverse proxy calls before each request to the Threat Intelligence API."""

from __future__ import annotations

from typing import Any

from connexion import context

from app.domain.errors import ServiceError
from app.web import gateway  # the check is HTTP through and through (tests/test_layers.py)
from handlers.context import request_id


def check_request(refusal: str = "status") -> Any:
    try:
        passed = gateway.check(context.scope)
    except ServiceError as error:
        if refusal != "header":
            raise
        return gateway.refusal_in_headers(error, request_id())
    if refusal == "header":
        # No body: nginx's auth_request never reads one, and an unread body costs it the connection.
        return None, 204, gateway.passed_headers(passed)
    return gateway.passed_body(passed), 200, gateway.passed_headers(passed)
