"""What a handler needs from the request: the wired services, the request id and the client.

Read from, and written to, the request's state (`app.web.state`), which the web layer fills in
and turns into the answer: besides that one typed object, handlers import nothing from the web layer.
"""

from __future__ import annotations

from connexion import context

from app.domain.ratelimit import Decision
from app.services import Services
from app.web.state import request_state


def services() -> Services:
    return request_state(context.scope).app_services()


def request_id() -> str:
    return request_state(context.scope).request_id


def client_address() -> str:
    """The client's IP address (the proxy's client's, where the proxy is trusted)."""
    return request_state(context.scope).client.address or "unknown"


def known_client_address() -> str | None:
    """The client's IP address, or None when it is not known (`app.web.clients`).

    Not known: a Unix-socket peer, or a request carrying X-Forwarded-For from a peer that is no
    trusted proxy.
    """
    client = request_state(context.scope).client
    return None if client.unknown else client.address


def rate_limited(decision: Decision) -> None:
    """Let this request's answer carry `decision`'s rate-limit headers (rendered by the web layer)."""
    request_state(context.scope).rate_limit = decision
