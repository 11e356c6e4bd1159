"""A few lines of HTTP/1.1 over a bare socket, so a test controls every byte it sends."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    """What came back: a response, or None for a connection closed without one."""

    status: int | None
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        if self.status is None:
            return f"connection closed without an answer after {self.seconds:.2f} s"
        return f"{self.status} {self.body[:300]!r} after {self.seconds:.2f} s"


def request_bytes(
    method: str, target: str | bytes, headers: list[tuple[bytes | str, bytes | str]] = (), body: bytes | None = None,
    *, content_length: bool = True,
) -> bytes:
    """Build a request with `Connection: close`, headers sent exactly as given."""
    def raw(value: bytes | str) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    lines = [raw(method) + b" " + raw(target) + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [raw(name) + b": " + raw(value) for name, value in headers]
    if body is not None and content_length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def exchange(port: int, data: bytes, timeout: float = 5.0) -> Answer:
    """Send `data` and read the answer until it is complete or the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Refused before it read everything: what it answered, if anything, is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_answer(sock, started, timeout)


def read_answer(sock: socket.socket, started: float, timeout: float) -> Answer:
    """Read one response from `sock`; a closed connection without one is `Answer(None)`."""
    received = b""
    deadline = started + timeout
    while True:
        head, sep, rest = received.partition(b"\r\n\r\n")
        if sep:
            answer = _parse_head(head)
            length = answer.header("content-length")
            if length is not None and len(rest) >= int(length):
                answer.body = rest[: int(length)]
                break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete answer within {timeout} s; got {received[:200]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            raise TimeoutError(f"no complete answer within {timeout} s; got {received[:200]!r}") from None
        if not chunk:
            if not sep:
                return Answer(None, seconds=time.monotonic() - started)
            answer = _parse_head(head)
            answer.body = rest
            break
        received += chunk
    answer.seconds = time.monotonic() - started
    return answer


def _parse_head(head: bytes) -> Answer:
    status_line, *header_lines = head.split(b"\r\n")
    headers: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Answer(int(status_line.split()[1]), headers)
