"""Command line: `python -m app run|serve|dev-token|set-tier`."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

# Connexion imports Starlette's test client, which warns about httpx on every start.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from app.compat import UnsupportedConnexion, check_connexion
from app.config import ConfigError, Settings
from app.domain.sessions import issue_token
from app.domain.tiers import TIERS
from app.store import open_store


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="SOC Defenders API-key service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the development server on HOST:PORT")
    commands.add_parser("serve", help="start the production server: gunicorn, WEB_CONCURRENCY uvicorn workers")
    token = commands.add_parser("dev-token", help="print a session token for USER_ID signed with the configured secret")
    token.add_argument("user_id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    tier = commands.add_parser("set-tier", help="set an account's tier")
    tier.add_argument("user_id")
    tier.add_argument("tier", choices=sorted(TIERS))
    commands.add_parser("migrate", help="create or upgrade the schema of the database DATABASE_URL names, then exit")
    export = commands.add_parser("export", help="write every row of DATABASE_URL's store to FILE (JSON lines)")
    export.add_argument("file")
    load = commands.add_parser("import", help="load FILE (from export) into DATABASE_URL's store, which must be empty")
    load.add_argument("file")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command in ("run", "serve"):
        try:
            check_connexion()
        except UnsupportedConnexion as exc:
            print(exc, file=sys.stderr)
            return 1
    if args.command == "run":
        return run(settings)
    if args.command == "serve":
        return serve(settings)
    from app.domain.keys import MAX_USER_ID_LENGTH, valid_user_id

    if args.command in ("dev-token", "set-tier") and not valid_user_id(args.user_id):
        parser.error(f"USER_ID must be 1 to {MAX_USER_ID_LENGTH} printable characters with no surrounding space")
    if args.command == "dev-token":
        if args.ttl < 1:
            parser.error("--ttl must be at least 1 second")
        print(issue_token(settings.jwt_secret, args.user_id, time.time(), args.ttl))
        return 0
    if args.command == "set-tier":
        from app.domain.keys import KeyService

        account = KeyService(open_store(settings), time.time).set_tier(args.user_id, args.tier)
        print(f"{account.user_id}: tier {account.tier}")
        return 0
    if args.command == "migrate":
        return migrate(settings)
    if args.command in ("export", "import"):
        from app.store import transfer

        try:
            if args.command == "export":
                counts = transfer.export_rows(settings, args.file)
            else:
                counts = transfer.import_rows(settings, args.file)
        except transfer.TransferError as exc:
            print(f"{args.command}: {exc}", file=sys.stderr)
            return 1
        print(", ".join(f"{table}: {n}" for table, n in counts.items()))
        return 0
    return 1


def migrate(settings: Settings) -> int:
    """Bring the store's schema up to date ahead of a deploy (start-up does the same, under a lock)."""
    from app.domain.errors import StoreUnavailable

    try:
        store = open_store(settings)
    except StoreUnavailable as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    store.close()
    print(f"{settings.engine}: schema up to date")
    return 0


def run(settings: Settings) -> int:
    """Start a development server (uvicorn, one process) and say how to call it."""
    import uvicorn

    from app import logs
    from app.web.factory import create_app
    from app.web.transport import protocol_class

    logs.configure(settings.log_level)
    logs.warn_weak_secret(settings)
    app = create_app(settings)
    base = f"http://{settings.host}:{settings.port}"
    if not settings.production:
        token = issue_token(settings.jwt_secret, "dev-user", time.time(), 24 * 3600)
        print(
            f"\nSOC Defenders API-key service ({settings.env}) on {base}\n"
            f"  spec: {base}/openapi.json   docs: {base}/ui/\n"
            f"  database: {settings.database_path}\n\n"
            "Mint a key as user 'dev-user' (session token valid 24 h):\n\n"
            f"  curl -s -X POST {base}/api/v1/keys \\\n"
            f"    -b 'sb-access-token={token}' \\\n"
            "    -H 'Content-Type: application/json' \\\n"
            "    -d '{\"name\": \"tom-laptop-dev\", \"expires_in_days\": 90}'\n",
            flush=True,
        )
    uvicorn.run(
        app, host=settings.host, port=settings.port, access_log=False, log_config=None,
        http=protocol_class(settings.request_read_timeout),
        # X-Forwarded-For and -Proto are believed only from these peers (uvicorn's own default
        # would believe 127.0.0.1, so anyone on this machine could name any client).
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
    )
    return 0


def serve(settings: Settings) -> int:
    """Replace this process with gunicorn running WEB_CONCURRENCY uvicorn workers."""
    import os

    if not settings.production:
        print("serve runs in production mode: set APP_ENV=production (make serve does)", file=sys.stderr)
        return 2
    workers = os.environ.get("WEB_CONCURRENCY", "2")
    argv = [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "app.asgi.Worker",
        "--workers", workers,
        "--bind", f"{settings.host}:{settings.port}",
        "--graceful-timeout", "10",
        # What app.asgi.Worker gives uvicorn too; gunicorn would otherwise default to 127.0.0.1.
        "--forwarded-allow-ips", ",".join(settings.forwarded_allow_ips),
        # Several servers on one machine would otherwise share ~/.gunicorn/gunicorn.ctl.
        "--no-control-socket",
        "app.asgi:from_env()",
    ]
    os.execv(sys.executable, argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
