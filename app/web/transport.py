"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, with bounds on the request head.

Both `python -m app run` and `serve`'s workers use it. uvicorn picks httptools when it is
installed, and its protocol bounds neither the request target, nor the size or number of
headers, nor the time a head takes to arrive. httptools gathers a header's value by
concatenating what arrives, so a 64 MB header costs a worker 64 MB and quadratic copying
before any application code runs. (gunicorn's `--limit-request-*` settings bind only its
own parsers, not uvicorn's; uvicorn's h11 protocol has one bound, on the whole head, and
costs more per request.) This subclass enforces `HeadLimits` while the head is parsed:

- it parses no more of a head than `HeadLimits.head` bytes, so a worker never holds more;
- it refuses a target over `request_target` (414), and a header over `header`, headers over
  `headers` in all or more than `header_count` of them (431);
- a head must arrive whole within `read_timeout` of its first byte (more exactly, of the end
  of the first read that did not complete it), or of the connection's opening for its first
  request (408; a connection that sent nothing is simply closed);
- a worker holds at most so many connections, and one client address so many of them
  (`app.web.connections`): past a bound, an idle connection of the client holding the most
  (at the worker's bound, one whose head has not arrived whole, too) is closed, or the new one is.
- no upgrade is taken (both servers run uvicorn with ws="none"): a request asking for one is
  answered as the HTTP request it also is, without uvicorn's warnings, and what follows it is
  read as HTTP; one with a body is refused (400), since httptools skips that body.

A refusal is answered in the contract's envelope, with a request id, `Connection: close`
and an access-log line, as the application would answer; the application never sees the
request. The body's bounds (size, read time) are the application's: `app.web.bounds`.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any, ClassVar

import httptools

from app.domain.errors import ServiceError
from app.web.access import NO_ROUTE, client_field, log_access, new_request_id
from app.web.connections import ConnectionLimits, ConnectionTable
from app.web.errors import envelope, status_and_code
from app.web.headers import stamp
from app.web.limits import HeadLimits
from app.web.refusals import HeadersTooLarge, RequestTargetTooLong, RequestTimeout
from app.web.state import RequestState
from app.web.uvicorn_tuning import HookedHttpToolsProtocol

# After a refusal, what the client is still sending is read and dropped for this long (or
# this much) before the connection is closed: closing with unread data resets the
# connection, and a client still writing its oversized head would never read the answer.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024


# A Host: a DNS name (a trailing dot, `_` allowed) or IPv4 address, or an IPv6 literal, with an
# optional port. Stricter than RFC 3986's reg-name, which admits `,;=!$&'()*+` and %-escapes:
# no name a client resolves has them, and a Host a check reads one way and a URL parser
# another (`evil.com/.example.com`) is refused instead.
HOST = re.compile(rb"\A(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*)(?::[0-9]{1,5})?\Z")
DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}


def _authority(value: bytes, scheme: bytes) -> bytes:
    """An authority compared as a client means it: any case, no trailing dot, no default port."""
    value = value.strip().lower()
    name, colon, port = value.rpartition(b":")
    if not colon or b"]" in port:  # no port (an IPv6 literal's colons are inside its brackets)
        name, port = value, b""
    if port == DEFAULT_PORTS.get(scheme):
        port = b""
    return name.rstrip(b".") + (b":" + port if port else b"")


class BoundedHttpToolsProtocol(HookedHttpToolsProtocol):
    """uvicorn's httptools protocol enforcing `limits` on every request head.

    Written against the hooks of `app.web.uvicorn_tuning.HookedHttpToolsProtocol`, which alone
    touches uvicorn's internals.
    """

    limits: ClassVar[HeadLimits] = HeadLimits()
    # This worker's open connections: one table per class `protocol_class` makes.
    open_connections: ClassVar[ConnectionTable] = ConnectionTable(ConnectionLimits())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the next bytes belong to a request head
        self._head_begun = False  # the parser has seen that head begin
        self._head_room = self.limits.head  # bytes that head may still take
        self._heads = 0  # heads parsed whole on this connection
        self._header_count = 0
        self._header_bytes = 0
        self._method = b""  # the method of the head being parsed, once its request line is read
        self._head_timer: Any = None
        self._head_started = 0.0
        self._refused = False
        self._linger_room = LINGER_BYTES
        self._linger_timer: Any = None

    def opened(self) -> None:
        if not self.open_connections.admit(self, self.client[0] if self.client else None):
            self.transport.close()  # past a bound, and nothing idle to close instead
            return
        self._arm_head_timer()

    def closed(self) -> None:
        self.open_connections.release(self)
        self._cancel_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()

    def received(self, data: bytes) -> None:
        if self._refused:
            self._linger_room -= len(data)
            if self._linger_room < 0:
                self.transport.close()
            return
        if not self._in_head:
            self.feed(data)
            return
        if len(data) <= self._head_room:
            self._head_room -= len(data)
            self.feed(data)
            if (
                self._in_head
                and self._head_timer is None
                and not self._refused
                and (self._head_begun or self._head_room < self.limits.head)
            ):
                # Part of a head, and no clock running yet (a head that arrives whole in one
                # read, the usual case, never needs one).
                self._arm_head_timer()
            return
        # More than the head may still take: parse only that much. Either the head ends in
        # it, and the rest (a body, a pipelined request) is parsed as usual, or it is too large.
        room, heads = self._head_room, self._heads
        self._head_room = 0
        self.feed(data[:room])
        if self._refused:
            return
        if self._heads == heads:
            limit = self.limits.head
            self._refuse(HeadersTooLarge(f"The request's head is larger than {limit} bytes.", {"limit_bytes": limit}))
            return
        # What follows a completed head in this read is not counted against the next head:
        # at most one read (256 KiB) escapes the bound; the next read is counted again.
        self.feed(data[room:])

    def unreadable(self, raised: BaseException | None) -> None:
        # A request one of the hooks below refuses, or the parser cannot read, is answered in
        # the envelope rather than with uvicorn's plain-text 400.
        refusal = raised
        if not isinstance(refusal, ServiceError):
            if refusal is not None:  # a hook failed: a fault here, not in the request
                self.logger.error("HTTP parser callback failed", exc_info=refusal)
            refusal = ServiceError("The request is not valid HTTP/1.1.")
        self._refuse(refusal)

    def upgrade_declined(self, rest: bytes) -> None:
        # Both servers run with ws="none": no route is a WebSocket, and a request asking to
        # upgrade is answered as the HTTP request it also is. Nothing is wrong: nothing to log
        # (uvicorn would log two WARNING lines, one advising to install a WebSocket library);
        # and what the client sent after it (a pipelined request) is read as HTTP too.
        if rest and not self._refused:
            self.received(rest)

    # For the connection table

    def idle(self) -> bool:
        """Whether the connection is between requests: nothing of one read, nothing being answered."""
        if self._refused:
            return True  # answered already, and about to close
        return (
            self._in_head
            and not self._head_begun
            and self._head_room == self.limits.head
            and not self.answering()
            and not self.queued()
        )

    def waiting(self) -> bool:
        """Whether no request is in flight: idle, or its head begun but not yet whole."""
        if self._refused:
            return True
        return self._in_head and not self.answering() and not self.queued()

    def close(self) -> None:
        """Close the connection (an idle or waiting one, to make room for another)."""
        self.transport.close()

    # Parser hooks

    def head_begun(self) -> None:
        self._head_begun = True
        self._header_count = self._header_bytes = 0
        self._method = b""

    def target_read(self) -> None:
        self._method = self.method()  # the request line's method is read by now
        limit = self.limits.request_target
        if len(self.url) > limit:
            raise RequestTargetTooLong(
                f"The request's path and query are longer than {limit} bytes.", {"limit_bytes": limit}
            )

    def header_read(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._header_count += 1
        self._header_bytes += size
        limits = self.limits
        if size > limits.header or self._header_bytes > limits.headers or self._header_count > limits.header_count:
            limits.check_header(self._header_count, self._header_bytes, size)  # raises the bound broken

    def trailer_read(self, name: bytes, value: bytes) -> None:
        self.header_read(name, value)  # dropped, but bounded as the head's fields are

    def head_complete(self) -> None:
        self._check_framing()
        if self.parser.should_upgrade() and self._declares_body():
            # httptools skips the body of a request asking to upgrade: the application would
            # see none, and the body's bytes would be read as the next request.
            raise ServiceError("A request asking to upgrade the connection (Upgrade) cannot carry a body here.")
        if self._head_timer is not None:
            self._cancel_head_timer()
        self._in_head = False
        self._heads += 1

    def _check_framing(self) -> None:
        """HTTP/1.0 or 1.1; one valid Host; no transfer coding but chunked; in one pass over the headers.

        RFC 9112 3.2: one Host, required in HTTP/1.1, and a target in absolute form names the
        same one. The Host is what TRUSTED_HOSTS and the application read; a second Host, or a
        target's own authority (`GET http://other/ HTTP/1.1`, which a server is to prefer),
        would let a request name one host to the check and another to whatever reads it next.
        RFC 9112 6.1: the parser reads `gzip, chunked` as chunked and would hand on the
        compressed bytes as the body; a coding this server does not undo is refused instead,
        and so is any in HTTP/1.0, which has none (faulty framing).
        """
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ServiceError("This server speaks HTTP/1.1 (and 1.0).")
        hosts: list[bytes] = []
        codings: list[bytes] = []
        for name, value in self.headers:
            if name == b"host":
                hosts.append(value)
            elif name == b"transfer-encoding":
                codings += [coding.strip().lower() for coding in value.split(b",") if coding.strip()]
        if codings and (codings != [b"chunked"] or version == "1.0"):
            raise ServiceError("The request's Transfer-Encoding may only be chunked, in HTTP/1.1: "
                               "this server undoes no other coding.")
        if len(hosts) > 1:
            raise ServiceError("The request names its Host more than once.")
        host = hosts[0].strip() if hosts else None
        if host and not HOST.fullmatch(host):
            raise ServiceError("The request's Host is not a host name or address, with an optional port.")
        if host is None and version == "1.1":
            raise ServiceError("An HTTP/1.1 request must name its Host.")
        if self.url[:1] != b"/" and self.url != b"*":  # absolute form (or the authority of CONNECT)
            self._check_absolute_target(host)

    def _check_absolute_target(self, host: bytes | None) -> None:
        """A target in absolute form is an http(s) URL of the Host's own authority, without user info."""
        scheme, separator, rest = self.url.partition(b"://")
        scheme = scheme.lower()
        if not separator or scheme not in DEFAULT_PORTS:
            if separator:
                raise ServiceError("The request target is not an http or https URL.")
            return  # no URL at all: `target_invalid` answers it
        authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].split(b"#", 1)[0]
        if b"@" in authority:
            raise ServiceError("The request target carries user information, which HTTP does not send.")
        if host is None or _authority(authority, scheme) != _authority(host, scheme):
            raise ServiceError("The request target names another host than its Host header.")
        if rest[len(authority):][:1] != b"/":
            raise ServiceError("The request target in absolute form has no path: send at least `/`.")

    def _declares_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" \t0")):
                return True
        return False

    def target_invalid(self, error: httptools.HttpParserInvalidURLError) -> None:
        # The client's mistake (`CONNECT host:port`, `GET http://[::1`), not a fault here:
        # refused like any other unreadable request, with nothing logged but the access line.
        raise ServiceError("The request target is not a valid URL.") from None

    def message_complete(self) -> None:
        self._in_head = True
        self._head_begun = False
        self._head_room = self.limits.head

    # Time

    def _arm_head_timer(self) -> None:
        self._head_started = time.perf_counter()
        self._head_timer = self.loop.call_later(self.limits.read_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_begun and self._head_room == self.limits.head:
            # Not a byte of a request: an idle connection, not a slow client. Nothing to answer.
            self.transport.close()
            return
        timeout = self.limits.read_timeout
        self._refuse(
            RequestTimeout(f"The request's head did not arrive within {timeout:g} s.", {"limit_seconds": timeout})
        )

    # Refusal

    def _refuse(self, refusal: ServiceError) -> None:
        """Answer `refusal` in the contract's envelope and hang up; the app never sees the request."""
        self._refused = True
        self._cancel_head_timer()
        if self.answering():
            # An earlier request on this connection is still being answered (or, mid-body,
            # this one is: its app sees a disconnect): nothing can be added to that answer.
            self.transport.close()
            return
        request_id = new_request_id()
        status, code = status_and_code(refusal)
        body = envelope(code, refusal.message, refusal.details, request_id)
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
        stamp(start, RequestState(request_id))
        # An answer to HEAD has no content (RFC 9110 9.3.2): its Content-Length is that of the GET's.
        self.write_response(status, start["headers"], b"" if self._method == b"HEAD" else body)
        log_access(
            request_id,
            "-",
            NO_ROUTE,
            status,
            time.perf_counter() - self._head_started,
            client_field(self.client),
            error_code=code,
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)


def protocol_class(read_timeout: float, connections: ConnectionLimits | None = None) -> type[BoundedHttpToolsProtocol]:
    """Return the protocol class for uvicorn's `http` setting, with this head read timeout and these connection bounds."""
    limits = replace(HeadLimits(), read_timeout=read_timeout)
    table = ConnectionTable(connections or ConnectionLimits())
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits, "open_connections": table})
