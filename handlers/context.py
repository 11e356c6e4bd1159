"""What a handler needs from the request: the wired services and the request id."""

from __future__ import annotations

from connexion import context

from app.web.services import Client, Services
from app.web.state import request_state


def services() -> Services:
    return request_state(context.scope).app_services()


def request_id() -> str:
    return request_state(context.scope).request_id


def client() -> Client:
    """The client as the trusted proxies in front saw it (`app.web.clients`)."""
    found = request_state(context.scope).client
    if found is None:
        raise LookupError("no client address was resolved for this request")
    return found


def client_address() -> str:
    """The client's IP address (the proxy's client's, where the proxy is trusted)."""
    return client().address or "unknown"
