"""Logging set-up with a last line of defence against secrets in log lines."""

from __future__ import annotations

import logging
import re
from typing import Any

# An API key. Linear on any input: the class holds no `_`, so a failed try ends at the next one.
API_KEY = re.compile(r"sk_live_[0-9A-Za-z]+")
# Runs of the characters a JWT (session token) is written in: three base64url segments
# joined by dots. Each character is read once; a run is then inspected with string
# methods, never by a pattern that backtracks over it (`eyJ` repeated 20,000 times made the
# earlier pattern quadratic: over a second of CPU for one 65 KB request line).
TOKEN_RUN = re.compile(r"[0-9A-Za-z_.\-]+")
JWT_START = "eyJ"  # base64url of `{"`: every JWT's header begins so
REDACTED = "[REDACTED]"


def _mask_jwt(match: re.Match[str]) -> str:
    run = match.group()
    start = run.find(JWT_START)
    if start < 0 or run.count(".", start) < 2:
        return run
    return run[:start] + REDACTED


def scrub(text: str) -> str:
    """Mask anything that looks like an API key or a session token."""
    if "sk_live_" in text:
        text = API_KEY.sub(REDACTED, text)
    if JWT_START in text:
        text = TOKEN_RUN.sub(_mask_jwt, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrite each record's message with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if record.exc_info and record.exc_info[1] is not None:
            cleaned = scrub(cleaned + "\n" + logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        return True


def configure(level: str = "INFO") -> None:
    """Send log lines to stderr through the redacting filter."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Servers may give their own loggers handlers that bypass the root one (gunicorn's
    # uvicorn worker does): filter those too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access"):
        for own in logging.getLogger(name).handlers:
            own.addFilter(RedactingFilter())


def warn_weak_secret(settings: Any) -> None:
    """Warn when a production JWT secret is too short to resist guessing."""
    if settings.production and len(settings.jwt_secret) < 32:
        logging.getLogger("app").warning(
            "SUPABASE_JWT_SECRET is %d characters long; HS256 wants at least 32 random ones",
            len(settings.jwt_secret),
        )
