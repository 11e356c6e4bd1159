"""Connexion FlaskApp without its per-request overheads, behaviour unchanged.

Profiling a worker under load showed two costs larger than the service's own work:

1. The thread hand-off. Connexion hands each request to Flask through a2wsgi, which runs
   it in a pool of threads and crosses back to the event loop for every message. Our
   handlers do only CPU work and local SQLite calls of well under a millisecond, which a
   thread cannot overlap anyway (the GIL), so they run inline on the loop's thread here.
   Concurrency comes from worker processes (`WEB_CONCURRENCY`).
2. Re-decorating on every request. `FlaskOperation.fn` builds a new decorator chain per
   call, inspecting the handler's signature and building a URI parser each time. Here each
   operation builds it once, on its first request (the chain depends only on the operation).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable
from typing import Any

from a2wsgi.wsgi import build_environ
from connexion.apps.flask import FlaskApi, FlaskASGIApp, FlaskOperation
from connexion.decorators import FlaskDecorator
from starlette.types import Receive, Scope, Send

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class InlineWSGIMiddleware:
    """An ASGI app that calls a WSGI app directly, buffering the request and response."""

    def __init__(self, app: WSGIApp, fallback: Any) -> None:
        self.app = app
        self.fallback = fallback  # for what is not HTTP (lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)

        environ: dict[str, Any] = dict(build_environ(scope, io.BytesIO(bytes(body))))  # type: ignore[arg-type]
        environ["wsgi.multithread"] = False
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


class _DecorateOnce(FlaskDecorator):
    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        built: list[Any] = []

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not built:
                # Needs the operation context, so it is built inside the first request.
                built[:] = [self.uri_parser, self.decorate(function)]
            uri_parser, decorated = built
            return decorated(self.framework.get_request(uri_parser=uri_parser))

        return wrapper


class _Operation(FlaskOperation):
    @functools.cached_property
    def fn(self) -> Callable[..., Any]:  # type: ignore[override]
        return _DecorateOnce(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)(self._fn)


class _Api(FlaskApi):
    def make_operation(self, operation: Any) -> _Operation:
        return _Operation.from_operation(operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)


class _ASGIApp(FlaskASGIApp):
    def add_api(self, specification: Any, *, name: str | None = None, **kwargs: Any) -> _Api:
        api = _Api(specification, **kwargs)
        self.app.register_blueprint(api.blueprint, **({"name": name} if name is not None else {}))
        return api


def tune(app: Any) -> None:
    """Apply both changes to a FlaskApp before it serves its first request."""
    adapter = app._middleware_app  # the Flask side of FlaskApp; add_wsgi_middleware reaches it the same way
    adapter.__class__ = _ASGIApp
    adapter.asgi_app = InlineWSGIMiddleware(app.app.wsgi_app, fallback=adapter.asgi_app)
