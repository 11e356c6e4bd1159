"""Where a request carries its credentials: API keys in three places, the session cookie."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

SESSION_COOKIE = "sb-access-token"


def query_may_carry_key(query: str | bytes) -> bool:
    """Whether a query string could hold an `api_key`: one without the name or any escape
    (which could spell it) holds none."""
    if isinstance(query, bytes):
        return b"api_key" in query or b"%" in query
    return "api_key" in query or "%" in query


def presented_keys(scope: dict[str, Any]) -> set[str]:
    """Return every distinct API key the request carries, in any of the three places."""
    query = scope.get("query_string", b"")
    # Read as Starlette reads them (the security handlers see the same values).
    keys = (
        {v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == "api_key"}
        if query_may_carry_key(query)
        else set()
    )
    for name, raw in scope["headers"]:
        if name == b"x-api-key":
            keys.add(raw.decode("latin-1").strip())
        elif name == b"authorization":
            # Split as Connexion's bearer handler splits it (on any whitespace), so that the
            # key it checks is one of those counted here.
            parts = raw.decode("latin-1").split(maxsplit=1)
            if len(parts) == 2 and parts[0].lower() == "bearer":
                keys.add(parts[1].strip())
    return keys


def cookie_values(cookies: str | None, name: str) -> set[str]:
    """Return the distinct values of every cookie called `name`, read as browsers write them.

    Connexion parses the Cookie header with `http.cookies.SimpleCookie`, which raises on
    headers browsers send happily (an empty attribute, a stray `;`).
    """
    values = set()
    for part in (cookies or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.add(value)
    return values
