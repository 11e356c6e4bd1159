"""What a handler needs from the request: the wired services and the request id."""

from __future__ import annotations

from connexion import context

from app.web.services import Services


def services() -> Services:
    return context.scope["state"]["services"]


def request_id() -> str:
    return context.scope["state"]["request_id"]
