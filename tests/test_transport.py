"""Hostile clients over real sockets, against `make serve`'s two workers and `make run`'s server.

Each test speaks raw HTTP/1.1, as such a client would: heads too large or too many, a head
or a body trickled in, a chunked body, a client gone mid-body, a forged X-Forwarded-For.
Each answer is the contract's envelope (or, for a client that sent nothing, a closed
connection), nothing is written that the client did not send whole, and the server keeps
answering other clients meanwhile.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from app.domain.sessions import issue_token
from tests.live import LiveServer

SECRET = "transport-test-secret-0123456789-0123456789"
READ_TIMEOUT = 1  # REQUEST_READ_TIMEOUT for these servers, so slow clients are cut off quickly


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2",
           "REQUEST_READ_TIMEOUT": str(READ_TIMEOUT)}
    with LiveServer("serve", tmp_path_factory.mktemp("serve"), env) as server:
        yield server


@pytest.fixture(scope="module")
def development(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # This one sits behind a (pretend) proxy on 127.0.0.1, whose X-Forwarded-For it trusts.
    env = {"SUPABASE_JWT_SECRET": SECRET, "REQUEST_READ_TIMEOUT": str(READ_TIMEOUT), "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with LiveServer("run", tmp_path_factory.mktemp("run"), env) as server:
        yield server


@pytest.fixture(params=["production", "development"])
def server(request: pytest.FixtureRequest) -> LiveServer:
    return request.getfixturevalue(request.param)


def session_cookie(user: str) -> str:
    return f"sb-access-token={issue_token(SECRET, user, time.time(), 3600)}"


def connect(server: LiveServer, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    raw = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw) if raw else None


def exchange(server: LiveServer, data: bytes) -> tuple[int, dict[str, str], Any]:
    with connect(server) as sock:
        sock.sendall(data)
        return read_response(sock)


def head(target: str = "/healthz", headers: list[tuple[str, str]] | None = None, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_envelope(answer: tuple[int, dict[str, str], Any], status: int, code: str) -> dict[str, Any]:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["request_id"] == headers["x-request-id"]
    assert headers["cache-control"] == "no-store"
    return body["error"]


def healthy_within(server: LiveServer, seconds: float) -> None:
    started = time.monotonic()
    assert exchange(server, head())[0] == 200
    assert time.monotonic() - started < seconds


def key_names(server: LiveServer, user: str) -> list[str]:
    status, _, body = server.request("GET", "/api/v1/keys", headers={"Cookie": session_cookie(user)})
    assert status == 200, body
    return [key["name"] for key in body["data"]]


def access_line(server: LiveServer, sock_name: tuple[str, int], method: str, route: str) -> str:
    """The access-log line of the request made from the local address `sock_name`."""
    pattern = re.compile(
        rf"^.* app\.access {method} {re.escape(route)} \d+ .* client=127\.0\.0\.1:{sock_name[1]}( .*)?$", re.MULTILINE)
    deadline = time.monotonic() + 10
    while not (found := pattern.search(server.output())):
        assert time.monotonic() < deadline, f"no access line for port {sock_name[1]}"
        time.sleep(0.05)
    return found.group()


# -- the request head ------------------------------------------------------------------------


def test_a_header_up_to_8_kib_is_accepted_and_one_byte_more_is_431(server):
    name = "X-Padding"
    fits = "a" * (8 * 1024 - len(name))
    assert exchange(server, head(headers=[(name, fits)]))[0] == 200
    error = assert_envelope(exchange(server, head(headers=[(name, fits + "a")])), 431, "request_header_fields_too_large")
    assert error["details"] == {"limit_bytes": 8 * 1024}


def test_up_to_100_headers_are_accepted_and_101_is_431(server):
    many = [(f"X-H{n}", "1") for n in range(99)]  # with Host, 100
    assert exchange(server, head(headers=many))[0] == 200
    error = assert_envelope(exchange(server, head(headers=[*many, ("X-One-Too-Many", "1")])),
                            431, "request_header_fields_too_large")
    assert error["details"] == {"limit_count": 100}


def test_headers_over_32_kib_in_all_are_431(server):
    four = [(f"X-Part{n}", "b" * 7_000) for n in range(4)]
    assert exchange(server, head(headers=four))[0] == 200
    error = assert_envelope(exchange(server, head(headers=[*four, ("X-Part4", "b" * 7_000)])),
                            431, "request_header_fields_too_large")
    assert error["details"] == {"limit_bytes": 32 * 1024}


def test_a_request_target_over_8_kib_is_414(server):
    assert exchange(server, head("/healthz?" + "q" * 8_000))[0] != 414
    error = assert_envelope(exchange(server, head("/healthz?" + "q" * 8 * 1024)), 414, "uri_too_long")
    assert error["details"] == {"limit_bytes": 8 * 1024}


def test_a_validly_signed_2_6_mb_session_cookie_is_refused_unread(server):
    claims = {"sub": "cookie-monster", "aud": "authenticated", "exp": int(time.time()) + 3600}
    huge = jwt.encode({**claims, "pad": "p" * 2_000_000}, SECRET, algorithm="HS256")
    assert len(huge) > 2_600_000
    answer = exchange(server, head("/api/v1/keys", [("Cookie", f"sb-access-token={huge}")]))
    assert_envelope(answer, 431, "request_header_fields_too_large")
    assert huge not in server.output()


def test_a_64_mb_header_is_cut_off_without_growing_a_worker(server):
    pids = worker_pids(server)
    before = {pid: rss_kib(pid) for pid in pids}
    sent = 0
    answer: list[Any] = []
    with connect(server) as sock:
        reader = threading.Thread(target=lambda: answer.append(read_response(sock)), daemon=True)
        reader.start()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
        chunk = b"h" * 65_536
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server hung up, as it should, long before the 64 MB were sent
        reader.join(timeout=5)
    assert sent < 16 * 1024 * 1024
    assert answer and answer[0][0] == 431
    for pid in pids:
        assert rss_kib(pid) - before[pid] < 8 * 1024, "a worker grew by more than 8 MiB"
    healthy_within(server, 1)


def worker_pids(server: LiveServer) -> list[int]:
    assert server.process is not None
    if server.command == "run":
        return [server.process.pid]
    return [int(pid) for pid in set(re.findall(r"Booting worker with pid: (\d+)", server.output()))
            if Path(f"/proc/{pid}").exists()]


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))


@pytest.mark.parametrize("after_a_request", [False, True])
def test_a_trickled_head_gets_408_after_the_read_timeout_while_others_are_served(server, after_a_request):
    with connect(server) as sock:
        if after_a_request:  # the clock for a later head on a kept-alive connection starts with its first bytes
            sock.sendall(head())
            assert read_response(sock)[0] == 200
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer: list[Any] = []
        reader = threading.Thread(target=lambda: answer.append(read_response(sock)), daemon=True)
        reader.start()
        for n in range(int(READ_TIMEOUT / 0.25) + 8):  # a header line every 0.25 s, for longer than allowed
            if answer or not reader.is_alive():
                break
            try:
                sock.sendall(f"X-Slow-{n}: 1\r\n".encode())
            except OSError:
                break
            healthy_within(server, 0.5)
            time.sleep(0.25)
        reader.join(timeout=READ_TIMEOUT + 2)
        elapsed = time.monotonic() - started
    assert answer, "the trickling client was never cut off"
    assert_envelope(answer[0], 408, "request_timeout")
    assert READ_TIMEOUT - 0.1 <= elapsed < READ_TIMEOUT + 2


def test_a_connection_that_sends_nothing_is_closed(server):
    with connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < READ_TIMEOUT + 2


@pytest.mark.parametrize("request_bytes", [
    b"BLAH / HTTP/1.1\r\nHost: x\r\n\r\n",
    # Both framings at once: the classic request-smuggling ambiguity.
    b"POST /api/v1/keys HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # Targets the URL parser cannot read: refused, and nothing but the access line logged.
    b"CONNECT 127.0.0.1:8000 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://a:99999/x HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_a_request_that_is_not_http_is_400_in_the_envelope(server, request_bytes):
    assert_envelope(exchange(server, request_bytes), 400, "bad_request")


@pytest.mark.parametrize("request_head,status", [
    (head("/healthz?" + "q" * 8 * 1024, method="HEAD"), 414),
    (head("/healthz", [("X-Big", "a" * 8 * 1024)], method="HEAD"), 431),
    (head("/readyz", [(f"X-Many-{n}", "1") for n in range(101)], method="HEAD"), 431),
], ids=["target", "header", "headers"])
def test_a_head_request_the_server_refuses_gets_the_status_and_headers_without_a_body(server, request_head, status):
    from tests.rawhttp import exchange as raw_exchange

    answer = raw_exchange(server.port, request_head)
    assert answer.status == status
    assert answer.header("x-request-id") and int(answer.header("content-length")) > 0
    assert answer.body == b""  # the connection closes after the head: nothing follows it


# -- the request body ------------------------------------------------------------------------


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def test_a_chunked_json_body_mints_a_key(server):
    user = f"chunker-{time.time_ns()}"
    request = head("/api/v1/keys", [("Cookie", session_cookie(user)), ("Content-Type", "application/json"),
                                    ("Transfer-Encoding", "chunked")], method="POST")
    status, _, body = exchange(server, request + chunked(b'{"name": "chunked-', b'body", "expires_in_days": 30}'))
    assert status == 201, body
    assert body["data"]["name"] == "chunked-body" and body["data"]["expires_at"]
    assert key_names(server, user) == ["chunked-body"]


def test_a_chunked_body_over_64_kib_is_413(server):
    user = f"big-chunker-{time.time_ns()}"
    request = head("/api/v1/keys", [("Cookie", session_cookie(user)), ("Content-Type", "application/json"),
                                    ("Transfer-Encoding", "chunked")], method="POST")
    body = b'{"name": "' + b"x" * 70_000 + b'"}'
    error = assert_envelope(exchange(server, request + chunked(body[:40_000], body[40_000:])), 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": 64 * 1024}
    assert key_names(server, user) == []


def test_a_request_without_credentials_logs_its_access_line_and_no_other(server):
    with connect(server) as sock:
        sock.sendall(head("/api/v1/whoami"))
        assert read_response(sock)[0] == 401
        assert " 401 " in access_line(server, sock.getsockname(), "GET", "/api/v1/whoami")
    assert "No auth provided" not in server.output()  # Connexion's own line, once per such request


def test_a_declared_body_over_64_kib_is_413_at_once_without_waiting_for_it(server):
    user = f"big-declarer-{time.time_ns()}"
    request = head("/api/v1/keys", [("Cookie", session_cookie(user)), ("Content-Type", "application/json"),
                                    ("Content-Length", "99999999999")], method="POST")
    started = time.monotonic()
    with connect(server, timeout=5) as sock:  # the 10 s body timeout would be a socket timeout here
        sock.sendall(request + b'{"name": "x"')
        error = assert_envelope(read_response(sock), 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": 64 * 1024} and time.monotonic() - started < 5
    assert key_names(server, user) == []


def test_an_empty_chunked_body_is_a_missing_body(server):
    request = head("/api/v1/keys", [("Cookie", session_cookie("empty-chunker")), ("Content-Type", "application/json"),
                                    ("Transfer-Encoding", "chunked")], method="POST")
    error = assert_envelope(exchange(server, request + chunked()), 400, "invalid_parameter")
    assert error["details"]["field"] == "body"


def test_a_client_gone_mid_body_mints_nothing(server):
    user = f"quitter-{time.time_ns()}"
    body = b'{"name": "nobody-receives-this"}'  # valid JSON, but the client promised more
    request = head("/api/v1/keys", [("Cookie", session_cookie(user)), ("Content-Type", "application/json"),
                                    ("Content-Length", str(len(body) + 100))], method="POST")
    with connect(server) as sock:
        sock.sendall(request + body)
        local = sock.getsockname()
        time.sleep(0.2)  # the server has the head and the partial body
    line = access_line(server, local, "POST", "/api/v1/keys")
    assert access_fields(line)["status"] == "499"
    assert key_names(server, user) == []
    _, _, events = server.request("GET", "/api/v1/key-events", headers={"Cookie": session_cookie(user)})
    assert events["data"] == []


def test_a_body_shorter_than_its_content_length_gets_408_and_mints_nothing(server):
    user = f"staller-{time.time_ns()}"
    body = b'{"name": "half-sent"}'
    request = head("/api/v1/keys", [("Cookie", session_cookie(user)), ("Content-Type", "application/json"),
                                    ("Content-Length", str(len(body) + 10))], method="POST")
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(request + body)
        healthy_within(server, 0.5)
        answer = read_response(sock)
        elapsed = time.monotonic() - started
        assert_envelope(answer, 408, "request_timeout")
        assert answer[1]["connection"] == "close"
    assert READ_TIMEOUT - 0.1 <= elapsed < READ_TIMEOUT + 2
    assert key_names(server, user) == []


# -- who the client is -----------------------------------------------------------------------

FORGED = '203.0.113.66" "GET /forged" 200 0.1ms req_0000000000000000'


def access_fields(line: str) -> dict[str, str]:
    """An access line's key=value fields (client, method, route, status, request_id, ...)."""
    return dict(pair.split("=", 1) for pair in line.split(" app.access ", 1)[1].split(" ")[3:])


def test_a_forged_forwarded_for_is_ignored_from_an_untrusted_peer(production):
    with connect(production) as sock:
        sock.sendall(head("/healthz", [("X-Forwarded-For", FORGED)]))
        status, headers, _ = read_response(sock)
        assert status == 200
        local = sock.getsockname()
    fields = access_fields(access_line(production, local, "GET", "/healthz"))
    assert (fields["client"], fields["method"], fields["route"], fields["status"]) == (
        f"127.0.0.1:{local[1]}", "GET", "/healthz", "200")
    assert fields["request_id"] == headers["x-request-id"]
    assert "203.0.113.66" not in production.output()


def test_a_trusted_proxys_forwarded_for_is_the_client_and_what_is_no_address_is_not(development):
    for forwarded, logged in [
        ("198.51.100.7", "198.51.100.7:0"),
        ("203.0.113.5, 198.51.100.7", "198.51.100.7:0"),  # the entry the proxy appended
        (FORGED, "127.0.0.1:{port}"),  # no address: the proxy that passed it on is all that is known
    ]:
        with connect(development) as sock:
            sock.sendall(head("/healthz", [("X-Forwarded-For", forwarded)]))
            status, headers, _ = read_response(sock)
            assert status == 200
            logged = logged.format(port=sock.getsockname()[1])
        request_id = headers["x-request-id"]
        deadline = time.monotonic() + 10
        while request_id not in (output := development.output()):
            assert time.monotonic() < deadline, "no access line"
            time.sleep(0.05)
        fields = access_fields(next(line for line in output.splitlines() if request_id in line))
        assert (fields["client"], fields["route"], fields["status"], fields["request_id"]) == (
            logged, "/healthz", "200", request_id)
    assert "203.0.113.66" not in development.output()


def test_a_websocket_upgrade_is_answered_as_http_in_the_envelope(server):
    answer = exchange(server, head("/api/v1/keys", [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
    ]))
    assert_envelope(answer, 401, "missing_session")
    assert answer[1]["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("target,status", [("/healthz", 200), ("/readyz", 200), ("/api/v1/whoami", 401)])
def test_a_websocket_upgrade_on_any_route_is_answered_as_its_http_request_with_nothing_logged(server, target, status):
    # As a WebSocket client sends it: no Connection: close, the connection kept for another request.
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
    with connect(server) as sock:
        sock.sendall(head(target, upgrade))
        got, headers, body = read_response(sock)
        assert got == status and "allow" not in headers
        if status == 401:
            assert body["error"]["code"] == "missing_api_key"
        sock.sendall(head("/healthz", [("Connection", "close")]))  # and the connection is still HTTP's
        assert read_response(sock)[0] == 200
    request_id = headers["x-request-id"]
    deadline = time.monotonic() + 10
    while request_id not in server.output():
        assert time.monotonic() < deadline, "no access line"
        time.sleep(0.05)
    assert "Unsupported upgrade request" not in server.output()
    assert "WebSocket" not in server.output()


def test_a_request_pipelined_after_an_upgrade_request_is_answered_too(server):
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    with connect(server) as sock:
        sock.sendall(head("/healthz", upgrade) + head("/readyz", [("Connection", "close")]))
        received = b""
        while chunk := sock.recv(65536):  # to the close the second request asked for
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b'{"status": "ok"' in received and received.endswith(b'{"status": "ready"}\n')


def test_an_upgrade_request_with_a_body_is_refused_rather_than_read_without_it(server):
    # The parser skips such a body: the application would see none, and the body's bytes
    # would be read as the next request.
    body = b'{"name": "never-minted"}'
    request = head("/api/v1/keys", [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Content-Type", "application/json"),
                          ("Content-Length", str(len(body))), ("Cookie", session_cookie("upgrader"))], method="POST")
    answer = exchange(server, request + body)
    error = assert_envelope(answer, 400, "bad_request")
    assert "Upgrade" in error["message"]


@pytest.mark.parametrize(("request_bytes", "said"), [
    (head(headers=[("Host", "evil.example")]), "more than once"),
    (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", "must name its Host"),
    (head("http://evil.example/healthz"), "another host"),
    (head("http://user@127.0.0.1/healthz"), "user information"),
    (head("ftp://127.0.0.1/healthz"), "not an http or https URL"),
    (head("http://127.0.0.1"), "has no path"),
    (head("http://127.0.0.1?x=1"), "has no path"),
    (b"GET http://evil.example/healthz HTTP/1.0\r\n\r\n", "another host"),
    *((head(headers=[]).replace(b"Host: 127.0.0.1", b"Host: " + bad), "not a host name")
      for bad in (b"evil.com/.example.com", b"evil.com?.example.com", b"evil.com#.x", b"evil.com@x.example.com",
                  b"evil.com,x.example.com", b"a b")),
    (b"GET /healthz HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", "speaks HTTP/1.1"),
    (b"GET /healthz HTTP/0.9\r\n\r\n", "speaks HTTP/1.1"),
], ids=["two-hosts", "no-host", "absolute-form-other-host", "absolute-form-userinfo", "absolute-form-ftp",
        "absolute-form-no-path", "absolute-form-query-no-path", "absolute-form-http-1.0-no-host",
        "host-slash", "host-query", "host-fragment", "host-userinfo", "host-comma", "host-space",
        "http-2.0", "http-0.9"])
def test_a_request_naming_no_host_two_hosts_or_a_target_of_another_host_is_refused(server, request_bytes, said):
    # RFC 9112 3.2: otherwise the Host TRUSTED_HOSTS checks need not be the one read next.
    error = assert_envelope(exchange(server, request_bytes), 400, "bad_request")
    assert said in error["message"]


def test_a_target_in_absolute_form_naming_its_own_host_and_an_http_1_0_request_without_host_are_answered(server):
    assert exchange(server, head("http://127.0.0.1/healthz"))[0] == 200
    assert exchange(server, head("HTTP://127.0.0.1:80/healthz"))[0] == 200  # the same authority, as a client means it
    assert exchange(server, head("http://127.0.0.1./healthz?x=1"))[0] == 200
    assert exchange(server, b"GET /healthz HTTP/1.0\r\n\r\n")[0] == 200


def test_a_chunked_body_in_http_1_0_is_refused_as_faulty_framing(server):
    body = b'{"name": "old-chunks"}'
    request = (b"POST /api/v1/keys HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/json\r\nCookie: " + session_cookie("one-oh").encode() + b"\r\n\r\n")
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    error = assert_envelope(exchange(server, request + chunked), 400, "bad_request")
    assert "in HTTP/1.1" in error["message"]


def test_a_trailer_field_after_a_chunked_body_is_dropped_not_read_as_a_header(server):
    # A session cookie sent only in the trailer does not sign the request in.
    body = b'{"name": "trailed"}'
    request = head("/api/v1/keys", [("Transfer-Encoding", "chunked"), ("Content-Type", "application/json")],
                   method="POST")
    trailer = f"Cookie: sb-access-token={issue_token(SECRET, 'trailer-user', time.time(), 3600)}\r\n".encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n" + trailer + b"\r\n"
    assert_envelope(exchange(server, request + chunked), 401, "missing_session")


@pytest.mark.parametrize("coding", ["gzip, chunked", "chunked, chunked", "deflate", "chunked;foo"])
def test_a_body_in_a_transfer_coding_other_than_chunked_is_refused_not_read_as_if_plain(server, coding):
    user = f"coder-{time.time_ns()}"
    body = b'{"name": "coded"}'
    request = head("/api/v1/keys", [("Transfer-Encoding", coding), ("Content-Type", "application/json"),
                                    ("Cookie", session_cookie(user))], method="POST")
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    error = assert_envelope(exchange(server, request + chunked), 400, "bad_request")
    # By this server's check, or the parser's own (a coding twice, or no chunked last).
    assert error["message"] in ("The request's Transfer-Encoding may only be chunked, in HTTP/1.1: this server "
                                "undoes no other coding.", "The request is not valid HTTP/1.1.")
    plain = head("/api/v1/keys", [("Transfer-Encoding", "Chunked"), ("Content-Type", "application/json"),
                                  ("Cookie", session_cookie(user))], method="POST")
    assert exchange(server, plain + chunked)[0] == 201  # chunked alone, in any case, is read


def test_no_hostile_request_left_a_traceback(server):
    assert "HTTP parser callback failed" not in server.output()
    assert "Traceback" not in server.output()
    assert "Exception in ASGI application" not in server.output()
