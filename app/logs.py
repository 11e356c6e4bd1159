"""Logging set-up with a last line of defence against secrets in log lines."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import time
from typing import Any

from app.domain.keymaterial import KEY_LIKE

# An API key, as the key material module writes it (linear on any input).
API_KEY = KEY_LIKE
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
    """Rewrite each record's message, and its structured fields, with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if record.exc_info and record.exc_info[1] is not None:
            cleaned = scrub(cleaned + "\n" + logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = {name: scrub(value) if isinstance(value, str) else value for name, value in fields.items()}
        return True


# A text field value written as it is; any other is written as a JSON string (quoted, with
# `"`, `\`, control and non-ASCII characters escaped), so no value can pose as other fields.
PLAIN_VALUE = re.compile(r"[0-9A-Za-z._:/{}\[\]@+%*-]+")


def utc_time(created: float) -> str:
    """Return a record's time in ISO 8601, UTC, to the millisecond: 2026-11-29T14:08:23.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return {name: value for name, value in fields.items() if value is not None} if fields else {}


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER MESSAGE key=value ...`, one line per record (a traceback follows it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{utc_time(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{name}={_text_value(value)}" for name, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    return text if PLAIN_VALUE.fullmatch(text) else json.dumps(text)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name, value in _fields(record).items():
            entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def dict_config(level: str = "INFO", log_format: str = "text") -> dict[str, Any]:
    """Return the `logging.config.dictConfig` for every log line of the process, in `log_format`.

    The app's, uvicorn's and gunicorn's loggers all write through one handler on stderr, in
    one format, through the redacting filter. gunicorn's and uvicorn's own loggers are named
    because both servers give them handlers and stop their propagation: they get this handler
    instead (gunicorn reads this as its `logconfig_dict`; uvicorn's worker then copies
    gunicorn's handlers). Their access loggers get none: the app writes the access lines.
    """
    formatter = JSONFormatter if log_format == "json" else TextFormatter
    server_loggers = {
        name: {"level": level, "handlers": ["stderr"], "propagate": False}
        for name in ("gunicorn.error", "uvicorn.error")
    }
    access_loggers = {name: {"handlers": [], "propagate": False} for name in ("gunicorn.access", "uvicorn.access")}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": f"{__name__}.RedactingFilter"}},
        "formatters": {"line": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["redact"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {**server_loggers, **access_loggers},
    }


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """Send every log line to stderr, in `log_format`, through the redacting filter."""
    logging.config.dictConfig(dict_config(level, log_format))


def log_startup(settings: Any, schema_version: int, workers: int, server: str) -> None:
    """Say, once per process, what is running: version, environment, database, schema, workers."""
    from app.version import __version__

    logging.getLogger("app").info(
        "socdefenders-keys %s starting (%s)",
        __version__,
        server,
        extra={
            "fields": {
                "version": __version__,
                "env": settings.env,
                "database": settings.database_location,
                "schema_version": schema_version,
                "workers": workers,
            }
        },
    )


def warn_weak_secret(settings: Any) -> None:
    """Warn when a development JWT secret is too short to resist guessing (production refuses one)."""
    length = len(settings.jwt_secret.encode())
    if not settings.jwt_secret_generated and 0 < length < 32:
        logging.getLogger("app").warning(
            "SUPABASE_JWT_SECRET is %d bytes long; HS256 wants at least 32 random ones (production refuses it)",
            length,
        )
