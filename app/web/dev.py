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

PREFERENCE = re.compile(r'^\s*([A-Za-z-]+)\s*(?:=\s*("[^"]*"|[^;,\s]*))?')

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
FORCED_RETRY_AFTER_S = 42
# API-key operations answer as for a free key (10 a minute, 1,000 a day).
FREE_TIER_LIMITS = Limits(TIERS["free"].per_minute, TIERS["free"].per_day)


def preferences(headers: Headers) -> dict[str, str]:
    """Return the request's `Prefer` preferences (RFC 7240), names lower-cased."""
    found: dict[str, str] = {}
    for header in headers.getlist("prefer"):
        # Comma between preferences (RFC 7240); a semicolon, which there starts a preference's
        # parameters, is read as one too: `code=429; example=day` means what it looks like.
        for item in re.split(r"[,;]", header):
            match = PREFERENCE.match(item)
            if match and match.group(1):
                found.setdefault(match.group(1).lower(), (match.group(2) or "").strip('"'))
    return found


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
                 management_limits: Limits | None = None) -> None:
        self.app = app
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
        # ASCII digits only, and few: str.isdigit() admits '²', and int() refuses both it and 4,300 digits.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 5) or int(raw) > MAX_MOCK_DELAY_MS:
            raise InvalidParameter(
                f"Prefer: delay must be a whole number of milliseconds from 0 to {MAX_MOCK_DELAY_MS}.",
                {"field": "Prefer", "in": "header", "constraint": "maximum", "expected": MAX_MOCK_DELAY_MS},
            )
        return int(raw)

    async def _forced(self, scope: Scope, send: Send, operation: str, prefer: dict[str, str]) -> None:
        responses = self.contract.responses(operation)
        documented = sorted(responses)
        if "code" in prefer:
            code = prefer["code"]
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
                    f"Prefer: example={name[:40]} is not an example {operation} documents"
                    + (f" for {candidates[0]}" if "code" in prefer else "")
                    + (f"; it names {', '.join(named)}." if named else "; it names none."),
                    {"field": "Prefer", "in": "header", "constraint": "enum", "expected": named},
                )
        else:
            chosen = candidates[0]
        status = int(chosen)
        now = time.time()
        request_id = request_state(scope).request_id
        if status < 300 and status != 204 and body is None:
            # The first named example (each success documents one), else the schema's sample.
            media_type, body = next(iter(_examples(responses[chosen]).values()), (media_type, None))
            if body is None:
                media = _media(responses[chosen])
                body = media.get("example", sample(media.get("schema", {}), now))
        stated = _stated_windows(body) if status < 300 else None
        # A 429's refusing window ends `retry_after` seconds from now: a named example's
        # figure, else FORCED_RETRY_AFTER_S; its details and headers all say the same.
        window, retry_after, example_limit = "minute", FORCED_RETRY_AFTER_S, None
        example_error = body.get("error") if isinstance(body, dict) else None
        if isinstance(example_error, dict) and isinstance(example_error.get("details", {}).get("retry_after"), int):
            window = example_error["details"].get("window", "minute")
            retry_after = example_error["details"]["retry_after"]
            example_limit = example_error["details"].get("limit")
        decision = self._decision(operation, now, window if status == 429 else None, retry_after, example_limit, stated)
        headers = self._headers(responses[chosen], decision, retry_after if status == 429 else 1)
        if stated is not None:
            body = _with_windows(body, decision)
        if status < 300:
            body = _with_fresh_keys(body)
        if status == 204:
            raw = b""
        elif isinstance(body, str) and media_type != "application/json":
            raw = body.encode()
        elif body is not None:
            if isinstance(example_error, dict):
                body = {"error": {**example_error, "request_id": request_id}}
                if status == 429 and "retry_after" in example_error.get("details", {}):
                    # A named example's window: its reset from now, as the headers say.
                    body["error"]["details"] = {**body["error"]["details"], "reset": int(now) + retry_after}
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
