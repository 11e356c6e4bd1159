"""Connexion's middleware list, in its order, with two per-request costs cut.

1. The routing layer matches every request against each path's regular expression, in
   order, through a router per API. Here an exact (method, path) table, built once from
   those routers, answers for the paths without parameters, and the routers for the rest.
2. The Swagger UI layer routes every request through a Starlette router of its own (a mount
   per API, a route per file it serves) before the API's router sees it. Here it looks only
   at the paths it serves, the spec and the UI, and passes everything else straight on.
3. The request validation layer builds a URI parser, a parameter validator and a body
   validator for every request, though they depend only on the operation (and the body's
   media type), and reads the Content-Type through a helper that builds a typing alias on
   every call. Here each is built once and reused, the header read directly; validating is
   unchanged.

When responses are not validated (production's default), the response validation layer,
which would only pass requests on, is left out.
"""

from __future__ import annotations

from typing import Any

from connexion import utils
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.request_validation import (
    RequestValidationAPI,
    RequestValidationMiddleware,
    RequestValidationOperation,
)
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware, RoutingOperation
from connexion.middleware.swagger_ui import SwaggerUIAPI, SwaggerUIMiddleware
from starlette.routing import Match, Mount, Route, Router
from starlette.types import Receive, Scope, Send

_MISSING = object()
_MAX_BODY_VALIDATORS = 8  # per operation: one per (media type, charset) seen, bounded


ROUTING_CONTEXT = "connexion_routing"  # connexion.middleware.abstract.ROUTING_CONTEXT, connexion 3.3.0
# Keys Starlette's routers write into the scope, which the exact table then writes itself.
_ROUTER_KEYS = ("router", "route", "path_params", "app_root_path", "endpoint")


class ExactRoutingMiddleware(RoutingMiddleware):
    """Connexion's routing, with an exact (method, path) table in front of its routers.

    Replaces `RoutingMiddleware.__call__` (connexion 3.3.0, connexion/middleware/routing.py),
    which hands every request to a Starlette router that tries each route's regular
    expression in turn, through a mount per API, and `RoutingOperation.__call__` (same file),
    which puts the operation into a copy of the scope taken before routing. For a path with no
    parameters the outcome depends only on (method, path): the table holds, for each, what
    those routers would do (worked out by their own `matches`, in their order, when the first
    request comes) and does it. Any other request goes through the routers as before.
    """

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._exact: dict[tuple[str, str], tuple[dict[str, Any], str, RoutingOperation]] | None = None

    def _table(self) -> dict[tuple[str, str], tuple[dict[str, Any], str, RoutingOperation]]:
        table: dict[tuple[str, str], tuple[dict[str, Any], str, RoutingOperation]] = {}
        candidates: list[tuple[str, str]] = []
        pending: list[tuple[str, Router]] = [("", self.router)]
        while pending:
            prefix, router = pending.pop()
            for route in router.routes:
                if isinstance(route, Mount) and isinstance(route.app, Router) and "{" not in route.path:
                    pending.append((prefix + route.path, route.app))
                elif isinstance(route, Route) and "{" not in route.path and route.methods:
                    candidates += [(method, prefix + route.path) for method in route.methods]
        for method, path in candidates:
            found = self._dispatch(method, path)
            if found is not None:
                table.setdefault((method, path), found)
        return table

    def _dispatch(self, method: str, path: str) -> tuple[dict[str, Any], str, RoutingOperation] | None:
        """What Starlette's `Router.app` (starlette 1.10, starlette/routing.py) leaves in a bare scope
        for this request, the API's base path, and the operation it reaches; None if not an operation."""
        scope: dict[str, Any] = {"type": "http", "method": method, "path": path, "root_path": ""}
        bare = dict(scope)
        router = self.router
        scope["router"] = router
        while True:
            full = None
            for route in router.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    full = route, child
                    break
            if full is None:
                return None
            route, child = full
            scope["route"] = route
            scope.update(child)
            if isinstance(route, Mount) and isinstance(route.app, Router):
                router = route.app
                continue
            if not (isinstance(route, Route) and isinstance(route.endpoint, RoutingOperation)) or scope["path_params"]:
                return None
            left = {key: value for key, value in scope.items() if key not in bare or bare[key] is not value}
            if set(left) - {"root_path"} != set(_ROUTER_KEYS):
                return None
            return left, scope["root_path"], route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path") and not any(key in scope for key in _ROUTER_KEYS):
            if self._exact is None:
                self._exact = self._table()
            found = self._exact.get((scope["method"], scope["path"]))
            if found is not None:
                left, base_path, operation = found
                routed = dict(scope)  # as RoutingMiddleware: the operation gets a copy from before routing
                scope.update(left)
                scope["path_params"] = {}
                routed["path_params"] = {}
                routing = routed.setdefault("extensions", {}).setdefault(ROUTING_CONTEXT, {})
                routing.update({"api_base_path": base_path, "operation_id": operation.operation_id})
                await operation.next_app(routed, receive, send)
                return
        await super().__call__(scope, receive, send)


class SpecPathsSwaggerUIMiddleware(SwaggerUIMiddleware):
    """The Swagger UI and spec, consulted only for the paths under which they are served.

    Replaces `SwaggerUIMiddleware.__call__` and copies the mount in `add_api` (connexion
    3.3.0, connexion/middleware/swagger_ui.py).
    """

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._exact: set[str] = set()
        self._prefixes: list[str] = []

    def add_api(
        self, specification: Any, base_path: str | None = None, arguments: dict | None = None, **kwargs: Any
    ) -> None:
        api = SwaggerUIAPI(specification, base_path=base_path, arguments=arguments, default=self.default_fn, **kwargs)
        self.router.mount(api.base_path, app=api.router)  # as SwaggerUIMiddleware.add_api does
        base = api.base_path.rstrip("/")
        spec_path = api.options.openapi_spec_path
        self._exact.update({base + spec_path, base + spec_path[: -len("json")] + "yaml"})
        ui = base + api.options.swagger_ui_path.strip().rstrip("/")
        self._exact.add(ui)
        self._prefixes.append(ui + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = _route_path(scope)
            if path not in self._exact and not path.startswith(tuple(self._prefixes)):
                await self.app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    # What Starlette's routers match against: the path below the app's root path.
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class ValidatorsOnceOperation(RequestValidationOperation):
    """Request validation with the operation's validators built on first use, then reused.

    Replaces `RequestValidationOperation.__call__` (connexion 3.3.0,
    connexion/middleware/request_validation.py), whose body builds a URI parser, a
    parameter validator and a body validator per request; `_body_validator` is that body's
    choice of validator, copied.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parameter_validator: Any = None
        self._body_validators: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = self._operation
        if self._parameter_validator is None:
            uri_parser = operation._uri_parser_class(operation.parameters, operation.body_definition())
            self._parameter_validator = self._validator_map["parameter"](
                operation.parameters,
                uri_parser=uri_parser,
                strict_validation=self.strict_validation,
                security_query_params=self.security_query_params,
            )
        self._parameter_validator.validate(scope)

        mime_type, encoding = self.extract_content_type(scope["headers"])
        self.validate_mime_type(mime_type)
        validator = self._body_validators.get((mime_type, encoding), _MISSING)
        if validator is _MISSING:
            validator = self._body_validator(mime_type, encoding)
            if len(self._body_validators) < _MAX_BODY_VALIDATORS:
                self._body_validators[(mime_type, encoding)] = validator
        if validator is not None:
            receive, scope = await validator.wrap_receive(receive, scope=scope)
        await self.next_app(scope, receive, send)

    def extract_content_type(self, headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
        """Replaces `RequestValidationOperation.extract_content_type` (connexion 3.3.0), whose
        helper `connexion.utils.extract_content_type` builds a typing alias on every call and
        decodes every header's name: the same answer, from ASGI's lower-case byte names."""
        content_type = None
        for name, value in headers:
            if name.lower() == b"content-type":
                content_type = value.decode("latin-1")
                break
        mime_type, encoding = utils.split_content_type(content_type)
        if mime_type is None:
            # Content-type header is not required. Take a best guess.
            consumes = self._operation.consumes
            mime_type = consumes[0] if consumes else "application/octet-stream"
        return mime_type, encoding or "utf-8"

    def _body_validator(self, mime_type: str, encoding: str) -> Any:
        """Connexion's choice of body validator for this media type, or None if it has none."""
        operation = self._operation
        schema = operation.body_schema(mime_type)
        if not schema:
            return None
        try:
            validator_class = self._validator_map["body"][mime_type]
        except KeyError:
            return None
        return validator_class(
            schema=schema,
            required=operation.request_body.get("required", False),
            nullable=utils.is_nullable(operation.body_definition(mime_type)),
            encoding=encoding,
            strict_validation=self.strict_validation,
            uri_parser=operation.uri_parser_class(operation.parameters, operation.body_definition()),
        )


class _ValidatorsOnceAPI(RequestValidationAPI):
    def make_operation(self, operation: Any) -> ValidatorsOnceOperation:
        return ValidatorsOnceOperation(
            self.next_app,
            operation=operation,
            strict_validation=self.strict_validation,
            validator_map=self.validator_map,
        )


class ValidatorsOnceMiddleware(RequestValidationMiddleware):
    api_cls = _ValidatorsOnceAPI


_REPLACEMENTS = {
    RoutingMiddleware: ExactRoutingMiddleware,
    SwaggerUIMiddleware: SpecPathsSwaggerUIMiddleware,
    RequestValidationMiddleware: ValidatorsOnceMiddleware,
}


def middlewares(validate_responses: bool) -> list[Any]:
    """Connexion's default middleware list with the replacements above.

    Without response validation its layer would only look each request's operation up and
    pass it on, so it is left out.
    """
    return [
        _REPLACEMENTS.get(m, m)
        for m in ConnexionMiddleware.default_middlewares
        if validate_responses or m is not ResponseValidationMiddleware
    ]
