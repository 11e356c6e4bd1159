"""Command line: `python -m app run|serve|mock|dev-token|set-tier|seed-demo|migrate|backup|export|import|prune`."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence

# Connexion imports Starlette's test client, which warns about httpx on every start.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from app.compat import UnsupportedUpstream, check_upstream
from app.config import ConfigError, Settings
from app.domain.demo import DEMO_USER, seed_demo
from app.domain.sessions import issue_token
from app.domain.store import Store
from app.domain.tiers import TIERS
from app.store import open_store
from app.version import __version__

GRACEFUL_TIMEOUT_S = 10  # seconds in-flight requests get to finish after SIGTERM or SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names; return its exit status."""
    args = parser().parse_args(argv)
    environ = dict(os.environ)
    if args.development and not environ.get("APP_ENV", "").strip():
        # A development tool: with APP_ENV unset it runs in development (everything else,
        # `serve` and the ASGI entry point included, runs in production unless told otherwise).
        environ["APP_ENV"] = "development"
    try:
        return args.function(args, environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task, each run by its own function."""
    parser = argparse.ArgumentParser(prog="python -m app", description="SOC Defenders API-key service")
    parser.add_argument("--version", action="version", version=f"socdefenders-keys {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, function: Callable[[argparse.Namespace, dict[str, str]], int], help: str,
                development: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(function=function, development=development)
        return sub

    command("run", run_command, "start the development server on HOST:PORT", development=True)
    command("serve", serve_command, "start the production server: gunicorn, WEB_CONCURRENCY uvicorn workers")
    command("mock", mock_command, "start the development server on a temporary database seeded with demo data",
            development=True)
    token = command("dev-token", dev_token_command,
                    "print a session token for USER_ID signed with the configured secret", development=True)
    token.add_argument("user_id", type=user_id)
    token.add_argument("--ttl", type=seconds, default=3600, help="lifetime in seconds (default 3600)")
    tier = command("set-tier", set_tier_command, "set an account's tier")
    tier.add_argument("user_id", type=user_id)
    tier.add_argument("tier", choices=sorted(TIERS))
    tier.add_argument("--create", action="store_true", help="create the account if USER_ID has never signed in")
    command("migrate", migrate_command,
            "create or upgrade the schema of the database DATABASE_URL names, then exit")
    command("backup", backup_command,
            "copy the live SQLite database DATABASE_URL names to the new file PATH").add_argument("path")
    command("export", export_command,
            "write every row of DATABASE_URL's store to FILE (JSON lines)").add_argument("file")
    command("import", import_command,
            "load FILE (from export) into DATABASE_URL's store, which must be empty").add_argument("file")
    command("prune", prune_command,
            "delete the keys revoked or expired, and the key events, more than KEY_RETENTION_DAYS ago, then exit")
    demo = command("seed-demo", seed_demo_command, "fill an account with keys in every state (idempotent)",
                   development=True)
    demo.add_argument("user_id", nargs="?", default=DEMO_USER, type=user_id)
    return parser


def user_id(text: str) -> str:
    """A USER_ID argument: one an account can have."""
    from app.domain.keys import MAX_USER_ID_LENGTH, valid_user_id

    if not valid_user_id(text):
        raise argparse.ArgumentTypeError(
            f"USER_ID must be 1 to {MAX_USER_ID_LENGTH} printable characters with no surrounding space")
    return text


def seconds(text: str) -> int:
    """A --ttl argument: whole seconds, at least one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--ttl must be at least 1 second")
    return value


# Each command's function: `(args, environ)` to exit status. Settings are read here, per
# command: only the commands that verify or issue session tokens need SUPABASE_JWT_SECRET
# (production) or the generated development one (`sessions=True`); the others never read it.


def run_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    return start_server(Settings.from_env(environ), run)


def serve_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    return start_server(Settings.from_env(environ), serve)


def mock_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    # Everything, the development secret included, in a folder removed on the way out.
    scratch = tempfile.mkdtemp(prefix="socdefenders-keys-mock-")
    try:
        settings = Settings.from_env({**environ, "DATABASE_URL": f"sqlite:///{scratch}/keys.db"})
        # uvicorn re-raises the signal that stopped it once it has shut down; exit through
        # the `finally` below rather than die of it.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return mock(settings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def dev_token_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    settings = Settings.from_env(environ)
    print(issue_token(settings.jwt_secret, args.user_id, time.time(), args.ttl))
    return 0


def set_tier_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from app.domain.keys import KeyService

    store = checked_store(Settings.from_env(environ, sessions=False))
    if store is None:
        return 2
    account = KeyService(store, time.time).set_tier(args.user_id, args.tier, create=args.create)
    if account is None:
        # A typo in a user id would otherwise make a paying account nobody signs in to.
        print(f"set-tier: no account {args.user_id!r}: it has never signed in; "
              "check the id, or add --create to make it", file=sys.stderr)
        return 1
    print(f"{account.user_id}: tier {account.tier}")
    return 0


def seed_demo_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    store = checked_store(Settings.from_env(environ, sessions=False))
    if store is None:
        return 2
    added = seed_demo(store, args.user_id, time.time())
    print(f"{args.user_id}: " + ("added\n  " + "\n  ".join(added) if added else "already seeded, nothing added"))
    return 0


def migrate_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    return migrate(Settings.from_env(environ, sessions=False))


def backup_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    return backup(Settings.from_env(environ, sessions=False), args.path)


def prune_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    return prune(Settings.from_env(environ, sessions=False))


def export_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    if args.file == "-":
        # Not standard output: the rows would share it with the counts, and a terminal would show
        # every digest and account id. A file named `-` is a surprise nobody asked for.
        print("export: '-' (standard output) is not supported: name a new file, such as keys.jsonl", file=sys.stderr)
        return 2
    from app.store import transfer

    return transfer_rows("export", transfer.export_rows, Settings.from_env(environ, sessions=False), args.file)


def import_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from app.store import transfer

    return transfer_rows("import", transfer.import_rows, Settings.from_env(environ, sessions=False), args.file)


def transfer_rows(name: str, move: Callable[[Settings, str], dict[str, int]], settings: Settings, file: str) -> int:
    """Export or import with `move`, and say how many rows of each table it moved."""
    from app.store import transfer

    try:
        counts = move(settings, file)
    except transfer.TransferError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    print(", ".join(f"{table}: {n}" for table, n in counts.items()))
    return 0


def start_server(settings: Settings, server: Callable[[Settings], int]) -> int:
    """Start `server` (`run` or `serve`) once what it needs is checked, each problem one line before it starts."""
    try:
        check_upstream()
    except UnsupportedUpstream as exc:
        print(exc, file=sys.stderr)
        return 1
    from app.web.connections import descriptors_problem

    # The store is opened (created, migrated) once here, so that a database the service cannot
    # use is one line and exit 2, before any server or worker starts; then, likewise, where it
    # listens, and how many connections it may hold (checked here, so that gunicorn's workers
    # inherit it).
    problem = check_store(settings) or check_listen(settings) or descriptors_problem(settings)
    if problem:
        print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    return server(settings)


def checked_store(settings: Settings) -> Store | None:
    """The store `settings` name, opened; or None, having said in one line why it cannot serve."""
    store, problem = opened_store(settings)
    if store is None:
        print(f"configuration error: {problem}", file=sys.stderr)
    return store


def check_store(settings: Settings, create: bool | None = None) -> str | None:
    """Open and close the store `settings` name; return why it cannot serve, in one line, or None."""
    store, problem = opened_store(settings, create)
    if store is not None:
        store.close()
    return problem


def opened_store(settings: Settings, create: bool | None = None) -> tuple[Store | None, str | None]:
    """The store `settings` name, opened (created, migrated); or None and why it cannot serve, in one line."""
    from app.domain.errors import StoreUnavailable
    from app.store import StoreStartError, unreachable

    if problem := unreachable(settings):
        return None, problem
    try:
        return open_store(settings, create=create), None
    except StoreStartError as exc:
        return None, str(exc)
    except StoreUnavailable as exc:
        return None, f"the {settings.engine} database cannot be reached: {exc}"


def check_listen(settings: Settings) -> str | None:
    """Resolve HOST and bind HOST:PORT once; return why the server could not listen there, in one line, or None.

    gunicorn would retry a taken port for five seconds and log each attempt, uvicorn print a
    traceback-like block: checked here, a mistake is one line before any server starts.
    """
    import socket

    # The family gunicorn and uvicorn bind with: IPv6 for a literal IPv6 address, else IPv4.
    host = bare_host(settings.host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        found = socket.getaddrinfo(host, settings.port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        return f"HOST {settings.host!r} does not resolve to an address to listen on ({reason})"
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as probe:
        # As the servers bind: SO_REUSEADDR, so a port left in TIME_WAIT by the last run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {settings.port} on {settings.host} is in use: stop what listens there, or set PORT"
            return f"cannot listen on {url_host(settings.host)}:{settings.port}: {exc.strerror}"
    return None


def migrate(settings: Settings) -> int:
    """Create the database if missing and bring its schema up to date (start-up does the same, under a lock)."""
    from app.store.sql import SQLStore
    store, problem = opened_store(settings, create=True)
    if store is None:
        print(f"migrate: {problem}", file=sys.stderr)
        return 1
    try:
        # What this process's migration found under its lock: of several at once, one creates.
        assert isinstance(store, SQLStore) and store.migrated is not None
        print(store.migrated.report(settings.engine))
    finally:
        store.close()
    return 0


def prune(settings: Settings) -> int:
    """Delete now what is past retention (every worker also does, hourly); say how much."""
    from app.domain import retention
    from app.domain.errors import StoreUnavailable
    from app.store import StoreStartError

    try:
        store = open_store(settings, create=False)
        try:
            keys, events = retention.prune(store, int(time.time() * 1_000_000), settings.key_retention_days)
        finally:
            store.close()
    except (StoreStartError, StoreUnavailable) as exc:
        print(f"prune: {exc}", file=sys.stderr)
        return 1
    print(f"prune: deleted {keys} keys and {events} key events older than {settings.key_retention_days} days")
    return 0


def backup(settings: Settings, path: str) -> int:
    """Copy the live SQLite database to `path`, consistent as of one moment."""
    from app.domain.errors import StoreUnavailable
    from app.store import SQLiteStore, StoreStartError

    if settings.engine != "sqlite":
        print("backup: copies SQLite databases; back PostgreSQL up with pg_dump", file=sys.stderr)
        return 2
    try:
        store = SQLiteStore(settings.database_path, create=False)
        try:
            store.backup(path)
        finally:
            store.close()
    except FileExistsError:
        print(f"backup: {path} exists already; name a new file", file=sys.stderr)
        return 1
    except (StoreStartError, StoreUnavailable) as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"backup: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"backup: {settings.database_path} copied to {path}")
    return 0


def mock(settings: Settings) -> int:
    """Start the development server on a fresh database holding the demo account."""
    if settings.production:
        print("mock runs in development mode only: unset APP_ENV, or set it to development", file=sys.stderr)
        return 2
    problem = check_listen(settings)
    if problem:
        print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    seed_demo(open_store(settings), DEMO_USER, time.time())
    return run(settings, user=DEMO_USER, note="a temporary database, seeded with the demo account; removed on exit")


def browser_base(host: str, port: int) -> str:
    """Return the address a browser on this machine opens the server at when it listens on `host`."""
    # Vite and Next open apps on localhost, and a cookie belongs to the host name it was set on:
    # a loopback or all-interfaces HOST is signed in on localhost, so an app there has the session.
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"http://{host}:{port}"
    return f"http://localhost:{port}" if address.is_loopback or address.is_unspecified else f"http://{url_host(host)}:{port}"


def bare_host(host: str) -> str:
    """HOST as a socket takes it: an IPv6 address written in brackets (`[::1]`) without them."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def url_host(host: str) -> str:
    """HOST as a URL or gunicorn's `--bind` writes it: an IPv6 address in brackets (`[::1]`)."""
    host = bare_host(host)
    return f"[{host}]" if ":" in host else host


def run(settings: Settings, user: str = "dev-user", note: str = "") -> int:
    """Start a development server (uvicorn, one process) and say how to sign in and call it."""
    import uvicorn

    from app import logs
    from app.domain.retention import RetentionSweeper
    from app.web.connections import connection_limits
    from app.web.factory import create_app
    from app.web.transport import protocol_class

    logs.configure(settings.log_level, settings.log_format)
    logs.warn_weak_secret(settings)
    app = create_app(settings)
    store = app.app.extensions["services"].store
    logs.log_startup(settings, store.schema_version(), 1, "uvicorn, one process")
    RetentionSweeper(store, time.time, settings.key_retention_days)
    base = f"http://{url_host(settings.host)}:{settings.port}"
    if not settings.production:
        token = issue_token(settings.jwt_secret, user, time.time(), 24 * 3600)
        browser = browser_base(settings.host, settings.port)
        demo = "" if note else (
            f"  demo data: {sys.executable} -m app seed-demo   then sign in as {DEMO_USER}:\n"
            f"             {browser}/dev/login?user={DEMO_USER}\n"
        )
        # Every interface: loopback too. (A comparison, not a bind: bandit's B104 reads any "0.0.0.0".)
        direct = "127.0.0.1" if settings.host == "0.0.0.0" else url_host(settings.host)  # nosec B104
        also = "" if browser == base else (
            f"  (for an app opened on {direct}: http://{direct}:{settings.port}/dev/login?user={user}\n"
            "   the cookie belongs to the host name you sign in on)\n"
        )
        print(
            f"\nSOC Defenders API-key service ({settings.env}) on {base}\n"
            f"  spec: {base}/openapi.json   docs: {base}/ui/   key page: {browser}/\n"
            f"  database: {settings.database_path}{f' ({note})' if note else ''}\n\n"
            f"Sign in as '{user}' in a browser (sets the session cookie, opens the key page):\n\n"
            f"  {browser}/dev/login?user={user}\n{also}\n"
            f"{demo}{chr(10) if demo else ''}"
            f"Or mint a key as '{user}' with curl (session token valid 24 h):\n\n"
            f"  curl -s -X POST {base}/api/v1/keys \\\n"
            f"    -b 'sb-access-token={token}' \\\n"
            "    -H 'Content-Type: application/json' \\\n"
            "    -d '{\"name\": \"tom-laptop-dev\", \"expires_in_days\": 90}'\n",
            flush=True,
        )
    uvicorn.run(
        app, host=bare_host(settings.host), port=settings.port, access_log=False, log_config=None,
        workers=1,  # one process, whatever WEB_CONCURRENCY (which uvicorn would otherwise read) says
        http=protocol_class(settings.request_read_timeout, connection_limits(settings)),
        # No route is a WebSocket: an upgrade request is answered as the HTTP request it also is.
        ws="none",
        # X-Forwarded-For and -Proto are read by the app itself (app.web.clients), not by
        # uvicorn, which would believe the leftmost entry, the one the client writes.
        proxy_headers=False,
    )
    return 0


def serve(settings: Settings) -> int:
    """Replace this process with gunicorn running WEB_CONCURRENCY uvicorn workers."""
    if not settings.production:
        print("serve runs in production mode: unset APP_ENV, or set it to production; `run` is the development server",
              file=sys.stderr)
        return 2
    workers = str(settings.workers)
    argv = [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "app.asgi.Worker",
        "--workers", workers,
        "--bind", f"{url_host(settings.host)}:{settings.port}",
        # SIGTERM and SIGINT: stop accepting, let in-flight requests finish for up to this
        # long, then end the workers; exit 0 (README, "Signals").
        "--graceful-timeout", str(GRACEFUL_TIMEOUT_S),
        "--config", "python:app.gunicorn_config",
        # Unused (app.asgi.Worker turns uvicorn's proxy headers off; app.web.clients reads
        # them), but gunicorn would otherwise read FORWARDED_ALLOW_IPS itself.
        "--forwarded-allow-ips", "127.0.0.1",
        # Several servers on one machine would otherwise share ~/.gunicorn/gunicorn.ctl.
        "--no-control-socket",
        "app.asgi:from_env()",
    ]
    # Each worker keeps its metrics in files here, which /metrics sums; a directory of this
    # server's own, so that no earlier run's counts are added in (app.gunicorn_config removes it).
    # gunicorn removes it on every way out (app.gunicorn_config), a failed start included.
    directory = tempfile.mkdtemp(prefix="socdefenders-keys-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        os.execv(sys.executable, argv)
    except OSError:
        os.rmdir(directory)
        raise
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
