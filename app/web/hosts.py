"""TRUSTED_HOSTS: requests naming any other Host are refused before any work is done."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.web.errors import envelope
from app.web.messages import send_json
from app.web.state import request_state

MISDIRECTED = 421  # RFC 9110: this server is not configured to answer for that authority


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether `host` (port dropped, any case) matches a name, or a `*.domain` pattern, in `patterns`."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    for pattern in patterns:
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class TrustedHostMiddleware:
    """Answer 421 `host_not_allowed`, in the envelope, to a Host outside `hosts`."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = tuple(h.lower() for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not host_allowed(Headers(scope=scope).get("host", ""), self.hosts):
            body = envelope("host_not_allowed", "This server does not answer for that host name.", None,
                            request_state(scope).request_id)
            await send_json(send, MISDIRECTED, b"" if scope["method"] == "HEAD" else body, [(b"connection", b"close")])
            return
        await self.app(scope, receive, send)
