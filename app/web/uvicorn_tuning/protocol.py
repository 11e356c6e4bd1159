"""uvicorn's httptools protocol, with a hook at each step of reading a request.

Subclasses `HttpToolsProtocol` (uvicorn 0.54.0, uvicorn/protocols/http/httptools_impl.py).
Each override calls uvicorn's own method and then, or before, a hook that does nothing here;
`feed` replaces `HttpToolsProtocol.data_received` so that a request the parser cannot read, or
that a hook refuses by raising, goes to `unreadable` instead of uvicorn's plain-text 400, and an
upgrade not taken to `upgrade_declined` instead of uvicorn's warnings.
"""

from __future__ import annotations

from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class HookedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; subclasses override the hooks, never uvicorn's methods."""

    _head_read = False  # the request's head is complete: a header line now is a trailer field

    # Hooks, called by uvicorn's methods below

    def opened(self) -> None:
        """The connection was made (after uvicorn set it up)."""

    def closed(self) -> None:
        """The connection was lost (before uvicorn tears it down)."""

    def received(self, data: bytes) -> None:
        """Bytes arrived: parse them (`feed`), or not."""
        self.feed(data)

    def head_begun(self) -> None:
        """A request's head has begun."""

    def target_read(self) -> None:
        """The request line's target is read (`self.url`); raise to refuse the request."""

    def header_read(self, name: bytes, value: bytes) -> None:
        """A header is about to be kept; raise to refuse the request."""

    def trailer_read(self, name: bytes, value: bytes) -> None:
        """A trailer field, after a chunked body, is read and dropped; raise to refuse the request."""

    def head_complete(self) -> None:
        """The head is complete, before uvicorn builds the request from it."""

    def message_complete(self) -> None:
        """The request, body and all, is read."""

    def target_invalid(self, error: httptools.HttpParserInvalidURLError) -> None:
        """The target is no URL (`CONNECT host:port`); raise to refuse the request (uvicorn raises `error`)."""
        raise error

    def unreadable(self, raised: BaseException | None) -> None:
        """The parser refused the request; `raised` is what a hook raised, if one did."""
        msg = "Invalid HTTP request received."  # uvicorn's own answer
        self.logger.warning(msg)
        self.send_400_response(msg)

    def upgrade_declined(self, rest: bytes) -> None:
        """A request asked to upgrade (`Upgrade: websocket`, `h2c`), and is answered as HTTP instead.

        The parser stopped at the end of that request: `rest` is what followed it in the same
        read (uvicorn drops it), and the parser reads on from there.
        """
        self._unsupported_upgrade_warning()  # uvicorn's two WARNING lines

    # What the hooks may use

    def feed(self, data: bytes) -> None:
        """Parse `data`. Replaces `HttpToolsProtocol.data_received` (uvicorn 0.54.0): the same, but
        a request the parser cannot read, or a hook refuses, goes to `unreadable`."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.unreadable(exc.__context__)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self.upgrade_declined(data[upgrade.args[0] :])

    def method(self) -> bytes:
        """The method of the request being read, once its request line is."""
        return self.parser.get_method()

    def answering(self) -> bool:
        """Whether a request on this connection is being answered."""
        return self.cycle is not None and not self.cycle.response_complete

    def queued(self) -> bool:
        """Whether requests wait behind the one being answered (pipelining)."""
        return bool(self.pipeline)

    def write_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write a whole response, with the server's default headers, as uvicorn writes its own."""
        lines = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *headers]:
            lines += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*lines, b"\r\n", body]))

    # uvicorn's methods, each with its hook

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_read = False
        self.head_begun()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self.target_read()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_read:
            # A trailer field: uvicorn would add it to the request's headers, which the
            # application may already have read, and which it reads as sent in the head (a
            # Host, a Cookie). Dropped instead, as RFC 9110 6.5.1 allows.
            self.trailer_read(name, value)
            return
        self.header_read(name, value)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_read = True
        self.head_complete()
        try:
            super().on_headers_complete()  # parses the target as a URL
        except httptools.HttpParserInvalidURLError as error:
            self.target_invalid(error)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.message_complete()
