"""Gunicorn's configuration for `python -m app serve` (`--config python:app.gunicorn_config`).

Hooks, and the logging configuration: what the command line cannot say. Settings that are plain values stay on the
command line `app.__main__.serve` builds, so that one place shows them.
"""

from __future__ import annotations

import atexit
import os
import shutil
from typing import Any

from app import logs
from app.config import parse_log_format, parse_log_level

# gunicorn's own lines (the arbiter starting, workers booting and exiting) in the format and
# at the level the app's use; `serve` checked both settings before starting gunicorn.
logconfig_dict = logs.dict_config(
    parse_log_level(os.environ.get("LOG_LEVEL", "")), parse_log_format(os.environ.get("LOG_FORMAT", ""))
)


def on_starting(server: Any) -> None:
    """Make SIGINT drain in-flight requests as SIGTERM does.

    Gunicorn's SIGINT is a quick shutdown that drops requests mid-way; an operator pressing
    Ctrl-C, or a supervisor that stops with SIGINT, gets the same graceful stop as SIGTERM.
    A second SIGINT during the drain still forces the quick shutdown (gunicorn's own rule).
    """
    server.handle_int = server.handle_term


def child_exit(server: Any, worker: Any) -> None:
    """Fold a worker that ended into the metrics' totals (prometheus_client's multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory `serve` made for this server."""
    _remove_metrics_directory(os.getpid())


def _remove_metrics_directory(master: int) -> None:
    # Workers are forks of the master and run its exit handlers too: only the master removes it.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.getpid() == master and os.path.basename(directory).startswith("socdefenders-keys-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)


# gunicorn calls on_exit only after a start that succeeded: a pid file it cannot write, a socket
# it cannot bind or a setting it refuses end the master with sys.exit or an exception instead.
# This module is read by the master before any of those, so its exit removes the directory too.
atexit.register(_remove_metrics_directory, os.getpid())
