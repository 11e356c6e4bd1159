"""Logging set-up with a last line of defence against secrets in log lines."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import time
from typing import Any

from app.domain.keymaterial import KEY_LIKE
from app.domain.keys import utc_seconds

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
            record.fields = scrub_fields(fields)
        return True


def scrub_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A record's structured fields with secrets masked in their text values."""
    return {name: scrub(value) if isinstance(value, str) else value for name, value in fields.items()}


# A text field value written as it is; any other is written as a JSON string (quoted, with
# `"`, `\`, control and non-ASCII characters escaped), so no value can pose as other fields.
PLAIN_VALUE = re.compile(r"[0-9A-Za-z._:/{}\[\]@+%*-]+")


def utc_time(created: float) -> str:
    """Return a record's time in ISO 8601, UTC, to the millisecond: 2026-11-29T14:08:23.123Z."""
    return f"{utc_seconds(int(created))}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return {name: value for name, value in fields.items() if value is not None} if fields else {}


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER MESSAGE key=value ...`, one line per record (a traceback follows it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = text_line(record.created, record.levelname, record.name, record.getMessage(), _fields(record))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    @staticmethod
    def line(created: float, level: str, name: str, message: str, fields: dict[str, Any], pid: int) -> str:
        return text_line(created, level, name, message, fields)


def text_line(created: float, level: str, name: str, message: str, fields: dict[str, Any]) -> str:
    """A line as `TextFormatter` writes it (`fields` without the None ones)."""
    line = f"{utc_time(created)} {level} {name} {message}"
    if fields:
        line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
    return line


def _text_value(value: Any) -> str:
    if type(value) in _PLAIN_TYPES:  # digits, sign, point, exponent, inf, nan, True, False: all plain
        return str(value)
    text = str(value)
    return text if PLAIN_VALUE.fullmatch(text) else json.dumps(text)


_PLAIN_TYPES = frozenset({int, float, bool})


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = json_entry(record.created, record.levelname, record.name, record.getMessage(), _fields(record),
                           record.process)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    @staticmethod
    def line(created: float, level: str, name: str, message: str, fields: dict[str, Any], pid: int) -> str:
        return json.dumps(json_entry(created, level, name, message, fields, pid), default=str)


def json_entry(
    created: float, level: str, name: str, message: str, fields: dict[str, Any], pid: int | None
) -> dict[str, Any]:
    """A line's object as `JSONFormatter` writes it (`fields` without the None ones)."""
    entry: dict[str, Any] = {"time": utc_time(created), "level": level, "logger": name, "message": message, "pid": pid}
    for key, value in fields.items():
        entry.setdefault(key, value)
    return entry


LINE_FORMATTERS = (TextFormatter, JSONFormatter)


def write_info(logger: logging.Logger, message: str, fields: dict[str, Any]) -> bool:
    """Write an INFO line straight to the stderr handler `configure` installs, as it would write
    the record `logger.info(message, extra={"fields": fields})` (same redaction, same bytes),
    without making the record; False, having written nothing, when the record would meet
    anything else on its way (another handler or filter, a level, a formatter: a test's
    capture, an operator's own configuration), and the caller logs the record instead.

    A LogRecord and its trip through the handler's filter and formatter cost more than the
    rest of an access line together: the access log writes one per request.
    """
    handler: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return False
        for candidate in current.handlers:
            if handler is not None:
                return False  # two handlers
            handler = candidate
        if not current.propagate:
            break
        current = current.parent  # type: ignore[assignment]
    if (
        type(handler) is not logging.StreamHandler
        or handler.level > logging.INFO
        or len(handler.filters) != 1
        or type(handler.filters[0]) is not RedactingFilter
        or type(handler.formatter) not in LINE_FORMATTERS
    ):
        return False
    fields = {
        key: scrub(value) if isinstance(value, str) else value for key, value in fields.items() if value is not None
    }  # scrub_fields, without the None ones
    line = handler.formatter.line(  # type: ignore[union-attr]
        time.time(), "INFO", logger.name, scrub(message), fields, os.getpid()
    )
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except Exception:  # a failing stream: the record path reports it as the handler does (handleError)
        return False
    finally:
        handler.release()
    return True


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
    # Connexion says "No auth provided. Aborting with 401." at INFO for every such request: the
    # access line already records the 401, so only at DEBUG.
    quiet = {"connexion.security": {"level": level if level == "DEBUG" else "WARNING"}}
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
        "loggers": {**server_loggers, **access_loggers, **quiet},
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
