"""What a handler needs from the request: the wired services and the request id."""

from __future__ import annotations

from connexion import context

from app.web.services import Services


def services() -> Services:
    return context.scope["state"]["services"]


def request_id() -> str:
    return context.scope["state"]["request_id"]


def client_address() -> str:
    """The client's IP address (the proxy's client's, where the proxy is trusted)."""
    client = context.scope.get("client")
    return str(client[0]) if client else "unknown"
