"""The bare reference server: the same work as ours with no Connexion.

Starlette routes three endpoints by hand and does exactly what the real service does on
them, with the same modules: the session check (HS256 JWT) and per-account rate limit,
key minting with the same SQLite transactions, and key verification with the same
transaction (`KeyService.use`: the key's lookup, its account's rate windows, its usage).
A mint is answered once its key is synced to disk, the sync off the event loop, by the
layer the service uses for that (`app.web.durable`). No contract validation, no other
middleware. It is the floor the real server is measured
against: `uvicorn bench.floor:app`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import build_services
from app.config import Settings
from app.domain.errors import ServiceError
from app.domain.keys import MINT_WARNING
from app.domain.ratelimit import management_subject
from app.store import SQLiteStore
from app.web.durable import DurableAnswerMiddleware
from app.web.errors import error_headers, status_and_code
from app.web.ratelimit_headers import rate_limit_headers
from handlers.render import render_api_key_created, render_current_key

settings = Settings(
    jwt_secret=os.environ["SUPABASE_JWT_SECRET"],
    database_path=Path(os.environ.get("DATABASE_PATH", "bench/out/floor.db")),
    env="production",
)
store = SQLiteStore(settings.database_path)
store.checkpoint_in_background()  # as each production worker does (app.asgi.from_env)
services = build_services(settings, store=store)


def reply(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, media_type="application/json")


def refuse(exc: ServiceError) -> Response:
    status, code = status_and_code(exc)
    return reply({"error": {"code": code, "message": exc.message, "details": exc.details, "request_id": "req_floor"}},
                 status, error_headers(exc))


async def healthz(request: Request) -> Response:
    services.store.ping()
    return reply({"status": "ok"})


async def mint(request: Request) -> Response:
    try:
        now = time.time()
        user = services.sessions.user_id(request.cookies.get("sb-access-token"), now)
        decision = services.limiter.admit(management_subject(user), services.management_limits, now)
        if not decision.allowed:
            return reply({"error": {"code": "rate_limit_exceeded"}}, 429, rate_limit_headers(decision))
        body = json.loads(await request.body())
        minted = services.keys.mint(user, body["name"], body.get("expires_in_days"), "req_floor")
    except ServiceError as exc:
        return refuse(exc)
    data = render_api_key_created(services.keys.info(minted.record), minted.secret)
    return reply({"data": data, "meta": {"warning": MINT_WARNING}}, 201, rate_limit_headers(decision))


async def whoami(request: Request) -> Response:
    token = request.headers.get("x-api-key") or request.query_params.get("api_key")
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        token = authorization[7:]
    try:
        record, decision = services.keys.use(token or "", None, "req_floor")
        if not decision.allowed:
            return reply({"error": {"code": "rate_limit_exceeded"}}, 429, rate_limit_headers(decision))
        info = render_current_key(services.keys.info(record), decision)
    except ServiceError as exc:
        return refuse(exc)
    return reply({"data": info}, 200, rate_limit_headers(decision))


app = DurableAnswerMiddleware(Starlette(routes=[
    Route("/healthz", healthz),
    Route("/api/v1/keys", mint, methods=["POST"]),
    Route("/api/v1/whoami", whoami),
]))
