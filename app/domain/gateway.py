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
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus, unquote_to_bytes, urlsplit

from app.domain.tiers import TIERS

KEY_PARAMETER = "api_key"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OPENAPI_METHODS = {m.lower() for m in METHODS}
SCOPES_EXTENSION = "x-scopes"
KNOWN_SCOPES = frozenset(scope for tier in TIERS.values() for scope in tier.scopes)

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


_CONTROL = re.compile("[\x00-\x1f\x7f]")
_URI_SAFE = re.compile("[\x21-\x7e]*")  # what a URI may carry raw


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
    """The request a proxy asks about, as the check reads it from the proxy's headers.

    `raw_path` and `raw_query` are the client's own, untouched but for dot and empty path
    segments, the api_key pairs, and bytes a URI may not carry raw (non-ASCII, space,
    control), which are percent-encoded (`é` sent raw goes upstream as `%C3%A9`): what goes upstream.
    """

    method: str
    path: str  # canonical: decoded, dot segments resolved, no empty segments; what is matched
    query_keys: tuple[str, ...]  # the values of api_key in the original query
    raw_path: str = "/"  # `path` as the client encoded it
    raw_query: str = ""  # the original query, byte for byte, without its api_key pairs

    @property
    def upstream_path(self) -> str:
        """The path the check matched, encoded as the client encoded it."""
        return self.raw_path

    @property
    def upstream_query(self) -> str:
        """The original query without api_key ("" for none)."""
        return self.raw_query

    @property
    def upstream_uri(self) -> str:
        """The URI to send upstream: the path the check matched and the query without api_key."""
        return self.raw_path + ("?" + self.raw_query if self.raw_query else "")


class UnreadableRequest(Exception):
    """The forwarded method or URI cannot be read; the message says which (`part`)."""

    def __init__(self, message: str, part: str) -> None:
        super().__init__(message)
        self.part = part  # "method" or "uri"


def parse_forwarded(method: str | None, uri: str | None) -> ForwardedRequest:
    """Read the original method and origin-form URI (`/path?query`) a proxy forwarded.

    `uri` is the header's bytes read as latin-1. Only origin-form is read: an absolute URL
    (`http://host/path`) is refused, and a path that starts `//` is a path, never a host.
    """
    if not method or method.upper() not in METHODS:
        raise UnreadableRequest(f"The original method is missing or not one of {', '.join(sorted(METHODS))}.", "method")
    if not uri:
        raise UnreadableRequest("The original URI is missing.", "uri")
    raw_path, _, raw_query = uri.partition("#")[0].partition("?")
    if not raw_path.startswith("/"):
        raise UnreadableRequest("The original URI must be a path ('/...'), not an absolute URL.", "uri")
    resolved = resolve_raw_path(raw_path)
    path = _decode_path(resolved) if resolved is not None else None
    if resolved is None or path is None:
        raise UnreadableRequest(
            "The original path is not a plain path (encoded '/' or '\\', a control character, or not UTF-8).", "uri"
        )
    kept, keys = split_query(raw_query)
    return ForwardedRequest(method.upper(), path, keys, _escape_raw(resolved), _escape_raw(kept))


def _escape_raw(text: str) -> str:
    """Percent-encode the bytes a URI may not carry raw; leave every other character, escapes included."""
    if _URI_SAFE.fullmatch(text):
        return text
    try:
        data = text.encode("latin-1")  # a header's bytes
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    return "".join(chr(b) if 0x20 < b < 0x7F else f"%{b:02X}" for b in data)


def split_query(raw: str) -> tuple[str, tuple[str, ...]]:
    """Remove the api_key pairs from a raw query, textually; return the rest and their values.

    Every other byte stays as sent: no pair is decoded and encoded again.
    """
    kept, keys = [], []
    for pair in raw.split("&") if raw else ():
        name, _, value = pair.partition("=")
        if unquote_plus(name) == KEY_PARAMETER:
            keys.append(unquote_plus(value))
        else:
            kept.append(pair)
    return "&".join(kept), tuple(keys)


def resolve_raw_path(raw: str) -> str | None:
    """Resolve dot segments and drop empty ones in a still-encoded path; None if ambiguous.

    An encoded slash or backslash could be read one way here and another way upstream:
    refused rather than guessed. Other escapes are kept as the client wrote them.
    """
    if not raw.startswith("/"):
        return None
    if "%" not in raw and "\\" not in raw and "//" not in raw and "/." not in raw:
        return raw  # nothing to resolve: no escape, no empty or dot segment
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw:
        return None
    segments: list[str] = []
    for segment in raw.split("/"):
        dots = unquote(segment)
        if dots in ("", "."):
            continue
        if dots == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    resolved = "/" + "/".join(segments)
    last = unquote(raw.rsplit("/", 1)[-1])
    if segments and (raw.endswith("/") or last in (".", "..")):
        resolved += "/"
    return resolved


def _decode_path(raw: str) -> str | None:
    if "%" not in raw and raw.isascii():
        return None if _CONTROL.search(raw) else raw
    try:
        data = raw.encode("latin-1")
    except UnicodeEncodeError:  # not from a header: already text
        data = raw.encode("utf-8")
    try:
        decoded = unquote_to_bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(decoded) else decoded


def canonical_path(raw: str) -> str | None:
    """Return `raw` decoded, dot segments resolved and empty segments removed; None if ambiguous."""
    resolved = resolve_raw_path(raw)
    return _decode_path(resolved) if resolved is not None else None


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
