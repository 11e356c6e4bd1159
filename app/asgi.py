"""Entry point for production servers: `gunicorn 'app.asgi:from_env()'`."""

from __future__ import annotations

import gc
import warnings
from typing import Any

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from connexion import FlaskApp
from uvicorn_worker import UvicornWorker

from app import logs
from app.config import Settings
from app.store import SQLiteStore, open_store
from app.web.factory import create_app


def from_env() -> FlaskApp:
    """Build the app from the environment (called once in each worker)."""
    settings = Settings.from_env()
    logs.configure(settings.log_level)
    logs.warn_weak_secret(settings)
    store = open_store(settings)  # here, after gunicorn has forked this worker: its own pool or file
    if isinstance(store, SQLiteStore):
        store.checkpoint_in_background()
    app = create_app(settings, store=store)
    # Everything built so far lives as long as the worker: keep it out of the garbage
    # collector's scans, which otherwise show as latency spikes under load.
    gc.collect()
    gc.freeze()
    return app


class Worker(UvicornWorker):
    """Gunicorn worker running uvicorn without its access log, which would print `?api_key=`.

    The app writes its own access log, with secrets redacted.
    """

    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "access_log": False}
