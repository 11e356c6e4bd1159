"""The last stop before Flask: only routed operations pass.

A request Connexion's router did not match would otherwise fall through to Flask's own,
more lenient router and reach a handler with no operation context; here it is a 404.
This sits inside response validation, so when that is on, successful responses must carry
the headers the contract requires before they are checked (`app.web.headers.stamp`);
otherwise `ResponseHeadersMiddleware` stamps them on their way out.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.web import headers
from app.web.state import request_state


class OperationBoundaryMiddleware:
    """404 for what no operation matched; the response headers stamped here when responses are validated."""

    def __init__(self, app: ASGIApp, stamp_headers: bool = True) -> None:
        self.app = app
        self.stamp_headers = stamp_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id"):
            raise HTTPException(404)
        if not self.stamp_headers:
            await self.app(scope, receive, send)
            return
        state = request_state(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers.stamp(message, state)
            await send(message)

        await self.app(scope, receive, send_with_headers)
