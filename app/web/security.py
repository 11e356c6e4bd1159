"""Connexion security functions, named in `openapi.json` (`x-apikeyInfoFunc`, `x-bearerInfoFunc`),
and the two security handlers this service gives Connexion through its `security_map`.

The functions run in Connexion's security middleware, outside Flask: the services come from
the request's state (`app.web.state`), put there by `AccessLogMiddleware`. Each authenticates,
then counts the request against its rate limit; the outcome's headers go back through the
same state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from connexion.exceptions import OAuthResponseProblem
from connexion.lifecycle import ConnexionRequest
from connexion.security import NO_VALUE, AbstractSecurityHandler
from connexion.utils import get_function_from_name

from app.domain.errors import InvalidAPIKey, InvalidSession, ServiceError
from app.domain.ratelimit import Decision, management_subject
from app.domain.records import KeyRecord
from app.web.credentials import cookie_values, presented_keys
from app.web.errors import HTTPServiceError
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
        _apply(state, decision, "key management for this account")
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
    try:
        # The client as app.web.clients resolved it (behind TRUSTED_PROXIES, the forwarded one):
        # a key with an allowlist is refused from anywhere else.
        address = state.client.address if state.client is not None else None
        record, decision = services.keys.use(token, required_scopes, state.request_id, address=address)
    except ServiceError as refusal:
        if refusal.key is not None:  # a revoked, expired or out-of-scope key: its owner is known
            _identify(state, refusal.key)
        raise
    _identify(state, record)
    _apply(state, decision, "this account's API keys, which share its tier's limits")
    return {"sub": record.user_id, "key": record, "rate_limit": decision}


def _identify(state: RequestState, key: KeyRecord) -> None:
    # For the access line, also when the key is then refused (revoked, expired, scope, rate).
    state.account_id, state.key_id = key.user_id, key.id


def _apply(state: RequestState, decision: Decision, subject: str) -> None:
    state.rate_limit = decision  # rendered as headers on the answer (app.web.headers.stamp)
    if not decision.allowed:
        raise decision.refusal(decision.at, subject)


class _Handler:
    """A security handler for Connexion's `security_map`, written against its public interface only.

    Connexion's `SecurityHandlerFactory` (connexion/security.py) makes one per scheme and calls
    `get_fn(security_scheme, required_scopes)`; the function returned gets each request and
    returns the token info, NO_VALUE when the request does not use this scheme, or raises. The
    security functions are this module's own, so which arguments each takes is known here once,
    rather than read from their signatures on every request as Connexion's handlers do.
    """

    info_key = ""  # the scheme's entry in openapi.json naming its security function
    refusal = ""  # Connexion's message for a function that returns None (these never do)

    def verify_function(self, security_scheme: dict) -> Callable[..., Any]:
        name = security_scheme.get(self.info_key)
        if not name:
            raise ValueError(f"the security scheme {security_scheme!r} names no function in {self.info_key}")
        return get_function_from_name(name)

    def checked(
        self, function: Callable[..., Any], required_scopes: list[str]
    ) -> Callable[[ConnexionRequest, str], Any]:
        """`function` called with the token and, if it takes them, the request and the required scopes."""
        parameters = inspect.signature(function).parameters
        scopes = {"required_scopes": required_scopes} if "required_scopes" in parameters else {}
        takes_request = "request" in parameters
        refusal = self.refusal

        def check(request: ConnexionRequest, token: str) -> Any:
            token_info = function(token, request=request, **scopes) if takes_request else function(token, **scopes)
            if token_info is None:
                raise OAuthResponseProblem(detail=refusal)
            return token_info

        return check


class BearerHandler(_Handler):
    """`Authorization: Bearer`, passing the required scopes on as the apiKey handler does.

    Connexion's own BearerSecurityHandler (connexion 3.3) calls the function without them.
    """

    info_key = "x-bearerInfoFunc"
    refusal = "Provided token is not valid"

    def get_fn(self, security_scheme: dict, required_scopes: list[str]) -> Callable[[ConnexionRequest], Any]:
        check = self.checked(self.verify_function(security_scheme), required_scopes)

        def verify(request: ConnexionRequest) -> Any:
            if not any(name == b"authorization" for name, _ in request.scope["headers"]):
                return NO_VALUE  # as Connexion's parsing answers no header, without reading every header
            # Connexion's own parsing: a header that is not `<scheme> <value>` is a 401.
            auth_type, token = AbstractSecurityHandler.get_auth_header_value(request)
            if auth_type != "bearer":
                return NO_VALUE
            return check(request, token)

        return verify


class ApiKeyHandler(_Handler):
    """An API key in a header, the query or a cookie; cookies read the way browsers write them.

    Connexion's own ApiKeySecurityHandler (connexion 3.3) parses the Cookie header with
    `SimpleCookie`, a 500 on headers browsers send, and takes the first of two same-named
    cookies; here two sessions are refused.
    """

    info_key = "x-apikeyInfoFunc"
    refusal = "Provided apikey is not valid"

    def get_fn(self, security_scheme: dict, required_scopes: list[str]) -> Callable[[ConnexionRequest], Any]:
        check = self.checked(self.verify_function(security_scheme), required_scopes)
        location, name = security_scheme["in"], security_scheme["name"]

        def verify(request: ConnexionRequest) -> Any:
            if location == "query":
                value = request.query_params.get(name)
            elif location == "header":
                value = request.headers.get(name)
            elif location == "cookie":
                # HTTP/2 clients may split cookies over several Cookie headers.
                values = cookie_values("; ".join(request.headers.getlist("cookie")), name)
                if len(values) > 1:
                    # Which session is meant? Two cookies of one name come from two paths or
                    # domains, or from a cookie planted beside the real one: guess neither.
                    refusal = InvalidSession(
                        f"Send one session: this request carries {len(values)} different {name} cookies."
                    )
                    raise HTTPServiceError(refusal)
                value = values.pop() if values else None
            else:
                return NO_VALUE
            if value is None:
                return NO_VALUE
            return check(request, value)

        return verify


SECURITY_MAP = {"bearer": BearerHandler, "apiKey": ApiKeyHandler}
