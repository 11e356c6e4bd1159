"""Connexion FlaskApp without its per-request overheads, behaviour unchanged.

Profiling a worker under load showed three costs larger than the service's own work:

1. The thread hand-off. Connexion hands each request to Flask through a2wsgi, which runs
   it in a pool of threads and crosses back to the event loop for every message. Our
   handlers do only CPU work and local SQLite calls of well under a millisecond, which a
   thread cannot overlap anyway (the GIL), so they run inline on the loop's thread here.
   Concurrency comes from worker processes (`WEB_CONCURRENCY`).
2. Re-deciding on every request. `FlaskOperation.fn` builds a new decorator chain per call,
   inspecting the handler's signature and building a URI parser each time, and the chain's
   parameter and response decorators then re-derive from the operation, per request, what
   never changes (which parameters it has and their defaults, the body's name, the response
   media type). Here each operation works that out once, on its first request (`_Binding`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any

import flask
from a2wsgi.wsgi import unicode_to_wsgi
from connexion.apps.flask import FlaskApi, FlaskASGIApp, FlaskOperation
from connexion.context import _context, context, operation
from connexion.datastructures import NoContent
from connexion.decorators import FlaskDecorator
from connexion.decorators.parameter import (
    CONTEXT_NAME,
    _get_query_defaults,
    _get_val_from_param,
    pythonic,
    sanitized,
    unwrap_decorators,
)
from connexion.decorators.response import BaseResponseDecorator, SyncResponseDecorator
from connexion.frameworks.flask import Flask as FlaskFramework
from connexion.jsonifier import Jsonifier
from connexion.lifecycle import ConnexionResponse
from connexion.utils import inspect_function_arguments, is_json_mimetype, is_nullable
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from werkzeug.routing import Rule, UnicodeConverter
from werkzeug.wrappers import Response as WerkzeugResponse

from app.web.credentials import query_may_carry_key
from app.web.state import NOT_PARSED, request_state

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class InlineWSGIMiddleware:
    """An ASGI app that calls a WSGI app directly, buffering the request and response.

    Replaces `a2wsgi.WSGIMiddleware` (a2wsgi 1.10, a2wsgi/wsgi.py), which FlaskASGIApp
    (connexion 3.3.0, connexion/apps/flask.py) wraps the Flask app in: a thread pool and a
    hand-off per message. The environ is built as a2wsgi's `build_environ` builds it (`build_environ` here).
    """

    def __init__(self, app: WSGIApp, fallback: Any) -> None:
        self.app = app
        self.fallback = fallback  # for what is not HTTP (lifespan)
        # a2wsgi reads SCRIPT_NAME from the process environment on every request; it is read
        # when the app is built, as every other setting is.
        self.script_name = unicode_to_wsgi(os.environ.get("SCRIPT_NAME", ""))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        parts: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()  # the client left mid-body: the request is not handled at all
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        # app.web.bounds passes the body on whole, in one message: nothing to join again.
        body = parts[0] if len(parts) == 1 else b"".join(parts)

        environ = build_environ(scope, io.BytesIO(body), self.script_name)
        started: dict[str, Any] = {}
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started["status"], started["headers"] = status, headers
            return chunks.append

        result = self.app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status = int(started["status"].split(" ", 1)[0])
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in started["headers"]]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})


# Request header name -> its environ key, for names in use (a bounded few, each short).
_WSGI_NAMES = {b"content-length": "CONTENT_LENGTH", b"content-type": "CONTENT_TYPE"}
_ENVIRON_NAMES: dict[bytes, str] = dict(_WSGI_NAMES)
_REMEMBERED_NAMES = 256
_REMEMBERED_NAME_BYTES = 64


def _environ_name(raw: bytes) -> str:
    name = _ENVIRON_NAMES.get(raw)
    if name is None:
        name = f"HTTP_{raw.decode('latin1')}".upper().replace("-", "_")
        if len(raw) <= _REMEMBERED_NAME_BYTES:
            if len(_ENVIRON_NAMES) >= _REMEMBERED_NAMES:  # start again: the names in use come back at once
                _ENVIRON_NAMES.clear()
                _ENVIRON_NAMES.update(_WSGI_NAMES)
            _ENVIRON_NAMES[raw] = name
    return name


def build_environ(scope: Scope, body: io.BytesIO, script_name: str) -> dict[str, Any]:
    """The WSGI environ of an HTTP scope and its body, as Flask runs it here.

    Replaces `a2wsgi.wsgi.build_environ` (a2wsgi 1.10.10), key for key and value for value,
    with `wsgi.multithread` False (Flask runs on the loop's one thread) and `script_name` the
    process's SCRIPT_NAME, when set, as a2wsgi takes it; tests/test_connexion_tuning.py
    compares the two.
    """
    root_path = scope.get("root_path", "").encode("utf8").decode("latin1")
    path_info = scope["path"].encode("utf8").decode("latin1")
    if path_info.startswith(root_path):
        path_info = path_info[len(root_path) :]
    server_addr, server_port = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "asgi.scope": scope,
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name or root_path,
        "PATH_INFO": path_info,
        "QUERY_STRING": scope["query_string"].decode("ascii"),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stdout,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "SERVER_NAME": server_addr,
        "SERVER_PORT": str(server_port or 0),
    }
    client = scope.get("client")
    if client is not None:
        environ["REMOTE_ADDR"], port = client
        environ["REMOTE_PORT"] = str(port)
    for raw, value in scope.get("headers", ()):
        name = _environ_name(raw)
        text = value.decode("latin1")
        if name in environ:
            text = environ[name] + "," + text
        environ[name] = text
    return environ


# Query strings whose arguments a binding remembers, and the longest it remembers.
_REMEMBERED_QUERIES = 64
_REMEMBERED_QUERY_CHARS = 256
_IMMUTABLE = (str, int, float, bool, type(None))


class _Binding:
    """One operation's request-to-handler-to-response path, worked out once.

    Replaces, per operation, the chain `FlaskOperation.fn` builds on every call (connexion
    3.3.0, connexion/apps/flask.py) from `FlaskDecorator` (connexion/decorators/main.py),
    `SyncParameterDecorator` (connexion/decorators/parameter.py) and
    `SyncResponseDecorator` (connexion/decorators/response.py); it uses their helpers
    (`_get_val_from_param`, `_get_query_defaults`, `_unpack_handler_response`).

    Connexion's parameter and response decorators re-derive, on every request, what depends
    only on the operation: which parameters exist and their defaults, the handler's
    arguments, the body's name and default, the response media type. Here that is computed
    on the operation's first request; each request then only reads its own values and casts
    them with Connexion's own converters (a query string's arguments, once cast, are remembered
    for the next request with the same query string: a proxy asks the gateway check with the
    same `?refusal=header` every time). Operations using what this does not cover (form
    bodies, object-valued query parameters, several response media types) return None from
    `compile` and keep Connexion's generic decorators.
    """

    def __init__(self, operation: Any, function: Callable[..., Any], decorator: FlaskDecorator) -> None:
        self.function = function
        self.arguments, self.has_kwargs = inspect_function_arguments(unwrap_decorators(function))
        self.sanitize = pythonic if decorator.pythonic_params else sanitized
        self.jsonifier = decorator.jsonifier
        self.dumps = _dumps_of(decorator.jsonifier)
        self.uri_parser = decorator.uri_parser
        wanted = self._wanted
        self.path = {p["name"]: p for p in operation.parameters if p["in"] == "path"}
        self.query = {p["name"]: p for p in operation.parameters if p["in"] == "query" and wanted(p["name"])}
        self.query_defaults = _get_query_defaults(self.query)
        self.remembered: dict[str, dict[str, Any]] = {}  # query string -> its arguments
        self.body_name: str | None = None
        if operation.is_request_body_defined and operation.method.upper() != "TRACE":
            name = self.sanitize(operation.body_name(None))
            if wanted(name, sanitize=False):
                self.body_name = name
                schema = operation.body_schema()
                self.body_nullable = is_nullable(schema)
                self.body_default = schema.get("default", {})
        produces = list(set(operation.produces))
        self.content_type = produces[0] if produces else None
        self.produces_json = self.content_type is not None and is_json_mimetype(self.content_type)
        self.response_class: type[WerkzeugResponse] = flask.current_app.response_class  # built inside a request

    @classmethod
    def compile(cls, operation: Any, function: Callable[..., Any], decorator: FlaskDecorator) -> _Binding | None:
        consumes = operation.consumes
        if len(set(operation.produces)) > 1 or len(consumes) > 1 or any(not is_json_mimetype(c) for c in consumes):
            return None
        if any(p["in"] == "query" and p.get("schema", p).get("type") == "object" for p in operation.parameters):
            return None
        return cls(operation, function, decorator)

    def _wanted(self, name: str, sanitize: bool = True) -> bool:
        return self.has_kwargs or (self.sanitize(name) if sanitize else name) in self.arguments

    def __call__(self) -> Any:
        request = flask.request
        kwargs: dict[str, Any] = {}
        view_args = request.view_args
        if view_args:
            for name, value in self.uri_parser.resolve_path(view_args).items():
                definition = self.path.get(name)
                kwargs[self.sanitize(name)] = value if definition is None else _get_val_from_param(value, definition)
        if self.query:
            kwargs.update(self._query_arguments(request))
        if self.body_name is not None:
            parsed = request_state(request.environ["asgi.scope"]).json_body
            if parsed is not NOT_PARSED:  # parsed, and validated, by the request validation layer
                body = parsed
            else:
                body = request.get_json(silent=True) if is_json_mimetype(request.content_type or "") else None
            if body is None and not self.body_nullable:
                body = deepcopy(self.body_default)
            kwargs[self.body_name] = body
        found = _context.get()  # what `context` stands for: what the security functions found
        if self.has_kwargs:
            kwargs.update(found)
        else:
            for name in self.arguments:
                if name in found:
                    kwargs[name] = found[name]
        if CONTEXT_NAME in self.arguments:
            kwargs[CONTEXT_NAME] = context
        return self.respond(self.function(**kwargs))

    def _query_arguments(self, request: Any) -> dict[str, Any]:
        """The handler's query arguments, cast; the same query string gives the same arguments,
        so those made only of immutable values are remembered for it (a bounded few)."""
        query = request.environ.get("QUERY_STRING", "")
        remembered = self.remembered.get(query)
        if remembered is not None:
            return remembered
        arguments: dict[str, Any] = {}
        args = request.args
        given = self.uri_parser.resolve_query({k: args.getlist(k) for k in args}) if args else {}
        for name, definition in self.query.items():
            if name in given:
                arguments[self.sanitize(name)] = _get_val_from_param(given[name], definition)
            elif name in self.query_defaults:
                value = deepcopy(self.query_defaults[name])
                arguments[self.sanitize(name)] = _get_val_from_param(value, definition)
        if (
            len(query) <= _REMEMBERED_QUERY_CHARS
            and not query_may_carry_key(query)  # no key is kept
            and all(isinstance(v, _IMMUTABLE) for v in arguments.values())
        ):
            if len(self.remembered) >= _REMEMBERED_QUERIES:
                self.remembered.clear()  # start again: what is in use now comes back at once
            self.remembered[query] = arguments  # read only: the caller copies it into its kwargs
        return arguments

    def respond(self, result: Any) -> Any:
        if isinstance(result, (flask.Response, WerkzeugResponse)):
            return result
        if isinstance(result, ConnexionResponse):
            return FlaskFramework.connexion_to_framework_response(result)
        data, status, headers = BaseResponseDecorator._unpack_handler_response(result)
        if any(key.lower() == "content-type" for key in headers):
            # The handler chose a media type: let Connexion check it against the contract.
            return SyncResponseDecorator(framework=FlaskFramework, jsonifier=self.jsonifier).build_framework_response(
                result
            )
        content_type = self.content_type
        if data is None or data is NoContent:
            body = None
        elif content_type is None:
            content_type = "application/json"  # what Connexion assumes when the contract names none
            body = self.dumps(data)
        else:
            body = self.dumps(data) if self.produces_json else data
        # Content-Type goes last, as when Werkzeug adds it to the handler's headers.
        return self.response_class(
            response=body, status=status or (204 if body is None else 200), headers=headers or None,
            content_type=content_type or None,
        )


def _dumps_of(jsonifier: Any) -> Callable[[Any], str]:
    """`jsonifier.dumps`, with its encoder made once where that writes the same text.

    `Jsonifier.dumps` (connexion 3.3.0, connexion/jsonifier.py) over the json module with no
    argument but the encoder class calls `json.dumps(data, cls=...)`, which makes that class
    with its defaults on every call; an encoder keeps nothing between `encode` calls.
    """
    if type(jsonifier) is Jsonifier and jsonifier.json is json and set(jsonifier.dumps_args) == {"cls"}:
        encode = jsonifier.dumps_args["cls"]().encode
        return lambda data: encode(data) + "\n"
    return jsonifier.dumps  # type: ignore[no-any-return]


class _CompiledDecorator(FlaskDecorator):
    """Replaces `FlaskDecorator.__call__` (connexion 3.3.0, connexion/decorators/main.py)."""

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        built: list[Callable[[], Any]] = []

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not built:
                # Needs the operation context, so it is built inside the first request.
                binding = _Binding.compile(operation._get_current_object(), function, self)
                if binding is None:
                    uri_parser, decorated = self.uri_parser, self.decorate(function)
                    built.append(lambda: decorated(self.framework.get_request(uri_parser=uri_parser)))
                else:
                    built.append(binding)
            return built[0]()

        return wrapper


class _Operation(FlaskOperation):
    """Replaces `FlaskOperation.fn` (connexion 3.3.0, connexion/apps/flask.py), rebuilt per call."""

    @functools.cached_property
    def fn(self) -> Callable[..., Any]:  # type: ignore[override]
        return _CompiledDecorator(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)(self._fn)


class _Api(FlaskApi):
    """Replaces `FlaskApi.make_operation` (connexion 3.3.0, connexion/apps/flask.py)."""

    def make_operation(self, operation: Any) -> _Operation:
        return _Operation.from_operation(operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)


class _ASGIApp(FlaskASGIApp):
    """Replaces `FlaskASGIApp.add_api` (connexion 3.3.0, connexion/apps/flask.py)."""

    def add_api(self, specification: Any, *, name: str | None = None, **kwargs: Any) -> _Api:
        api = _Api(specification, **kwargs)
        self.app.register_blueprint(api.blueprint, **({"name": name} if name is not None else {}))
        return api


_REMEMBERED_FUNCTIONS = 256  # views, hooks and error handlers: a fixed set, bounded all the same
ROUTED_RULE = "socdefenders_keys.routed_rule"  # environ key: the rule Connexion's routing chose
_PARAMETER = re.compile(r"<([^>]*)>")


class _Body(list):  # type: ignore[type-arg]
    """A response's body chunks, closing the response when the server is done with them."""

    __slots__ = ("close",)
    close: Callable[[], None]


class _Response(flask.Response):
    """Flask's response, handed to the server without copying its headers to change nothing.

    Replaces `Response.__call__` (werkzeug 3.1.9, werkzeug/wrappers/response.py) where
    `get_wsgi_headers` would return the headers as they are: a body of bytes already buffered
    (so `Content-Length` is set), a status that has a body, no `Location` or
    `Content-Location` to rewrite, and a request that is not HEAD. The server gets the same
    status, headers and body, and closing the body closes the response, as with Werkzeug's
    `ClosingIterator`; any other response is started by Werkzeug's own code.
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = self.response
        status = self.status_code
        if (
            type(body) is not list
            or self.direct_passthrough
            or status < 200
            or status in (204, 304)
            or environ["REQUEST_METHOD"] == "HEAD"
            or not all(type(chunk) is bytes for chunk in body)
        ):
            return super().__call__(environ, start_response)
        headers = list(self.headers)
        names = {key.lower() for key, _ in headers}
        if "content-length" not in names or "location" in names or "content-location" in names:
            return super().__call__(environ, start_response)
        start_response(self.status, headers)
        chunks = _Body(body)
        chunks.close = self.close
        return chunks


class _RoutedFlask(flask.Flask):
    """Flask, taking the rule of the operation Connexion's routing matched instead of matching again.

    Replaces `Flask.create_url_adapter` and `Flask.request_context` (flask 3.1.3, flask/app.py)
    for a request whose scope names the operation Connexion routed it to (its routing layer's
    `connexion_routing` extension): no URL map is bound to it, and `RequestContext.push`
    (flask/ctx.py), which matches only when there is one, leaves the rule and the arguments
    set here: the operation's rule, and the path parameters Connexion's routing read, which
    are the rule's arguments. That holds for rules whose parameters all use Werkzeug's default
    converter (one path segment, as Starlette's default) and which no other rule of the same
    method could also match (`_operation_rules`); for any other request, and for requests
    Connexion did not route, Flask binds and matches as usual.
    """

    response_class = _Response

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """`Flask.ensure_sync` (flask 3.1.3, flask/app.py), remembered per function: whether a
        function is a coroutine function does not change, and asking costs an inspection."""
        synced = self.__dict__.setdefault("_synced", {})
        found = synced.get(func)
        if found is None:
            found = super().ensure_sync(func)
            if len(synced) < _REMEMBERED_FUNCTIONS:
                synced[func] = found
        return found

    def create_url_adapter(self, request: Any) -> Any:
        if request is not None and ROUTED_RULE in request.environ:
            return None
        return super().create_url_adapter(request)

    def request_context(self, environ: dict[str, Any]) -> Any:
        found = self._routed(environ)
        if found is None:
            return super().request_context(environ)
        rule, view_args = found
        environ[ROUTED_RULE] = rule
        context = super().request_context(environ)
        context.request.url_rule, context.request.view_args = rule, view_args
        return context

    def _routed(self, environ: dict[str, Any]) -> tuple[Rule, dict[str, Any]] | None:
        scope = environ.get("asgi.scope")
        routing = scope.get("extensions", {}).get("connexion_routing") if scope else None
        operation_id = routing.get("operation_id") if routing else None
        if operation_id is None:
            return None
        rules = self.__dict__.get("_operation_rules_built")
        if rules is None:
            rules = self.__dict__["_operation_rules_built"] = _operation_rules(self)
        rule = rules.get((environ["REQUEST_METHOD"], operation_id))
        path_params = scope.get("path_params", {})  # type: ignore[union-attr]
        if rule is None or set(path_params) != rule.arguments:
            return None
        return rule, {name: path_params[name] for name in rule.arguments}


def _operation_rules(app: flask.Flask) -> dict[tuple[str, str], Rule]:
    """(method, operationId) -> the rule Connexion registered for it, where Flask's match can only find that rule."""
    if app.url_map.converters.get("default") is not UnicodeConverter:
        return {}
    rules = list(app.url_map.iter_rules())
    found: dict[tuple[str, str], list[Rule]] = {}
    for rule in rules:
        operation_id = getattr(app.view_functions.get(rule.endpoint), "operation_id", None)
        plain = all(":" not in name for name in _PARAMETER.findall(rule.rule))
        if operation_id is None or not plain or rule.websocket or rule.redirect_to is not None or rule.host:
            continue
        for method in rule.methods or ():
            if not any(
                other is not rule and method in (other.methods or ()) and _overlap(rule, other) for other in rules
            ):
                found.setdefault((method, operation_id), []).append(rule)
    return {key: candidates[0] for key, candidates in found.items() if len(candidates) == 1}


def _overlap(one: Rule, other: Rule) -> bool:
    """Whether some path could match both rules (a segment with a parameter may be anything)."""
    ours, theirs = one.rule.split("/"), other.rule.split("/")
    return len(ours) == len(theirs) and all(a == b or "<" in a or "<" in b for a, b in zip(ours, theirs, strict=True))


def tune_flask_side(app: Any) -> None:
    """Apply both changes to a FlaskApp before it serves its first request.

    `FlaskApp._middleware_app` is the FlaskASGIApp that `FlaskApp.__init__` builds (connexion
    3.3.0, connexion/apps/flask.py); `FlaskApp.add_wsgi_middleware` reaches it the same way.
    Its class is swapped for `_ASGIApp` so that `add_api` builds `_Api` operations, and the
    Flask app's (`FlaskApp.app`) for `_RoutedFlask`.
    """
    adapter = app._middleware_app
    adapter.__class__ = _ASGIApp
    app.app.__class__ = _RoutedFlask
    adapter.asgi_app = InlineWSGIMiddleware(app.app.wsgi_app, fallback=adapter.asgi_app)
