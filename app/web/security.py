"""Connexion security functions, named in `openapi.json` (`x-apikeyInfoFunc`, `x-bearerInfoFunc`),
and the two security handlers this service gives Connexion through its `security_map`.

The functions run in Connexion's security middleware, outside Flask: the services come from
the request's state (`app.web.state`), put there by `AccessLogMiddleware`. Each authenticates,
then counts the request against its rate limit; the outcome's headers go back through the
same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connexion.lifecycle import ConnexionRequest
from connexion.security import NO_VALUE, ApiKeySecurityHandler, BearerSecurityHandler

from app.domain.errors import InvalidAPIKey, InvalidSession, ServiceError
from app.domain.ratelimit import Decision, management_subject
from app.domain.records import KeyRecord
from app.web.credentials import cookie_values, presented_keys
from app.web.errors import HTTPServiceError
from app.web.ratelimit_headers import rate_limit_headers
from app.web.state import RequestState, request_state


def verify_session(token: str, request: ConnexionRequest) -> dict[str, Any]:
    """Authenticate a session cookie and count it against the account's management limit."""
    state = request_state(request.scope)
    services = state.app_services()
    try:
        now = services.clock()
        user_id = services.sessions.user_id(token, now)
        state.account_id = user_id  # for the access line
        decision = services.limiter.admit(management_subject(user_id), services.management_limits, now)
        _apply(state, decision, now, "key management for this account")
    except ServiceError as refusal:
        raise HTTPServiceError(refusal) from refusal
    return {"sub": user_id}


def verify_api_key(
    token: str, request: ConnexionRequest, required_scopes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Authenticate an API key, check its scopes and count it against its account's tier limits."""
    state = request_state(request.scope)
    if state.key_refusal is not None:
        # The same key sent two ways is tried once per way; it was refused (403, 429, ...)
        # already: say so again rather than look it up and count it a second time.
        raise state.key_refusal
    try:
        return _verify_api_key(token, request.scope, state, required_scopes)
    except ServiceError as refusal:
        state.key_refusal = HTTPServiceError(refusal)
        raise state.key_refusal from refusal


def _verify_api_key(
    token: str, scope: dict[str, Any], state: RequestState, required_scopes: Sequence[str] | None
) -> dict[str, Any]:
    services = state.app_services()
    if len(presented_keys(scope)) > 1:
        # Which one is meant? Guessing would let a stale or stolen key hide behind a good one.
        raise InvalidAPIKey("Send one API key, one way: this request carries more than one.")
    now = services.clock()

    def identified(record: KeyRecord) -> None:
        # For the access line, also when the key is then refused (revoked, expired, scope).
        state.account_id, state.key_id = record.user_id, record.id

    record, decision = services.keys.use(token, required_scopes, services.limiter, now, state.request_id, identified)
    _apply(state, decision, now, "this account's API keys, which share its tier's limits")
    return {"sub": record.user_id, "key": record, "rate_limit": decision}


def _apply(state: RequestState, decision: Decision, now: float, subject: str) -> None:
    state.rate_limit_headers = rate_limit_headers(decision)
    if not decision.allowed:
        raise decision.refusal(now, subject)


class ScopedBearerHandler(BearerSecurityHandler):
    """Bearer handler that, like Connexion's apiKey handler, passes the required scopes on.

    Replaces `BearerSecurityHandler.get_fn` and its `_get_verify_func` (connexion 3.3.0,
    connexion/security.py), which call the function without `required_scopes`.
    """

    def get_fn(self, security_scheme: dict, required_scopes: list[str]) -> Any:
        check = self.check_bearer_token(self._resolve_func(security_scheme))

        def wrapper(request: ConnexionRequest) -> Any:
            auth_type, token = self.get_auth_header_value(request)
            if auth_type != "bearer":
                return NO_VALUE
            return check(request, token, required_scopes=required_scopes)

        return wrapper


class LenientCookieHandler(ApiKeySecurityHandler):
    """apiKey handler that reads cookies the way browsers write them, and refuses two sessions.

    Replaces, for cookies only, `ApiKeySecurityHandler._get_verify_func` (connexion 3.3.0,
    connexion/security.py), which parses the Cookie header with `SimpleCookie` (a 500 on
    headers browsers send) and takes the first of two same-named cookies.
    """

    def _get_verify_func(self, api_key_info_func: Any, loc: str, name: str, required_scopes: Any) -> Any:
        if loc != "cookie":
            return super()._get_verify_func(api_key_info_func, loc, name, required_scopes)
        check = self.check_api_key(api_key_info_func)

        def wrapper(request: ConnexionRequest) -> Any:
            # HTTP/2 clients may split cookies over several Cookie headers.
            values = cookie_values("; ".join(request.headers.getlist("cookie")), name)
            if not values:
                return NO_VALUE
            if len(values) > 1:
                # Which session is meant? Two cookies of one name come from two paths or
                # domains, or from a cookie planted beside the real one: guess neither.
                refusal = InvalidSession(f"Send one session: this request carries {len(values)} different {name} cookies.")
                raise HTTPServiceError(refusal)
            return check(request, values.pop(), required_scopes=required_scopes)

        return wrapper


SECURITY_MAP = {"bearer": ScopedBearerHandler, "apiKey": LenientCookieHandler}
