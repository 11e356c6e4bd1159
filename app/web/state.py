"""What the layers of one request tell one another: one typed object in the request's scope.

The outermost layer (`app.web.access`) makes it; every layer, security function and handler
after it reads and writes its fields. Copies of the scope made further in share it, as they
share `scope["state"]`, where it lives under one key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

STATE_KEY = "socdefenders.request"  # its key in `scope["state"]`
NOT_PARSED = object()  # `RequestState.json_body` before the body validator has parsed the body


@dataclass(slots=True, eq=False)
class RequestState:
    """One request's facts, as the layers learn them."""

    request_id: str
    # The app's `app.services.Services` (None only for the server's own refusals). Typed
    # loosely, as `client` is: the modules that define them read this one (no import circle).
    services: Any = None
    # The method the request is answered as: a HEAD is answered as its GET (app.web.paths).
    method: str = ""
    client: Any = None  # an `app.web.clients.Client`: as the trusted proxies in front saw it
    body: bytes = b""  # the whole body, read and joined once (app.web.bounds)
    json_body: Any = NOT_PARSED  # the body parsed as JSON, once, by the request validator
    docs_page: bool = False  # a Swagger UI page: its own security headers (app.web.headers)
    page_headers: Mapping[bytes, bytes] | None = None  # a page's own policy (app.web.pages)
    # What a security function or handler counted (an `app.domain.ratelimit.Decision`),
    # rendered as the answer's rate-limit headers by `app.web.headers`.
    rate_limit: Any = None
    account_id: str | None = None  # who the security functions identified, for the access line
    key_id: str | None = None
    key_refusal: Exception | None = None  # an API key refused once, refused again as sent another way

    def app_services(self) -> Any:
        """Return the app's services (a request the server refused itself has none)."""
        if self.services is None:
            raise LookupError(f"request {self.request_id} was not set up by the app")
        return self.services


def request_state(scope: Scope) -> RequestState:
    """Return the request's state (`KeyError` outside a request the app set up)."""
    state: RequestState = scope["state"][STATE_KEY]
    return state


def attach(scope: Scope, state: RequestState) -> RequestState:
    """Put `state` into the request's scope, where `request_state` finds it."""
    scope.setdefault("state", {})[STATE_KEY] = state
    return state
