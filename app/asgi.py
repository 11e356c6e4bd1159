"""Entry point for production servers: `gunicorn -k app.asgi.Worker 'app.asgi:from_env()'`.

An unset APP_ENV is production here, as everywhere but the development commands (`python -m app
run`, `mock`, `dev-token`, `seed-demo`): no `/dev/login`, no `Prefer`, no generated secret, and no
start without a SUPABASE_JWT_SECRET of 32 bytes or more.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from app.compat import UnsupportedUpstream, check_upstream

# gunicorn's exit status for a worker that cannot boot: the master stops rather than respawn it.
WORKER_BOOT_ERROR = 3

# Before the fenced code below is imported: on another release of a package it reaches into,
# that import could fail with an ImportError deep in a traceback; this says why in one line.
try:
    check_upstream()
except UnsupportedUpstream as exc:
    print(exc, file=sys.stderr, flush=True)
    sys.exit(WORKER_BOOT_ERROR)

from connexion import FlaskApp
from uvicorn_worker import UvicornWorker

from app import logs
from app.config import ConfigError, Settings
from app.domain.errors import StoreUnavailable
from app.domain.retention import RetentionSweeper
from app.store import SQLiteStore, StoreStartError, open_store
from app.web.connections import connection_limits, descriptors_problem
from app.web.factory import create_app
from app.web.transport import protocol_class


def from_env() -> FlaskApp:
    """Build the app from the environment (called once in each worker)."""
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.log_format)
        logs.warn_weak_secret(settings)
        problem = descriptors_problem(settings)  # `serve` raised it already; gunicorn started otherwise did not
        if problem:
            raise ConfigError(problem)
        store = open_store(settings)  # here, after gunicorn has forked this worker: its own pool or file
        server, workers = running_server(sys.argv, os.environ)
        logs.log_startup(settings, store.schema_version(), workers, server)
    except (ConfigError, StoreStartError, StoreUnavailable) as exc:
        # `serve` checked all of this before starting gunicorn; should it have changed since,
        # one line, and the master stops, rather than a traceback from every worker.
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        sys.exit(WORKER_BOOT_ERROR)
    if isinstance(store, SQLiteStore):
        store.checkpoint_in_background()
    # Outside any request: deletes what is past retention at start and hourly (app.domain.retention).
    RetentionSweeper(store, time.time, settings.key_retention_days)
    app = create_app(settings, store=store)
    # Everything built so far lives as long as the worker: keep it out of the garbage
    # collector's scans, which otherwise show as latency spikes under load.
    gc.collect()
    gc.freeze()
    return app


def running_server(argv: list[str], environ: Mapping[str, str]) -> tuple[str, int]:
    """The server running this app, and how many worker processes it runs, for the start-up line.

    Under gunicorn with `Worker`, gunicorn's own count (`-w`, `WEB_CONCURRENCY`, a config file:
    whatever it settled on). Otherwise uvicorn (`uvicorn --factory app.asgi:from_env`), whose
    count is its `--workers` option, else UVICORN_WORKERS, else WEB_CONCURRENCY (uvicorn's own
    default), else one; uvicorn's worker processes are started with the command line that started it.
    """
    if Worker.workers is not None:
        return "gunicorn worker", Worker.workers
    workers = environ.get("UVICORN_WORKERS", "") or environ.get("WEB_CONCURRENCY", "")
    for n, arg in enumerate(argv):
        if arg == "--workers" and n + 1 < len(argv):
            workers = argv[n + 1]
        elif arg.startswith("--workers="):
            workers = arg.partition("=")[2]
    return "uvicorn", int(workers) if workers.strip().isdigit() and int(workers) > 0 else 1


class Worker(UvicornWorker):
    """Gunicorn worker running uvicorn as `python -m app run` does.

    - without uvicorn's access log, which would print `?api_key=` (the app writes its own,
      with secrets redacted);
    - with the bounded HTTP protocol (`app.web.transport`), and its bounds on open connections;
    - without uvicorn's proxy headers: the app reads X-Forwarded-For itself (`app.web.clients`);
    - serving gunicorn's listening sockets themselves, not gunicorn's wrappers of them.
    """

    # No route is a WebSocket: an upgrade request is answered as the HTTP request it also is.
    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "access_log": False, "ws": "none"}

    # gunicorn's worker count, once gunicorn has made a worker of this class (in its master,
    # before the fork): the start-up line says it (`running_server`).
    workers: ClassVar[int | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Worker.workers = self.cfg.workers
        try:
            # Built in gunicorn's master, before the fork: a configuration error is left to
            # `from_env`, in the worker, which says it in one line and stops the master.
            settings = Settings.from_env(sessions=False)
        except ConfigError:
            settings = Settings(jwt_secret="", database_path=Path())
        self.config.http = protocol_class(settings.request_read_timeout, connection_limits(settings))
        # X-Forwarded-For and -Proto are read by the app itself (app.web.clients), as under `run`.
        self.config.proxy_headers = False

    def run(self) -> None:
        # uvloop, given gunicorn's socket wrapper rather than a `socket.socket`, closes the
        # descriptor itself when the server stops, so gunicorn's later close of the wrapper
        # logged "Error while closing socket [Errno 9] Bad file descriptor" at every shutdown.
        # With the sockets themselves uvloop and uvicorn each close what they own.
        listeners: list[Any] = self.sockets  # type: ignore[has-type]  # gunicorn is untyped
        self.sockets = [getattr(listener, "sock", listener) for listener in listeners]
        super().run()
