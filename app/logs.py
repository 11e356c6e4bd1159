"""Logging set-up with a last line of defence against secrets in log lines."""

from __future__ import annotations

import logging
import re
from typing import Any

SECRET_PATTERNS = (
    re.compile(r"sk_live_[0-9A-Za-z]+"),
    # JWTs (session tokens): three base64url segments, the first a JSON header.
    re.compile(r"eyJ[0-9A-Za-z_-]+\.[0-9A-Za-z_-]+\.[0-9A-Za-z_-]*"),
)


def scrub(text: str) -> str:
    """Mask anything that looks like an API key or a session token."""
    for pattern in SECRET_PATTERNS:
        text = pattern.sub("[REDACTED]", text)
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
