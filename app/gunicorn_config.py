"""Gunicorn's configuration for `python -m app serve` (`--config python:app.gunicorn_config`).

Hooks only: what the command line cannot say. Settings that are plain values stay on the
command line `app.__main__.serve` builds, so that one place shows them.
"""

from __future__ import annotations

from typing import Any


def on_starting(server: Any) -> None:
    """Make SIGINT drain in-flight requests as SIGTERM does.

    Gunicorn's SIGINT is a quick shutdown that drops requests mid-way; an operator pressing
    Ctrl-C, or a supervisor that stops with SIGINT, gets the same graceful stop as SIGTERM.
    A second SIGINT during the drain still forces the quick shutdown (gunicorn's own rule).
    """
    server.handle_int = server.handle_term
