"""Liveness, readiness and metrics: what probes and scrapers call."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from handlers.context import client, services


def get_health() -> dict[str, str]:
    return {"status": "ok", "version": services().version}


# The contract's HEAD operations. HEAD is answered as its GET (app.web.middleware), body left
# out, so these only bind the operationIds.
def head_health() -> dict[str, str]:
    return get_health()


def get_readiness() -> dict[str, str]:
    services().check_ready()
    return {"status": "ready"}


def head_readiness() -> dict[str, str]:
    return get_readiness()


def get_metrics() -> Any:
    page = services().metrics_for(client())
    if page is None:
        raise HTTPException(404)  # to anyone else, no such path
    body, content_type = page
    return body, 200, {"Content-Type": content_type}
