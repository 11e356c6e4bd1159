"""What the development server adds for frontend developers: `Prefer` and latency.

`Prefer: code=NNN` answers a routed operation with a status its contract documents for it,
as the contract documents it (the `Error` envelope with a realistic code and message, the
documented headers such as `Retry-After`, `X-RateLimit-*` and `RateLimit`), without authenticating or
doing the operation; `Prefer: example=NAME` answers with one of its named examples;
`Prefer: delay=MS` (and the `MOCK_DELAY_MS` setting) waits first. None of it exists in
production: the factory does not install this middleware there, so the header is ignored.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import MAX_MOCK_DELAY_MS
from app.domain import keymaterial
from app.domain.errors import InvalidParameter
from app.domain.keys import rfc3339
from app.domain.ratelimit import DAY, MINUTE, Decision, Limits, WindowState
from app.domain.tiers import TIERS
from app.web.contract import ContractIndex
from app.web.errors import envelope
from app.web.ratelimit_headers import rate_limit_headers
from app.web.state import request_state

# The preferences this server acts on; any other (`return=minimal`, `respond-async`) is ignored (RFC 7240).
KNOWN_PREFERENCES = ("code", "example", "delay")
# One of them as the contract writes it: NAME=VALUE, no space around `=`, a token or a quoted string.
KNOWN_PREFERENCE = re.compile(r'^\s*(code|example|delay)=("[^"]*"|[^\s",;]+)\s*$', re.IGNORECASE)
PREFERENCE_NAME = re.compile(r"^\s*([A-Za-z-]+)")
DIGITS = "^[0-9]+$"  # `delay` and `code`: ASCII digits only

# Realistic answers per status: the codes and messages this server really sends.
SESSION_ERRORS: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: ("invalid_parameter", "name is invalid: must be at most 100 characters.",
          {"field": "name", "in": "body", "constraint": "maxLength", "expected": 100}),
    401: ("missing_session", "A session is required: sign in (the sb-access-token cookie).", {}),
    403: ("origin_not_allowed", "This request came from a page on 'https://evil.example', which may not change "
          "keys with this account's session.", {"header": "Origin", "origin": "https://evil.example"}),
    404: ("key_not_found", "No API key with this id exists for this account.", {}),
    409: ("duplicate_name", "An active API key named 'prod-splunk-2026q2' already exists.", {"field": "name"}),
    413: ("payload_too_large", "The request body is larger than 65536 bytes.", {"limit_bytes": 65536}),
    415: ("unsupported_media_type", "Request body must be JSON (Content-Type: application/json).", {}),
    429: ("rate_limit_exceeded", "", {}),  # message and details made per request
    500: ("internal_error", "An unexpected error occurred.", {}),
    503: ("service_unavailable", "The key store is unavailable; retry shortly.", {}),
}
KEY_ERRORS = {
    **SESSION_ERRORS,
    400: ("invalid_parameter", "limit is invalid: must be at most 100.",
          {"field": "limit", "in": "query", "constraint": "maximum", "expected": 100}),
    401: ("missing_api_key", 'API key is required. Include it in the Authorization header as "Bearer sk_live_..."', {}),
    403: ("insufficient_scope", "This API key lacks the scope required by this operation: taxii:read (its scopes in "
          "force: iocs:read, statistics:read, articles:read, lookup:read, export:json, export:csv; tier free).",
          {"required_scopes": ["taxii:read"], "missing_scopes": ["taxii:read"]}),
}
# A time as the contract's examples write them (RFC 3339, UTC).
EXAMPLE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z$")
# Fields of an example that say when something will happen; any other time says when it did.
FUTURE_TIMES = frozenset({"expires_at", "reset"})
# API-key operations answer as for a free key (10 a minute, 1,000 a day).
FREE_TIER_LIMITS = Limits(TIERS["free"].per_minute, TIERS["free"].per_day)


def preferences(headers: Headers) -> dict[str, str]:
    """Return the request's `Prefer` preferences this server knows (RFC 7240), names lower-cased.

    Preferences are separated by commas; a semicolon, which in RFC 7240 starts a preference's
    parameters, also separates two of these (`code=429; example=day` means what it looks like).
    These take no parameters: a known preference written otherwise than NAME=VALUE (`delay= 5`,
    `delay=5;foo`, `delay`) is a 400 rather than silently read some other way.
    """
    found: dict[str, str] = {}
    for header in headers.getlist("prefer"):
        for preference in header.split(","):
            parts = preference.split(";")
            owner = _known_name(parts[0])
            for part in parts:
                name = _known_name(part)
                if name is None and owner is None:
                    continue  # another preference's (or its parameters): not this server's
                match = KNOWN_PREFERENCE.match(part)
                if match is None:
                    shown = shown_value(preference.strip())
                    raise InvalidParameter(
                        f"Prefer: {shown} is not written as this server reads it: NAME=VALUE for code, example "
                        "and delay, no space around '=', no parameters (Prefer: code=429, delay=1500).",
                        {"field": "Prefer", "in": "header", "constraint": "pattern",
                         "expected": KNOWN_PREFERENCE.pattern},
                    )
                found.setdefault(match.group(1).lower(), match.group(2).strip('"'))
    return found


def _known_name(part: str) -> str | None:
    match = PREFERENCE_NAME.match(part)
    name = match.group(1).lower() if match else None
    return name if name in KNOWN_PREFERENCES else None


def shown_value(raw: str, limit: int = 40) -> str:
    """A header value as the client wrote it, for a message: its bytes read as UTF-8 where they are.

    Header bytes arrive as Latin-1 text (one character a byte); a client that typed `２００`
    sent UTF-8, which read as Latin-1 would be echoed as mojibake.
    """
    try:
        text = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        text = raw
    return text[:limit]


def sample(schema: dict[str, Any], now: float) -> Any:
    """Return a value valid against `schema`, from its examples where it has them."""
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = sample(part, now)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    if "example" in schema:
        return schema["example"]
    if schema.get("nullable"):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = schema.get("required")
        return {
            name: sample(sub, now) for name, sub in schema.get("properties", {}).items()
            if required is None or name in required or "example" in sub
        }
    if kind == "array":
        return [sample(schema.get("items", {}), now)]
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return False
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "uuid":
            return str(uuid.uuid4())
        if fmt == "date-time":
            return rfc3339(int(now * 1_000_000))
        return "string"
    return None


class PreferMiddleware:
    """Force an operation's documented answer, a named example, or latency (development only)."""

    def __init__(self, app: ASGIApp, contract: ContractIndex, delay_ms: int = 0,
                 management_limits: Limits | None = None, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.clock = clock  # the service's: forced answers' times agree with what it would answer
        self.contract = contract
        self.delay_ms = delay_ms
        self.management_limits = management_limits or Limits(120, 10_000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        operation = scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id")
        prefer = preferences(Headers(scope=scope)) if operation else {}
        delay = self._delay(prefer) if "delay" in prefer else self.delay_ms
        if delay and operation:
            await asyncio.sleep(delay / 1000)  # on the loop, never blocking it
        if operation and ("code" in prefer or "example" in prefer):
            await self._forced(scope, send, operation, prefer)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _delay(prefer: dict[str, str]) -> int:
        raw = prefer["delay"]
        # ASCII digits only: str.isdigit() admits '²', which int() refuses.
        if not (raw.isascii() and raw.isdigit()):
            raise InvalidParameter(
                f"Prefer: delay={shown_value(raw)} is not a whole number of milliseconds in ASCII digits "
                f"(0 to {MAX_MOCK_DELAY_MS}).",
                {"field": "Prefer", "in": "header", "constraint": "pattern", "expected": DIGITS},
            )
        # Compared as text first: int() refuses 4,300 digits and more.
        if len(raw.lstrip("0")) > len(str(MAX_MOCK_DELAY_MS)) or int(raw) > MAX_MOCK_DELAY_MS:
            raise InvalidParameter(
                f"Prefer: delay={raw[:20]} is more than {MAX_MOCK_DELAY_MS} milliseconds.",
                {"field": "Prefer", "in": "header", "constraint": "maximum", "expected": MAX_MOCK_DELAY_MS},
            )
        return int(raw)

    async def _forced(self, scope: Scope, send: Send, operation: str, prefer: dict[str, str]) -> None:
        responses = self.contract.responses(operation)
        documented = sorted(responses)
        if "code" in prefer:
            code = prefer["code"]
            if not (code.isascii() and code.isdigit()):
                raise InvalidParameter(
                    f"Prefer: code={shown_value(code)} is not a status code in ASCII digits; {operation} "
                    f"documents {', '.join(documented)}.",
                    {"field": "Prefer", "in": "header", "constraint": "pattern", "expected": DIGITS},
                )
            if code not in responses:
                raise InvalidParameter(
                    f"Prefer: code={code[:10]} is not a status {operation} documents; it documents "
                    f"{', '.join(documented)}.",
                    {"field": "Prefer", "in": "header", "constraint": "enum", "expected": [int(c) for c in documented]},
                )
            candidates = [code]
        else:
            candidates = documented
        name = prefer.get("example")
        body: Any = None
        media_type = "application/json"
        chosen = None
        if name is not None:
            for code in candidates:
                examples = _examples(responses[code])
                if name in examples:
                    chosen, (media_type, body) = code, examples[name]
                    break
            if chosen is None:
                named = sorted({n for c in candidates for n in _examples(responses[c])})
                raise InvalidParameter(
                    f"Prefer: example={shown_value(name)} is not an example {operation} documents"
                    + (f" for {candidates[0]}" if "code" in prefer else "")
                    + (f"; it names {', '.join(named)}." if named else "; it names none."),
                    {"field": "Prefer", "in": "header", "constraint": "enum", "expected": named},
                )
        else:
            chosen = candidates[0]
        status = int(chosen)
        now = self.clock()
        request_id = request_state(scope).request_id
        if status < 300 and status != 204 and body is None:
            # The first named example (each success documents one), else the schema's sample.
            media_type, body = next(iter(_examples(responses[chosen]).values()), (media_type, None))
            if body is None:
                media = _media(responses[chosen])
                body = media.get("example", sample(media.get("schema", {}), now))
        stated = _stated_windows(body) if status < 300 else None
        # A 429's refusing window (a named example's, else the minute) ends when such a window
        # really does: the minute's end, or the day's at UTC midnight; its details, message and
        # headers all say the same.
        window, example_limit = "minute", None
        example_error = body.get("error") if isinstance(body, dict) else None
        if isinstance(example_error, dict) and isinstance(example_error.get("details", {}).get("retry_after"), int):
            window = example_error["details"].get("window", "minute")
            example_limit = example_error["details"].get("limit")
            example_error = {**example_error, "message": re.sub(
                r"retry after \d+ s", lambda _: f"retry after {_retry_after(window, now)} s", example_error["message"])}
        retry_after = _retry_after(window, now)
        decision = self._decision(operation, now, window if status == 429 else None, retry_after, example_limit, stated)
        headers = self._headers(responses[chosen], decision, retry_after if status == 429 else 1)
        if stated is not None:
            body = _with_windows(body, decision)
        if status < 300:
            body = _with_fresh_keys(_times_from_now(body, now))
        if status == 204:
            raw = b""
        elif isinstance(body, str) and media_type != "application/json":
            raw = body.encode()
        elif body is not None:
            if isinstance(example_error, dict):
                body = {"error": {**example_error, "request_id": request_id}}
                if "retry_after" in example_error.get("details", {}):
                    # A named example's window: its reset from now, as the headers say.
                    body["error"]["details"] = {**body["error"]["details"], "reset": int(now) + retry_after,
                                                "retry_after": retry_after}
            raw = json.dumps(body).encode()
        elif status >= 400:
            table = SESSION_ERRORS if operation in self.contract.cookie_operations else KEY_ERRORS
            code_, message, details = table.get(status, ("bad_request", "Bad request.", {}))
            shown = [value["error"] for _, value in _examples(responses[chosen]).values()]
            if status not in table and "example" in _media(responses[chosen]):
                shown = [_media(responses[chosen])["example"]["error"]]
            if shown and code_ not in {error["code"] for error in shown}:
                # A code this operation cannot send: answer the one its documentation shows.
                code_, message, details = shown[0]["code"], shown[0]["message"], shown[0]["details"]
            if status == 429:
                details = {"window": "minute", "limit": decision.minute.limit, "reset": int(now) + retry_after,
                           "retry_after": retry_after}
                message = f"Rate limit of {details['limit']} requests per minute exceeded; retry after {retry_after} s."
            raw = envelope(code_, message, details, request_id)
        else:
            raw = json.dumps(body).encode()
        start = [(b"content-type", media_type.encode())] if raw else []
        await send({"type": "http.response.start", "status": status, "headers": [
            *start, (b"content-length", str(len(raw)).encode()), *headers]})
        await send({"type": "http.response.body", "body": raw})

    def _decision(self, operation: str, now: float, refused_by: str | None, retry_after: int,
                  example_limit: int | None = None, stated: tuple[WindowState, WindowState] | None = None) -> Decision:
        """A rate-limit decision as the operation's real limits would give it at `now`.

        Admitted: this request counted in both windows. Refused by a window: that window is
        empty and ends `retry_after` seconds from now (and a refusing day empties the minute).
        A named example that states its window's limit is answered with the limits it
        describes (the shared 429 examples are the API keys' tier), so headers and body agree;
        so is a success that states its windows (whoami's tier and counts), their ends from now.
        """
        second = int(now)
        if stated is not None:
            minute_, day_ = stated
            return Decision(allowed=True, at=now, blocked_by=None,
                            minute=WindowState(minute_.limit, minute_.remaining, second - second % MINUTE + MINUTE),
                            day=WindowState(day_.limit, day_.remaining, second - second % DAY + DAY))
        limits = self.management_limits if operation in self.contract.cookie_operations else FREE_TIER_LIMITS
        if refused_by in ("minute", "day") and example_limit is not None:
            limits = next((lim for lim in (limits, FREE_TIER_LIMITS, self.management_limits)
                           if getattr(lim, f"per_{refused_by}") == example_limit), limits)
        minute = WindowState(limits.per_minute, limits.per_minute - 1, second - second % MINUTE + MINUTE)
        day = WindowState(limits.per_day, limits.per_day - 1, second - second % DAY + DAY)
        if refused_by is not None:
            refused = WindowState(minute.limit if refused_by == "minute" else day.limit, 0, second + retry_after)
            minute = refused if refused_by == "minute" else WindowState(minute.limit, 0, minute.reset)
            day = refused if refused_by == "day" else WindowState(day.limit, day.limit - minute.limit, day.reset)
        return Decision(allowed=refused_by is None, minute=minute, day=day, blocked_by=refused_by, at=now)

    @staticmethod
    def _headers(response: dict[str, Any], decision: Decision, retry_after: int) -> list[tuple[bytes, bytes]]:
        documented = {name.lower() for name in response.get("headers", {})}
        values = {**rate_limit_headers(decision), "Retry-After": str(retry_after)}
        # Any other documented header with an `example` (checkRequest's identity headers): that example.
        for name, header in response.get("headers", {}).items():
            if "example" in header and name.lower() not in {n.lower() for n in values}:
                values[name] = str(header["example"])
        return [(name.lower().encode(), value.encode()) for name, value in values.items() if name.lower() in documented]


def _retry_after(window: str, now: float) -> int:
    """Whole seconds from `now` to the end of the current `window` (`minute`, or `day`: UTC midnight)."""
    second = int(now)
    length = DAY if window == "day" else MINUTE
    return second - second % length + length - second


def _times_from_now(body: Any, now: float) -> Any:
    """`body` with every time it shows moved by one offset, so that the latest past event in it is `now`.

    An example is written at some moment: its `created_at`, `last_used_at`, `revoked_at` and
    `occurred_at` are before it, an active key's `expires_at` after it. Moved together, they
    keep their order and their distances, and an active key has not expired, nor a roll's
    grace period ended, whenever the example is forced. A body with no past time (an expired
    key's error details) is moved so that its latest time is now.
    """
    found: list[tuple[str, int]] = []

    def collect(value: Any, name: str = "") -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                collect(item, key)
        elif isinstance(value, list):
            for item in value:
                collect(item, name)
        elif isinstance(value, str) and EXAMPLE_TIME.match(value):
            found.append((name, _microseconds(value)))

    collect(body)
    if not found:
        return body
    past = [us for name, us in found if name not in FUTURE_TIMES] or [us for _, us in found]
    offset = int(now * 1_000_000) - max(past)

    def shift(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: shift(item) for key, item in value.items()}
        if isinstance(value, list):
            return [shift(item) for item in value]
        if isinstance(value, str) and EXAMPLE_TIME.match(value):
            return rfc3339(_microseconds(value) + offset)
        return value

    return shift(body)


def _microseconds(text: str) -> int:
    moment = datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z" if "." in text else "%Y-%m-%dT%H:%M:%S%z")
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _media(response: dict[str, Any]) -> dict[str, Any]:
    return response.get("content", {}).get("application/json", {})


def _examples(response: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """A response's named examples, whatever their media type: name to (media type, value)."""
    return {name: (media_type, example["value"]) for media_type, media in response.get("content", {}).items()
            for name, example in media.get("examples", {}).items()}


def _stated_windows(body: Any) -> tuple[WindowState, WindowState] | None:
    """The rate-limit windows a success body states (whoami's `data.rate_limit`), if any."""
    data = body.get("data") if isinstance(body, dict) else None
    windows = data.get("rate_limit") if isinstance(data, dict) else None
    if not isinstance(windows, dict):
        return None
    minute, day = windows["minute"], windows["day"]
    return (WindowState(minute["limit"], minute["remaining"], minute["reset"]),
            WindowState(day["limit"], day["remaining"], day["reset"]))


def _with_windows(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """`body` with its stated windows as `decision` has them (their ends from now), as its headers say."""
    windows = {name: {"limit": state.limit, "remaining": state.remaining, "reset": state.reset}
               for name, state in (("minute", decision.minute), ("day", decision.day))}
    return {**body, "data": {**body["data"], "rate_limit": windows}}


def _with_fresh_keys(value: Any) -> Any:
    """`value` with each key it shows freshly minted, in the real format, and its preview to match.

    The contract's examples show a placeholder (a real-format key in a committed file would
    be flagged by secret scanners); a client under development gets one it can parse.
    """
    if isinstance(value, list):
        return [_with_fresh_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    value = {name: _with_fresh_keys(item) for name, item in value.items()}
    if isinstance(value.get("key"), str) and value["key"].startswith(keymaterial.PREFIX):
        secret = keymaterial.generate()
        value["key"] = secret
        if "full_key" in value:
            value["full_key"] = secret
        if "key_preview" in value:
            value["key_preview"] = keymaterial.preview(secret)
    return value
