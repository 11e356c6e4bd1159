"""The gateway check's rules: which scope a route of the Threat Intelligence API needs.

A reverse proxy (nginx `auth_request`, Caddy `forward_auth`, Traefik ForwardAuth) asks this
service whether a request may pass; the answer depends on the key (`app.domain.keys`,
`app.domain.grants`) and on the route, mapped here to the scopes it needs:

- the default map (`DEFAULT_ROUTES`) covers the vendor's areas, for GET and HEAD;
- a file replaces it: a plain map (`{"routes": {"GET,HEAD /api/v1/iocs/**": "iocs:read"}}`,
  first match wins) or the upstream's own OpenAPI document (each operation's `security`
  scopes, or its `x-scopes` where the OpenAPI version forbids scopes on API-key schemes);
- a route in no map is refused unless unmapped routes are allowed (fail closed by default).

Paths are matched in one canonical form (`canonical_path`), the one the proxy then sends
upstream, so that what is checked is what the upstream serves.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from app.domain.tiers import TIERS

KEY_PARAMETER = "api_key"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OPENAPI_METHODS = {m.lower() for m in METHODS}
SCOPES_EXTENSION = "x-scopes"
KNOWN_SCOPES = frozenset(scope for tier in TIERS.values() for scope in tier.scopes)
# Characters kept as they are when a decoded path is encoded again (RFC 3986 pchar and "/").
PATH_SAFE = "/:@!$&'()*+,;=-._~"

# The vendor's areas (its tags: IOCs, Statistics, Articles, Lookup, Export Formats, Detection
# Rules, TAXII under /api/taxii2/), read-only: any other method is refused unless mapped.
DEFAULT_ROUTES: dict[str, str | None] = {
    "GET,HEAD /api/v1/iocs/**": "iocs:read",
    "GET,HEAD /api/v1/statistics/**": "statistics:read",
    "GET,HEAD /api/v1/articles/**": "articles:read",
    "GET,HEAD /api/v1/lookup/**": "lookup:read",
    **{
        f"GET,HEAD /api/v1/export/{fmt}/**": f"export:{fmt}"
        for fmt in ("json", "csv", "stix", "misp", "cef", "openioc", "sigma")
    },
    "GET,HEAD /api/v1/detection-rules/**": "detection-rules:read",
    "GET,HEAD /api/taxii2/**": "taxii:read",
}


class BadRouteMap(Exception):
    """A scope map file cannot be used; the message says where and why, on one line."""


@dataclass(frozen=True)
class Route:
    """One entry of a scope map: the methods and path it covers, and the scopes it needs."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    scopes: tuple[str, ...]  # all of them needed; () for any valid key
    name: str  # as written in the map, for answers and logs

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and self.pattern.fullmatch(path) is not None


@dataclass(frozen=True)
class RouteMap:
    """Which scopes each route needs, and what to do with a route it does not name."""

    routes: tuple[Route, ...]
    source: str = "default"
    allow_unmapped: bool = False

    def route_for(self, method: str, path: str) -> Route | None:
        """Return the first route that covers `method` on the canonical `path`, or None."""
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None


@dataclass(frozen=True)
class ForwardedRequest:
    """The request a proxy asks about, as the check reads it from the proxy's headers."""

    method: str
    path: str  # canonical: decoded, dot segments resolved, no empty segments
    query: tuple[tuple[str, str], ...]  # without any api_key parameter
    query_keys: tuple[str, ...]  # the values of api_key in the original query

    @property
    def upstream_path(self) -> str:
        """The canonical path, encoded: the one the check matched, for the proxy to send upstream."""
        return quote(self.path, safe=PATH_SAFE)

    @property
    def upstream_query(self) -> str:
        """The original query without api_key ("" for none)."""
        return urlencode(self.query, quote_via=quote)

    @property
    def upstream_uri(self) -> str:
        """The URI to send upstream: the canonical path, encoded, and the query without api_key."""
        query = self.upstream_query
        return self.upstream_path + ("?" + query if query else "")


class UnreadableRequest(Exception):
    """The forwarded method or URI cannot be read; the message says which."""


def parse_forwarded(method: str | None, uri: str | None) -> ForwardedRequest:
    """Read the original method and URI (`/path?query`, or an absolute URL) a proxy forwarded."""
    if not method or method.upper() not in METHODS:
        raise UnreadableRequest(f"The original method is missing or not one of {', '.join(sorted(METHODS))}.")
    if not uri:
        raise UnreadableRequest("The original URI is missing.")
    parts = urlsplit(uri)
    path = canonical_path(parts.path)
    if path is None:
        raise UnreadableRequest("The original path is not a plain path (encoded '/' or '\\', or a control character).")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = tuple((k, v) for k, v in pairs if k != KEY_PARAMETER)
    keys = tuple(v for k, v in pairs if k == KEY_PARAMETER)
    return ForwardedRequest(method.upper(), path, query, keys)


def canonical_path(raw: str) -> str | None:
    """Return `raw` decoded, dot segments resolved and empty segments removed; None if ambiguous.

    An encoded slash or backslash, or a control character, could be read one way here and
    another way upstream: refused rather than guessed.
    """
    if not raw.startswith("/"):
        return None
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw:
        return None
    try:
        decoded = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        return None
    normalised = posixpath.normpath(decoded)
    normalised = "/" + normalised.lstrip("/")  # normpath keeps a leading "//"
    if normalised != "/" and decoded.endswith("/"):
        normalised += "/"
    return normalised


def compile_pattern(path: str) -> re.Pattern[str]:
    """Compile a map's path: `{name}` or `*` is one segment, a final `/**` the rest (or nothing)."""
    rest = path.endswith("/**")
    if rest:
        path = path[: -len("/**")]
    regex = ""
    for piece in re.split(r"(\{[^/{}]+\}|\*)", path):
        if piece == "*" or (piece.startswith("{") and piece.endswith("}")):
            regex += "[^/]+"
        else:
            regex += re.escape(piece)
    return re.compile(regex + ("(?:/.*)?" if rest else "/?"))


def default_routes(allow_unmapped: bool = False) -> RouteMap:
    """The default map, covering the vendor's areas."""
    return plain_map(DEFAULT_ROUTES, "default", allow_unmapped)


def plain_map(entries: Mapping[str, Any], source: str, allow_unmapped: bool = False) -> RouteMap:
    """Build a map from `"METHODS /path": scope` entries (a scope, a list of scopes, or null)."""
    routes = []
    for name, scopes in entries.items():
        methods_text, _, path = str(name).strip().partition(" ")
        methods = frozenset(m.strip().upper() for m in methods_text.split(","))
        if methods == {"*"}:
            methods = METHODS
        if not path.strip().startswith("/") or not methods <= METHODS:
            raise BadRouteMap(
                f"{source}: route {name!r} must be 'METHODS /path' (methods from {', '.join(sorted(METHODS))}, or *)"
            )
        routes.append(Route(methods, compile_pattern(path.strip()), _scopes(scopes, source, name), str(name)))
    return RouteMap(tuple(routes), source, allow_unmapped)


def openapi_map(document: Mapping[str, Any], source: str, allow_unmapped: bool = False) -> RouteMap:
    """Build a map from an OpenAPI document: each operation's `x-scopes`, or its `security` scopes.

    Paths are prefixed with the path of the first server's URL. Of several security
    requirements (alternatives), the first that names scopes is taken; none: any valid key.
    """
    servers = document.get("servers") or [{}]
    base = urlsplit(str(servers[0].get("url", "")) if isinstance(servers[0], dict) else "").path.rstrip("/")
    default_security = document.get("security", [])
    paths = document.get("paths")
    if not isinstance(paths, dict):
        raise BadRouteMap(f"{source}: an OpenAPI document needs a 'paths' object")
    routes = []
    for path, item in paths.items():
        if not isinstance(item, dict) or not str(path).startswith("/"):
            raise BadRouteMap(f"{source}: path {path!r} is not a path item")
        for method, operation in item.items():
            if method not in OPENAPI_METHODS or not isinstance(operation, dict):
                continue
            name = f"{method.upper()} {base}{path}"
            if SCOPES_EXTENSION in operation:
                scopes = _scopes(operation[SCOPES_EXTENSION], source, name)
            else:
                scopes = _security_scopes(operation.get("security", default_security), source, name)
            routes.append(Route(frozenset({method.upper()}), compile_pattern(base + path), scopes, name))
    return RouteMap(tuple(routes), source, allow_unmapped)


def load_route_map(path: Path, allow_unmapped: bool = False) -> RouteMap:
    """Read a scope map file (JSON, or YAML by its suffix): a plain map or an OpenAPI document."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadRouteMap(
            f"{path}: cannot be read ({error.__class__.__name__}: {getattr(error, 'strerror', None) or error})"
        ) from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except ValueError as error:  # json.JSONDecodeError, and yaml.YAMLError below
        raise BadRouteMap(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None
    except Exception as error:  # yaml.YAMLError: its message spans lines
        raise BadRouteMap(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(document, dict):
        raise BadRouteMap(f"{path}: must hold an object with 'routes', or an OpenAPI document")
    if "openapi" in document or "swagger" in document:
        return openapi_map(document, str(path), allow_unmapped)
    routes = document.get("routes")
    if not isinstance(routes, dict) or not routes:
        raise BadRouteMap(f"{path}: must hold a non-empty 'routes' object, or be an OpenAPI document")
    return plain_map(routes, str(path), allow_unmapped)


def _scopes(value: Any, source: str, name: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items: Iterable[Any] = [value] if isinstance(value, str) else value if isinstance(value, list) else [None]
    scopes = tuple(items)
    for scope in scopes:
        if not isinstance(scope, str) or scope not in KNOWN_SCOPES:
            raise BadRouteMap(
                f"{source}: route {str(name)!r} names scope {scope!r}, which no tier grants "
                f"(known: {', '.join(sorted(KNOWN_SCOPES))})"
            )
    return scopes


def _security_scopes(security: Any, source: str, name: str) -> tuple[str, ...]:
    if not isinstance(security, list):
        raise BadRouteMap(f"{source}: {name}: 'security' must be a list")
    for requirement in security:
        if not isinstance(requirement, dict):
            raise BadRouteMap(f"{source}: {name}: each security requirement must be an object")
        scopes = [scope for listed in requirement.values() for scope in (listed or [])]
        if scopes:
            return _scopes(scopes, source, name)
    return ()
