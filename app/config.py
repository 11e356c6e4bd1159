"""Configuration: one frozen Settings read from the environment once."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.domain.gateway import BadRouteMap, RouteMap, default_routes, load_route_map

DEFAULT_DATABASE_URL = "sqlite:///data/keys.db"
DEV_SECRET_FILE = ".supabase-jwt-secret"
READ_TIMEOUT_SECONDS = 10  # for a request's head, and again for its body (app.web.limits)
LOCALHOST_ORIGINS = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?$"
# Request headers a page on an allowed origin may send: the API's own, `Prefer` (the
# development server's forced answers), and what common frontend libraries add.
DEFAULT_CORS_ALLOW_HEADERS = (
    "Content-Type", "Authorization", "X-API-Key", "Prefer", "X-Requested-With", "traceparent", "tracestate",
    "sentry-trace", "baggage",
)
MAX_MOCK_DELAY_MS = 10_000
# HS256 keys shorter than the hash's own 32 bytes can be guessed offline from one token.
MIN_SECRET_BYTES = 32


class ConfigError(Exception):
    """The environment does not describe a runnable configuration."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know about its deployment."""

    jwt_secret: str
    database_path: Path
    env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    validate_responses: bool = True
    cors_origin_regex: str = LOCALHOST_ORIGINS
    management_limit_per_minute: int = 120
    management_limit_per_day: int = 10_000
    max_active_keys: int = 50
    leak_report_limit_per_minute: int = 10  # per client address (POST /api/v1/leaks)
    leak_report_limit_per_day: int = 1_000
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line
    # Proxies whose X-Forwarded-For and -Proto are believed (app.web.clients); ("*",): any one peer
    forwarded_allow_ips: tuple[str, ...] = ()
    request_read_timeout: int = READ_TIMEOUT_SECONDS  # seconds for a request's head, and again for its body
    database_url: str = ""  # postgresql://...; empty: SQLite at database_path
    database_pool_size: int = 10  # connections per worker process (PostgreSQL)
    database_timeout_ms: int = 5000  # statement, lock and pool-wait timeout (PostgreSQL)
    cors_origins: tuple[str, ...] = ()
    cors_allow_headers: tuple[str, ...] = DEFAULT_CORS_ALLOW_HEADERS
    mock_delay_ms: int = 0
    key_page: bool = True
    docs: bool = True  # Swagger UI under /ui/
    contract: bool = True  # the contract at /openapi.json
    trusted_hosts: tuple[str, ...] = ()  # Host values answered; empty: any
    create_database: bool = True  # create a missing SQLite file (production: only when told)
    workers: int = 2  # gunicorn worker processes (`serve`)
    max_connections: int = 1000  # open connections per worker process (app.web.connections)
    max_connections_per_client: int = 100  # of those, from one client address (an IPv6 /64)
    key_retention_days: int = 90  # days revoked and expired keys, and key events, are kept
    allow_anonymous_sessions: bool = False  # anonymous Supabase sign-ins may manage keys
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))  # who may read /metrics
    # Peers the gateway check answers (GATEWAY_ALLOW), and which scope each route needs (GATEWAY_SCOPE_MAP)
    gateway_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    gateway_routes: RouteMap = field(default_factory=default_routes)
    jwt_secret_generated: bool = field(default=False, compare=False)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def engine(self) -> str:
        """The store's engine: "postgresql" when DATABASE_URL names one, else "sqlite"."""
        return "postgresql" if self.database_url else "sqlite"

    @property
    def database_location(self) -> str:
        """The database, as safe to log: the SQLite path, or the PostgreSQL URL without its
        user, password and query (which may carry a password too)."""
        if not self.database_url:
            return str(self.database_path)
        parts = urlsplit(self.database_url)
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, host + port, parts.path, "", ""))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, sessions: bool = True) -> Settings:
        """Build Settings from environment variables (see the README's table).

        An unset (or empty) APP_ENV is production: development features are on only when asked
        for (`python -m app run`, `mock`, `dev-token` and `seed-demo` ask). `sessions=False` is for commands that never
        verify a session (migrate, backup, set-tier, export, import, seed-demo): they neither
        need SUPABASE_JWT_SECRET nor generate one, and their `jwt_secret` is empty.
        """
        env = os.environ if environ is None else environ
        app_env = env.get("APP_ENV", "").strip().lower() or "production"
        if app_env not in ("development", "production"):
            raise ConfigError(f"APP_ENV must be 'development' or 'production', not {app_env!r}")
        production = app_env == "production"
        database_url = env.get("DATABASE_URL", "") or DEFAULT_DATABASE_URL
        if is_postgresql_url(database_url):
            # PostgreSQL holds the data; data/ still holds the development secret.
            database_path = parse_database_url(DEFAULT_DATABASE_URL)
        else:
            database_path, database_url = parse_database_url(database_url), ""

        secret = env.get("SUPABASE_JWT_SECRET", "") if sessions else ""
        generated = False
        if sessions and not secret:
            if production:
                raise ConfigError("SUPABASE_JWT_SECRET is required in production (APP_ENV unset or production)")
            secret, generated = development_secret(database_path.parent), True
        if sessions and production and len(secret.encode()) < MIN_SECRET_BYTES:
            # The length only: the secret itself is never repeated.
            raise ConfigError(
                f"SUPABASE_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes in production, "
                f"not {len(secret.encode())}: use the project's JWT secret, or `openssl rand -base64 48`"
            )

        # Each default is written once, on its field; production turns the development aids off.
        default = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        return cls(
            jwt_secret=secret,
            database_path=database_path,
            env=app_env,
            host=_host(env, default["host"]),
            port=_port(env, default["port"]),
            validate_responses=_bool(env, "VALIDATE_RESPONSES", default["validate_responses"] and not production),
            cors_origin_regex=env.get("CORS_ORIGIN_REGEX", "" if production else default["cors_origin_regex"]),
            management_limit_per_minute=_int(env, "KEY_MANAGEMENT_LIMIT_PER_MINUTE", default["management_limit_per_minute"]),
            management_limit_per_day=_int(env, "KEY_MANAGEMENT_LIMIT_PER_DAY", default["management_limit_per_day"]),
            max_active_keys=_int(env, "MAX_ACTIVE_KEYS", default["max_active_keys"]),
            log_level=parse_log_level(env.get("LOG_LEVEL", ""), default["log_level"]),
            log_format=parse_log_format(env.get("LOG_FORMAT", ""), default["log_format"]),
            forwarded_allow_ips=parse_forwarded_allow_ips(env.get("FORWARDED_ALLOW_IPS", "")),
            request_read_timeout=_int(env, "REQUEST_READ_TIMEOUT", default["request_read_timeout"]),
            database_url=database_url,
            database_pool_size=_int(env, "DATABASE_POOL_SIZE", default["database_pool_size"]),
            database_timeout_ms=_int(env, "DATABASE_TIMEOUT_MS", default["database_timeout_ms"]),
            cors_origins=_origins(env.get("CORS_ORIGINS", "")),
            cors_allow_headers=_names(env, "CORS_ALLOW_HEADERS", default["cors_allow_headers"]),
            mock_delay_ms=0 if production else _delay(env.get("MOCK_DELAY_MS", ""), default["mock_delay_ms"]),
            key_page=_bool(env, "KEY_PAGE", default["key_page"] and not production),
            docs=_bool(env, "DOCS", default["docs"]),
            contract=_bool(env, "CONTRACT", default["contract"]),
            trusted_hosts=_hosts(env.get("TRUSTED_HOSTS", "")),
            # In production a typo in DATABASE_URL must fail, not start on an empty database.
            create_database=_bool(env, "CREATE_DATABASE", default["create_database"] and not production),
            workers=_int(env, "WEB_CONCURRENCY", default["workers"]),
            max_connections=_int(env, "MAX_CONNECTIONS", default["max_connections"]),
            max_connections_per_client=_int(env, "MAX_CONNECTIONS_PER_CLIENT", default["max_connections_per_client"]),
            key_retention_days=_int(env, "KEY_RETENTION_DAYS", default["key_retention_days"]),
            allow_anonymous_sessions=_bool(env, "ALLOW_ANONYMOUS_SESSIONS", default["allow_anonymous_sessions"]),
            metrics_allow=_networks(env, "METRICS_ALLOW", default["metrics_allow"]),
            gateway_allow=_networks(env, "GATEWAY_ALLOW", default["gateway_allow"]),
            gateway_routes=_route_map(env),
            jwt_secret_generated=generated,
        )


def is_postgresql_url(url: str) -> bool:
    """Whether `url` names a PostgreSQL database; ConfigError if it tries to and is malformed.

    The message never repeats the URL: it may carry a password.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("postgresql", "postgres"):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ConfigError("DATABASE_URL is not a valid postgresql:// URL (bad host or port)") from None
    if not url.lower().startswith(f"{scheme}://") or parts.fragment:
        raise ConfigError("DATABASE_URL must look like 'postgresql://user:password@host:5432/dbname'")
    return True


def parse_database_url(url: str) -> Path:
    """Return the file path of a `sqlite:///relative` or `sqlite:////absolute` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(
            f"DATABASE_URL must look like {DEFAULT_DATABASE_URL!r} or 'postgresql://user@host:5432/dbname'"
        )
    path = url[len(prefix):]
    if path == ":memory:":
        # Every worker and thread would see its own empty database.
        raise ConfigError("DATABASE_URL may not be in-memory: the service needs one shared file")
    return Path(path)


def parse_forwarded_allow_ips(value: str) -> tuple[str, ...]:
    """Return the proxies of a comma-separated list of IP addresses and networks, or `*` alone.

    `*`: whatever connects is one proxy, and only the X-Forwarded-For entry it appended is
    believed (`app.web.clients`), never the ones a client wrote before it.
    """
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if items == ("*",):
        return items
    for item in items:
        try:
            # strict, as gunicorn checks it: 10.0.0.1/8 (host bits set) is a mistake, not 10.0.0.0/8
            ipaddress.ip_network(item)
        except ValueError:
            raise ConfigError(
                f"FORWARDED_ALLOW_IPS must be IP addresses or networks separated by commas, or * alone, not {item!r}"
            ) from None
    return items


def _hosts(raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower().rstrip(".") for h in raw.split(",") if h.strip())
    for host in hosts:
        if not re.fullmatch(r"\*|(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]", host):
            raise ConfigError(f"TRUSTED_HOSTS holds {host!r}: each is a host name, *.domain, an IP address, or * alone")
    return hosts


def _networks(
    env: Mapping[str, str], name: str, default: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = env.get(name)
    if not raw:
        return default
    networks = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            raise ConfigError(f"{name} must be IP addresses or networks separated by commas, not {item!r}") from None
    return tuple(networks)


def _route_map(env: Mapping[str, str]) -> RouteMap:
    """The gateway check's scope map: GATEWAY_SCOPE_MAP's file, or the default one."""
    allow_unmapped = _bool(env, "GATEWAY_ALLOW_UNMAPPED", False)
    path = env.get("GATEWAY_SCOPE_MAP", "").strip()
    if not path:
        return default_routes(allow_unmapped)
    try:
        return load_route_map(Path(path), allow_unmapped)
    except BadRouteMap as error:
        raise ConfigError(f"GATEWAY_SCOPE_MAP: {error}") from None


def development_secret(directory: Path) -> str:
    """Load, or create once, a random development JWT secret kept beside the database."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DEV_SECRET_FILE
    if not path.exists():
        # Written aside and linked into place: several workers starting at once agree on
        # one secret, and none reads a half-written file.
        tmp = directory / f"{DEV_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


# Upper bounds on numbers whose excess harms the machine itself rather than just the service.
MAX_WORKERS = 64  # WEB_CONCURRENCY: gunicorn would fork every one of them at start


def _host(env: Mapping[str, str], default: str) -> str:
    host = env.get("HOST")
    if host is None:
        return default
    if not host.strip():
        # An empty HOST would listen on every interface: say which one is meant.
        raise ConfigError("HOST must name an address to listen on (127.0.0.1, 0.0.0.0, ::, a host name), not ''")
    return host.strip()


def _port(env: Mapping[str, str], default: int) -> int:
    if env.get("PORT") == "":
        # Set but empty is a mistake (a template left unfilled), not a wish for the default.
        raise ConfigError(f"PORT must be a port from 1 to 65535, not ''; leave it unset for {default}")
    return _int(env, "PORT", default)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only, nothing around them: int() would take '٣' (Arabic-Indic three), '1_000'
    # and ' 8000'; and at most 100 of them, for int() refuses over 4,300 with a ValueError of its own.
    if not re.fullmatch(r"-?[0-9]{1,100}", raw, flags=re.ASCII):
        raise ConfigError(f"{name} must be a whole number, not {raw!r}")
    value = int(raw)
    if value < 1 or (name == "PORT" and value > 65535):
        raise ConfigError(f"{name} must be {'a port from 1 to 65535' if name == 'PORT' else 'at least 1'}, not {raw!r}")
    if name == "WEB_CONCURRENCY" and value > MAX_WORKERS:
        raise ConfigError(f"WEB_CONCURRENCY must be from 1 to {MAX_WORKERS} worker processes, not {raw!r}")
    return value


def _field_default(name: str) -> Any:
    """The default written on Settings' field `name`."""
    return next(f.default for f in fields(Settings) if f.name == name)


LOG_LEVELS = tuple(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])


def parse_log_level(raw: str, default: str | None = None) -> str:
    """Return LOG_LEVEL's level (unset: `default`, else the Settings field's); ConfigError if it names none."""
    level = raw.strip().upper() or default or _field_default("log_level")
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return level


LOG_FORMATS = ("text", "json")


def parse_log_format(raw: str, default: str | None = None) -> str:
    """Return LOG_FORMAT's format (unset: `default`, else the Settings field's); ConfigError if it names none."""
    log_format = raw.strip().lower() or default or _field_default("log_format")
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {raw!r}")
    return log_format


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _origins(raw: str) -> tuple[str, ...]:
    """Parse CORS_ORIGINS: exact origins (`scheme://host[:port]`), comma-separated."""
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if not re.fullmatch(r"https?://[^/?#@\s*]+", origin):
            raise ConfigError(f"CORS_ORIGINS holds {origin!r}: each origin is scheme://host[:port], no path, no '*'")
    return origins


def _names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    for header in names:
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header) or header == "*":
            raise ConfigError(f"{name} holds {header!r}, which is not a header name")
    return names


def _delay(raw: str, default: int) -> int:
    if not raw:
        return default
    # ASCII digits only, nothing around them: str.isdigit() admits '²', which int() then refuses.
    if not re.fullmatch(r"[0-9]{1,5}", raw) or int(raw) > MAX_MOCK_DELAY_MS:
        raise ConfigError(f"MOCK_DELAY_MS must be a whole number of milliseconds from 0 to {MAX_MOCK_DELAY_MS}, not {raw!r}")
    return int(raw)
