"""The application factory: wires settings, services and the contract into a Connexion app."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import inflection
from connexion import FlaskApp
from connexion.jsonifier import Jsonifier
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.middleware.server_error import ServerErrorMiddleware
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver

from app.compat import check_upstream
from app.config import Settings
from app.domain.keys import Clock
from app.domain.store import Store
from app.services import Services, build_services
from app.web import connexion_tuning
from app.web.access import AccessLogMiddleware
from app.web.boundary import OperationBoundaryMiddleware
from app.web.bounds import BodyBoundsMiddleware
from app.web.clients import ClientAddressMiddleware, Proxies
from app.web.contract import ContractIndex
from app.web.cors import EnvelopeCORSMiddleware
from app.web.csrf import OriginCheckMiddleware, OriginPolicy
from app.web.dev import PreferMiddleware
from app.web.durable import DurableAnswerMiddleware
from app.web.errors import ErrorHandlers
from app.web.headers import ResponseHeadersMiddleware
from app.web.hosts import TrustedHostMiddleware
from app.web.pages import PagesMiddleware
from app.web.paths import PathHygieneMiddleware
from app.web.ratelimit_headers import RATE_LIMIT_HEADER_NAMES
from app.web.security import SECURITY_MAP
from app.web.speccache import SpecCacheMiddleware
from app.web.validation import validator_map

SPEC_PATH = Path(__file__).resolve().parent.parent.parent / "openapi.json"
# Swagger UI reads Connexion's copy of the contract (servers pointed at this server, so that
# "Try it out" calls it); /openapi.json is the repository's file (app.web.pages).
DOCS_SPEC_PATH = "/ui/openapi.json"


def resolve_handler(operation_id: str) -> Callable[..., Any]:
    """Return the function in `handlers` for an operationId (`createAPIKey` -> `create_api_key`)."""
    import handlers

    name = inflection.underscore(operation_id)
    function = getattr(handlers, name, None)
    if function is None:
        raise AttributeError(f"operationId {operation_id!r} has no handler handlers.{name}")
    return function


Layer = Any  # an ASGI middleware class, or a `partial` of one with its options


def middleware_stack(
    settings: Settings, services: Services, contract: ContractIndex, spec_bytes: bytes, tuned: bool = True
) -> list[Layer]:
    """Return every layer a request crosses, outermost first: the whole stack, in one list.

    Connexion's own layers (`connexion[...]`, tuned by `app.web.connexion_tuning` unless
    `tuned=False`) keep their order; this service's sit between them. What sits before
    Connexion's exception layer answers in the envelope itself; what sits after routing
    knows the operation.
    """
    connexion = _connexion_layers(tuned, settings.validate_responses)
    layers: list[Layer | None] = [
        connexion[ServerErrorMiddleware],  # a bare 500 for anything no layer below caught
        # Request id and state, metrics, the access line: the first and last thing a request meets.
        partial(AccessLogMiddleware, services=services, contract=contract),
        # The client behind trusted proxies, before anything counts or logs it.
        partial(ClientAddressMiddleware, proxies=Proxies.parse(settings.forwarded_allow_ips)),
        # X-Request-ID, no-store, the protective and rate-limit headers on every answer below.
        ResponseHeadersMiddleware,
        # Headers within bounds (431); the body read whole and once, within bounds (413, 408).
        partial(BodyBoundsMiddleware, read_timeout=settings.request_read_timeout),
        # No route by a control character or an encoded or trailing slash (404); HEAD as GET, or 405.
        partial(PathHygieneMiddleware, contract=contract),
        partial(TrustedHostMiddleware, hosts=settings.trusted_hosts) if settings.trusted_hosts else None,  # 421
        partial(SpecCacheMiddleware, paths=[DOCS_SPEC_PATH, DOCS_SPEC_PATH[: -len("json")] + "yaml"]),
        partial(
            EnvelopeCORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_origin_regex=settings.cors_origin_regex or None,
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=list(settings.cors_allow_headers),
            expose_headers=["X-Request-ID", *RATE_LIMIT_HEADER_NAMES, "Retry-After"],
            max_age=600,
        ),  # with no origin allowed (production's default), only preflights are answered: 400
        # /openapi.json, the key page, /dev/login and /dev/logout: not the contract's operations.
        partial(PagesMiddleware, services=services, spec_bytes=spec_bytes if settings.contract else None,
                key_page=settings.key_page, dev_login=not settings.production),
        connexion[ExceptionMiddleware],  # from here in, errors are answered by `ErrorHandlers`
        DurableAnswerMiddleware,  # a durable write's answer waits for its sync, the loop does not
        connexion[SwaggerUIMiddleware],
        connexion[RoutingMiddleware],  # the operation is known from here in
        # A cookie-authenticated change sent from a foreign page (403), before it is counted.
        partial(OriginCheckMiddleware, operations=contract.cookie_operations,
                policy=OriginPolicy(settings.cors_origins, settings.cors_origin_regex)),
        # Development: `Prefer` answers and latency, without authenticating.
        partial(PreferMiddleware, contract=contract, delay_ms=settings.mock_delay_ms,
                management_limits=services.management_limits, clock=services.clock) if not settings.production else None,
        connexion[SecurityMiddleware],  # app.web.security: authenticated, and counted
        connexion[RequestValidationMiddleware],  # app.web.validation
        connexion.get(ResponseValidationMiddleware),  # when responses are validated
        connexion[LifespanMiddleware],
        # Only routed operations reach Flask; headers stamped in time for response validation.
        partial(OperationBoundaryMiddleware, stamp_headers=settings.validate_responses),
        connexion[ContextMiddleware],  # then Flask and the handler
    ]
    return [layer for layer in layers if layer is not None]


def _connexion_layers(tuned: bool, validate_responses: bool) -> dict[type, Layer]:
    """Connexion's layers, by the Connexion class each is (or replaces)."""
    found = connexion_tuning.middlewares(validate_responses) if tuned else ConnexionMiddleware.default_middlewares
    return {base: layer for layer in found for base in layer.__mro__ if base in ConnexionMiddleware.default_middlewares}


def layer_names(layers: Sequence[Layer]) -> list[str]:
    """Name each layer of a stack (`middleware_stack`, or a built app's `app.middleware.middlewares`)."""
    return [(layer.func if isinstance(layer, partial) else layer).__name__ for layer in layers]


def create_app(
    settings: Settings,
    clock: Clock = time.time,
    store: Store | None = None,
    spec: dict | Path = SPEC_PATH,
    tuned: bool = True,
) -> FlaskApp:
    """Build the ASGI application serving `openapi.json` for `settings`.

    `tuned=False` leaves out `app.web.connexion_tuning`: Connexion's own FlaskApp, middleware
    list and decorators, with only what this service adds through
    Connexion's documented hooks (middleware, validator and security maps, error handlers).
    """
    check_upstream()
    services = build_services(settings, clock, store)
    spec_bytes = spec.read_bytes() if isinstance(spec, Path) else json.dumps(spec, indent=2).encode()
    document: dict = json.loads(spec_bytes)
    contract = ContractIndex(document)
    stack = middleware_stack(settings, services, contract, spec_bytes, tuned)
    # No `static_folder`: nothing is served from Flask's static route, which every request
    # would otherwise be matched against.
    app = FlaskApp(__name__, jsonifier=Jsonifier(json), middlewares=stack, server_args={"static_folder": None})
    errors = ErrorHandlers(contract)
    app.add_api(
        document,
        resolver=Resolver(function_resolver=resolve_handler),
        validate_responses=settings.validate_responses,
        validator_map=validator_map(),
        swagger_ui_options=SwaggerUIOptions(spec_path=DOCS_SPEC_PATH, swagger_ui=settings.docs, serve_spec=settings.docs),
        security_map=SECURITY_MAP,
    )
    errors.install(app)
    if tuned:
        connexion_tuning.tune(app)
    app.app.extensions["services"] = services
    return app
