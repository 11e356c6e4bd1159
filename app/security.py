"""Connexion security functions, named in `openapi.json` (`x-apikeyInfoFunc`, `x-bearerInfoFunc`).

They run in Connexion's security middleware, outside Flask: the services come from the
request scope, put there by `RequestContextMiddleware`. Each authenticates, then counts
the request against its rate limit; the outcome's headers go back through the scope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from connexion.exceptions import OAuthResponseProblem
from connexion.lifecycle import ConnexionRequest
from connexion.security import NO_VALUE, ApiKeySecurityHandler, BearerSecurityHandler

from app.errors import InvalidAPIKey, InvalidSession, RateLimited, ServiceError
from app.ratelimit import Decision


def verify_session(token: str, request: ConnexionRequest) -> dict[str, Any]:
    """Authenticate a session cookie and count it against the account's management limit."""
    state = request.scope["state"]
    services = state["services"]
    now = services.clock()
    user_id = services.sessions.user_id(token, now)
    decision = services.limiter.admit(f"account:{user_id}", services.management_limits, now)
    _apply(state, decision, now, "key management for this account")
    return {"sub": user_id}


def verify_api_key(
    token: str, request: ConnexionRequest, required_scopes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Authenticate an API key, check its scopes and count it against its account's tier limits."""
    state = request.scope["state"]
    if "key_refusal" in state:
        # The same key sent two ways is tried once per way; it was refused (403, 429, ...)
        # already: say so again rather than look it up and count it a second time.
        raise state["key_refusal"]
    try:
        return _verify_api_key(token, request.scope, required_scopes)
    except ServiceError as refusal:
        state["key_refusal"] = refusal
        raise


def _verify_api_key(token: str, scope: dict[str, Any], required_scopes: Sequence[str] | None) -> dict[str, Any]:
    state = scope["state"]
    services = state["services"]
    if len(presented_keys(scope)) > 1:
        # Which one is meant? Guessing would let a stale or stolen key hide behind a good one.
        raise InvalidAPIKey("Send one API key, one way: this request carries more than one.")
    now = services.clock()
    record, decision = services.keys.use(token, required_scopes, services.limiter, now, state["request_id"])
    _apply(state, decision, now, "this account's API keys, which share its tier's limits")
    return {"sub": record.user_id, "key": record, "rate_limit": decision}


def presented_keys(scope: dict[str, Any]) -> set[str]:
    """Return every distinct API key the request carries, in any of the three places."""
    query = scope.get("query_string", b"")
    # Read as Starlette reads them (the security handlers see the same values).
    keys = {v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == "api_key"} if query else set()
    for name, raw in scope["headers"]:
        if name == b"x-api-key":
            keys.add(raw.decode("latin-1").strip())
        elif name == b"authorization":
            # Split as Connexion's bearer handler splits it (on any whitespace), so that the
            # key it checks is one of those counted here.
            parts = raw.decode("latin-1").split(maxsplit=1)
            if len(parts) == 2 and parts[0].lower() == "bearer":
                keys.add(parts[1].strip())
    return keys


def _apply(state: dict[str, Any], decision: Decision, now: float, subject: str) -> None:
    headers = decision.headers
    state["rate_limit_headers"] = headers
    if decision.allowed:
        return
    window = decision.blocked_by or "minute"
    limit = decision.day.limit if window == "day" else decision.minute.limit
    reset = decision.day.reset if window == "day" else decision.minute.reset
    retry_after = decision.retry_after(now)
    error = RateLimited(
        f"Rate limit of {limit} requests per {window} exceeded for {subject}; retry after {retry_after} s.",
        {"window": window, "limit": limit, "reset": reset, "retry_after": retry_after},
    )
    error.headers = {**headers, "Retry-After": str(retry_after)}
    raise error


class _SignatureOnce:
    """Inspect the security function's signature once, not on every request as Connexion does."""

    def _generic_check(self, func: Any, exception_msg: str) -> Any:
        takes_scopes = self._accepts_kwarg(func, self.required_scopes_kw)  # type: ignore[attr-defined]
        takes_request = self._accepts_kwarg(func, self.request_kw)  # type: ignore[attr-defined]

        async def wrapper(request: ConnexionRequest, *args: Any, required_scopes: Any = None) -> Any:
            kwargs = {}
            if takes_scopes:
                kwargs["required_scopes"] = required_scopes
            if takes_request:
                kwargs["request"] = request
            token_info = func(*args, **kwargs)
            while asyncio.iscoroutine(token_info):
                token_info = await token_info
            if token_info is NO_VALUE:
                return NO_VALUE
            if token_info is None:
                raise OAuthResponseProblem(detail=exception_msg)
            return token_info

        return wrapper


class ScopedBearerHandler(_SignatureOnce, BearerSecurityHandler):
    """Bearer handler that, like Connexion's apiKey handler, passes the required scopes on."""

    def get_fn(self, security_scheme: dict, required_scopes: list[str]) -> Any:
        check = self.check_bearer_token(self._resolve_func(security_scheme))

        def wrapper(request: ConnexionRequest) -> Any:
            auth_type, token = self.get_auth_header_value(request)
            if auth_type != "bearer":
                return NO_VALUE
            return check(request, token, required_scopes=required_scopes)

        return wrapper


class LenientCookieHandler(_SignatureOnce, ApiKeySecurityHandler):
    """apiKey handler that reads cookies the way browsers write them.

    Connexion parses the Cookie header with `http.cookies.SimpleCookie`, which raises on
    headers browsers send happily (an empty attribute, a stray `;`) and turns them into 500s.
    """

    def _get_verify_func(self, api_key_info_func: Any, loc: str, name: str, required_scopes: Any) -> Any:
        if loc != "cookie":
            return super()._get_verify_func(api_key_info_func, loc, name, required_scopes)
        check = self.check_api_key(api_key_info_func)

        def wrapper(request: ConnexionRequest) -> Any:
            # HTTP/2 clients may split cookies over several Cookie headers.
            values = self.get_cookie_values("; ".join(request.headers.getlist("cookie")), name)
            if not values:
                return NO_VALUE
            if len(values) > 1:
                # Which session is meant? Two cookies of one name come from two paths or
                # domains, or from a cookie planted beside the real one: guess neither.
                raise InvalidSession(f"Send one session: this request carries {len(values)} different {name} cookies.")
            return check(request, values.pop(), required_scopes=required_scopes)

        return wrapper

    @staticmethod
    def get_cookie_values(cookies: str | None, name: str) -> set[str]:
        """Return the distinct values of every cookie called `name`."""
        values = set()
        for part in (cookies or "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                values.add(value)
        return values


SECURITY_MAP = {"bearer": ScopedBearerHandler, "apiKey": LenientCookieHandler}
