"""The bounded protocol answers exactly as uvicorn's plain httptools protocol does.

`app.web.transport.BoundedHttpToolsProtocol` is uvicorn's `HttpToolsProtocol` through the hooks
of `app.web.uvicorn_tuning`, which replaces its `data_received` and calls its private helpers.
The same conversations (keep-alive, pipelining, chunked bodies both ways, `Expect:
100-continue`, upgrade requests, HTTP/1.0, HEAD) are held over real sockets with a server on
each protocol, in front of the same application, and every byte that comes back must match
but the Date header. What the bounded protocol does differently, refusing heads past its
bounds, is tests/test_transport.py's.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.web.transport import protocol_class
from tests.live import free_port

DATE = re.compile(rb"\r\ndate: [^\r]*", re.IGNORECASE)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer with what arrived: method, target, version, headers and body; `/stream` in chunks."""
    assert scope["type"] == "http"
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "version": scope["http_version"],
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "body": body.decode("latin-1"),
    }
    answer = json.dumps(seen).encode()
    if scope["path"] == "/stream":  # no Content-Length: chunked, or to the close on HTTP/1.0
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        for part in (answer[:10], answer[10:]):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 201 if body else 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@contextmanager
def serving(protocol: type) -> Iterator[int]:
    """uvicorn on a free loopback port with `protocol`, as `python -m app run` configures it; yields the port."""
    port = free_port()
    config = uvicorn.Config(
        echo,
        host="127.0.0.1",
        port=port,
        http=protocol,
        ws="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def read_to_close(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_until(sock: socket.socket, end: bytes) -> bytes:
    received = b""
    while end not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {end!r}; got {received!r}"
        received += chunk
    return received


def keep_alive(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /one?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        first = read_until(sock, b"}")
        sock.sendall(b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        second = read_until(sock, b"}")
        sock.sendall(b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return first + second + read_to_close(sock)


def pipelined(port: int) -> bytes:
    requests = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(requests)
        return read_to_close(sock)


def chunked(port: int, trailer: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n"
        )
        time.sleep(0.05)  # the rest in another read: a body split across packets
        sock.sendall(b"6;ext=1\r\n world\r\n0\r\n" + trailer + b"\r\n")
        return read_to_close(sock)


def expect_continue(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        interim = read_until(sock, b"\r\n\r\n")  # the server asks for the body only once the app reads it
        sock.sendall(b"data")
        return interim + read_to_close(sock)


def upgrade(port: int, protocol: bytes) -> bytes:
    extra = (
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        if protocol == b"websocket"
        else b""
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "
            + protocol
            + b"\r\n"
            + extra
            + b"\r\n"
        )
        first = read_until(sock, b"}")
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return first + read_to_close(sock)


def http_1_0(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n")
        return read_to_close(sock)


CONVERSATIONS = {
    "keep-alive": keep_alive,
    "pipelining": pipelined,
    "chunked": chunked,
    "expect-100-continue": expect_continue,
    "websocket-upgrade": lambda port: upgrade(port, b"websocket"),
    "h2c-upgrade": lambda port: upgrade(port, b"h2c"),
    "http-1.0": http_1_0,
}


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    with serving(protocol_class(read_timeout=5)) as bounded, serving(HttpToolsProtocol) as plain:
        yield {"bounded": bounded, "plain": plain}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_the_bounded_protocol_answers_byte_for_byte_as_uvicorns(ports: dict[str, int], name: str) -> None:
    converse = CONVERSATIONS[name]
    bounded = DATE.sub(b"\r\ndate: <date>", converse(ports["bounded"]))
    plain = DATE.sub(b"\r\ndate: <date>", converse(ports["plain"]))
    assert bounded == plain
    assert bounded.startswith(b"HTTP/1.1 ")


def test_a_trailer_field_is_dropped_where_uvicorn_adds_it_to_the_request_headers(ports: dict[str, int]) -> None:
    # The one answer that differs, on purpose: uvicorn appends a chunked body's trailer fields
    # to the head's headers, which the application reads as sent in the head (a second Host,
    # a Cookie the head did not carry). The bounded protocol drops them (RFC 9110 6.5.1).
    trailer = b"Host: evil.example\r\nCookie: sb-access-token=smuggled\r\n"
    assert b'["host", "evil.example"]' in chunked(ports["plain"], trailer)
    bounded = chunked(ports["bounded"], trailer)
    assert b'"body": "hello world"' in bounded
    assert b"evil.example" not in bounded and b"smuggled" not in bounded


def test_the_conversations_reach_the_application_as_sent(ports: dict[str, int]) -> None:
    # Checked once, on the plain server, so that the comparison above compares answers, not refusals.
    assert pipelined(ports["plain"]).count(b"HTTP/1.1 200 OK") == 4
    assert b'"body": "hello world"' in chunked(ports["plain"])
    continued = expect_continue(ports["plain"])
    assert continued.startswith(b"HTTP/1.1 100 Continue\r\n") and b'"body": "data"' in continued
    assert upgrade(ports["plain"], b"websocket").count(b"HTTP/1.1 200 OK") == 2
    assert b"transfer-encoding: chunked" in keep_alive(ports["plain"]) + chunked(ports["plain"])
