"""Bounds on what a client may send, and how slowly: the README's Limits table, in code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.config import READ_TIMEOUT_SECONDS
from app.web.refusals import HeadersTooLarge

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class HeadLimits:
    """Bounds on a request's head: its target, its headers, and the time it takes to arrive."""

    request_target: int = 8 * 1024  # bytes of the path and query, as sent
    header: int = 8 * 1024  # bytes of one header's name and value
    headers: int = 32 * 1024  # bytes of all headers' names and values
    header_count: int = 100
    # Bytes of the whole head as sent: the request line, the header lines and their separators.
    # Room for the bounds above and the separators of 100 headers; it caps what a server
    # buffers before it can tell which of them a head breaks.
    head: int = 48 * 1024
    read_timeout: float = READ_TIMEOUT_SECONDS  # seconds for the whole head, from its first byte

    def check_header(self, count: int, total: int, size: int) -> None:
        """Raise HeadersTooLarge if a head's `count`th header, of `size` bytes, bringing all to `total`, breaks a bound."""
        if size > self.header:
            raise HeadersTooLarge(f"A request header is larger than {self.header} bytes.", {"limit_bytes": self.header})
        if total > self.headers:
            raise HeadersTooLarge(
                f"The request's headers are larger than {self.headers} bytes in all.", {"limit_bytes": self.headers}
            )
        if count > self.header_count:
            raise HeadersTooLarge(
                f"The request has more than {self.header_count} headers.", {"limit_count": self.header_count}
            )

    def check_headers(self, headers: Any) -> None:
        """Raise HeadersTooLarge if a complete list of `(name, value)` headers breaks a bound."""
        total = 0
        for count, (name, value) in enumerate(headers, 1):
            size = len(name) + len(value)
            total += size
            self.check_header(count, total, size)
