"""The request's bounds and body: its headers within `HeadLimits` (431), its body read whole,
once, within `max_body_bytes` (413) and `read_timeout` seconds (408).

As the server does before the app exists (`app.web.transport`), for whatever ASGI server is
in front. The whole body is received before anything acts on it, and if the client leaves
first, nothing is done at all (not even authentication, which counts the request against a
rate limit). The body, joined once, is kept in the request's state for the layers that read
it, and passed on in one message. It is then described by its length, as a buffering proxy
passes it on, also when it arrived chunked (Connexion takes a request without
Content-Length for one without a body), and its Content-Type is made unambiguous, so that
only a body declared as JSON is read as JSON (a missing one is not guessed: a cross-site
form or Blob post has none).
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from app.domain.errors import PayloadTooLarge, ServiceError
from app.web.errors import envelope, status_and_code
from app.web.limits import MAX_BODY_BYTES, READ_TIMEOUT_SECONDS, HeadLimits
from app.web.messages import replay, send_json
from app.web.refusals import RequestTimeout
from app.web.state import request_state

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # whose Content-Type is made unambiguous
MISSING_OR_CONFLICTING = b"application/x-missing-or-conflicting-content-type"  # Connexion answers 415


class BodyBoundsMiddleware:
    """Refuse headers over `head_limits`; read the body whole within its bounds, then pass it on."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        head_limits: HeadLimits | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.head_limits = head_limits or HeadLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        headers = scope["headers"]
        try:
            self.head_limits.check_headers(headers)
            length, chunked = _framing(headers)
            if length > self.max_body_bytes:  # refused from the head, not after a wait
                raise _too_large(self.max_body_bytes)
            body = await self._read_body(receive, chunked or length > 0)
        except ServiceError as refusal:
            status, code = status_and_code(refusal)
            await send_json(
                send,
                status,
                envelope(code, refusal.message, refusal.details, state.request_id),
                [(b"connection", b"close")],
            )  # the rest of the request is not read
            return
        state.body = body
        if scope["method"] in BODY_METHODS:
            _normalise_content_type(scope)
        if chunked:
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k not in (b"content-length", b"transfer-encoding")
            ]
            scope["headers"].append((b"content-length", str(len(body)).encode()))
        await self.app(scope, replay(body, receive), send)

    async def _read_body(self, receive: Receive, has_body: bool) -> bytes:
        """Receive the whole body; raise PayloadTooLarge, RequestTimeout or ClientDisconnect."""
        if not has_body:
            # No Content-Length or Transfer-Encoding: no body to wait for, and no timer needed
            # (setting one costs more than the rest of this request's reading).
            return await self._receive_body(receive)
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self._receive_body(receive)
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self.read_timeout:g} s.",
                {"limit_seconds": self.read_timeout},
            ) from None

    async def _receive_body(self, receive: Receive) -> bytes:
        limit, size = self.max_body_bytes, 0
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                if not chunks:
                    return chunk  # the usual case: the whole body in one message, nothing to join
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.", {"limit_bytes": limit})


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """The body's Content-Length (0 if none; the server has refused one that is not digits) and
    whether it has a Transfer-Encoding (the server hands its body on decoded), in one pass."""
    length, chunked = 0, False
    for name, value in headers:
        if name == b"content-length":
            length = int(value) if value.isdigit() else 0
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def _normalise_content_type(scope: Scope) -> None:
    """Lower-case the media type, and mark a missing or contradictory Content-Type as such."""
    values = [v for k, v in scope["headers"] if k == b"content-type"]
    distinct = {_media_type(v) for v in values}
    # None, or two that disagree: neither is guessed at; Connexion answers 415.
    value = _media_type(values[0]) if len(distinct) == 1 else MISSING_OR_CONFLICTING
    scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [(b"content-type", value)]


def _media_type(value: bytes) -> bytes:
    """The media type, lower-cased, and its parameters but `charset`: a JSON body is read as UTF-8.

    RFC 8259 8.1: JSON exchanged between systems is UTF-8, and `application/json` defines no
    charset. Connexion decodes with a declared charset only where it is not the first
    parameter (its split keeps the space after the first `;`): dropped here, whatever its
    place, every body is read alike, and a body that is not UTF-8 is a 400.
    """
    media, _, params = value.partition(b";")
    kept = [p.strip() for p in params.split(b";") if p.strip() and not p.strip().lower().startswith(b"charset=")]
    return media.strip().lower() + (b"; " + b";".join(kept) if kept else b"")
