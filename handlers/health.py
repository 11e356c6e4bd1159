"""Liveness, readiness and metrics: what probes and scrapers call."""

from __future__ import annotations

from typing import Any

import flask
from starlette.exceptions import HTTPException

from handlers.context import known_client_address, services


def get_health() -> dict[str, str]:
    return {"status": "ok", "version": services().version}


# The contract's HEAD operations. HEAD is answered as its GET (app.web.paths), body left
# out, so these only bind the operationIds.
def head_health() -> dict[str, str]:
    return get_health()


def get_readiness() -> dict[str, str]:
    services().check_ready()
    return {"status": "ready"}


def head_readiness() -> dict[str, str]:
    return get_readiness()


def get_metrics() -> Any:
    page = services().metrics_for(known_client_address())
    if page is None:
        raise HTTPException(404)  # to anyone else, no such path
    body, content_type = page
    # A finished response, so the media type is sent as given: from a plain (body, status,
    # headers) tuple, Connexion hands it to Flask as a mimetype, and Werkzeug appends a
    # second `; charset=utf-8` to any text/ type. The headers still name it, for Connexion
    # to check against the contract.
    return flask.Response(body, 200, content_type=content_type), 200, {"Content-Type": content_type}
