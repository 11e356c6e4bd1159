"""What a handler needs from the request: the wired services and the request id."""

from __future__ import annotations

from connexion import context

from app.web.services import Client, Services


def services() -> Services:
    return context.scope["state"]["services"]


def request_id() -> str:
    return context.scope["state"]["request_id"]


def client() -> Client:
    """The client as the trusted proxies in front saw it (`app.web.clients`)."""
    return context.scope["state"]["client"]


def client_address() -> str:
    """The client's IP address (the proxy's client's, where the proxy is trusted)."""
    return client().address or "unknown"
