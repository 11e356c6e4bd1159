"""The application factory: wires settings, services and the contract into a Connexion app."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import inflection
from connexion import FlaskApp
from connexion.jsonifier import Jsonifier
from connexion.middleware import MiddlewarePosition
from connexion.middleware.main import ConnexionMiddleware
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver

from app.compat import check_upstream
from app.config import Settings
from app.domain.keys import Clock
from app.domain.store import Store
from app.services import build_services
from app.web import connexion_tuning
from app.web.clients import ClientAddressMiddleware, Proxies
from app.web.csrf import OriginCheckMiddleware, OriginPolicy, cookie_operations
from app.web.dev import PreferMiddleware
from app.web.errors import ErrorHandlers
from app.web.hosts import TrustedHostMiddleware
from app.web.middleware import (
    EnvelopeCORSMiddleware,
    OperationBoundaryMiddleware,
    RequestContextMiddleware,
    SpecCacheMiddleware,
)
from app.web.pages import PagesMiddleware
from app.web.ratelimit_headers import RATE_LIMIT_HEADER_NAMES
from app.web.security import SECURITY_MAP
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
    stack = connexion_tuning.middlewares(settings.validate_responses) if tuned else ConnexionMiddleware.default_middlewares
    # No `static_folder`: nothing is served from Flask's static route, which every request
    # would otherwise be matched against.
    app = FlaskApp(__name__, jsonifier=Jsonifier(json), middlewares=list(stack), server_args={"static_folder": None})
    errors = ErrorHandlers(document)
    # First, so that the access log, the limits and /metrics all see one client address.
    app.add_middleware(ClientAddressMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION,
                       proxies=Proxies.parse(settings.forwarded_allow_ips))
    app.add_middleware(
        RequestContextMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        services=services,
        allowed_methods=errors.allowed_methods,
        read_timeout=settings.request_read_timeout,
        routes={op["operationId"]: path for path, item in document["paths"].items()
                for op in item.values() if isinstance(op, dict) and "operationId" in op},
        route_of=errors.route_of,
    )
    if settings.trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION,
                           hosts=settings.trusted_hosts)
    app.add_middleware(
        SpecCacheMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        paths=[DOCS_SPEC_PATH, DOCS_SPEC_PATH[: -len("json")] + "yaml"],
    )
    app.add_middleware(
        OperationBoundaryMiddleware,
        position=MiddlewarePosition.BEFORE_CONTEXT,
        stamp_headers=settings.validate_responses,
    )
    if settings.cors_origin_regex or settings.cors_origins:
        app.add_middleware(
            EnvelopeCORSMiddleware,
            position=MiddlewarePosition.BEFORE_EXCEPTION,
            allow_origins=list(settings.cors_origins),
            allow_origin_regex=settings.cors_origin_regex or None,
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=list(settings.cors_allow_headers),
            expose_headers=["X-Request-ID", *RATE_LIMIT_HEADER_NAMES, "Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        PagesMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        services=services,
        spec_bytes=spec_bytes if settings.contract else None,
        key_page=settings.key_page,
        dev_login=not settings.production,
    )
    app.add_middleware(
        OriginCheckMiddleware,
        position=MiddlewarePosition.BEFORE_SECURITY,
        operations=cookie_operations(document),
        policy=OriginPolicy(settings.cors_origins, settings.cors_origin_regex),
    )
    if not settings.production:
        app.add_middleware(
            PreferMiddleware,
            position=MiddlewarePosition.BEFORE_SECURITY,
            spec=document,
            delay_ms=settings.mock_delay_ms,
            management_limits=services.management_limits,
        )
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
