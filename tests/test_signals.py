"""The production server as a supervisor runs it: signals to the PID it started, workers that die."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest

from app.domain.sessions import issue_token
from tests.live import LiveServer

SECRET = "signal-test-secret-0123456789-0123456789-ab"
ENV = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def server_pids(server: LiveServer) -> tuple[int, set[int]]:
    output = server.output()
    master = int(re.search(r"Listening at: \S+ \((\d+)\)", output).group(1))
    return master, {int(p) for p in re.findall(r"Booting worker with pid: (\d+)", output)}


def start_half_sent_mint(server: LiveServer) -> tuple[socket.socket, bytes]:
    """Open a mint request whose body is still arriving: in flight when the signal comes."""
    token = issue_token(SECRET, "drain-user", time.time(), 3600)
    body = b'{"name": "in-flight"}'
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        b"POST /api/v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Cookie: sb-access-token=" + token.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5]
    )
    time.sleep(0.5)  # the worker has the head and waits for the rest
    return sock, body[5:]


def finish(sock: socket.socket, rest: bytes) -> bytes:
    sock.sendall(rest)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    return answer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_drains_in_flight_requests_on_a_signal_and_exits_0(tmp_path, sig):
    server = LiveServer("serve", tmp_path, ENV)
    with server:
        master, workers = server_pids(server)
        assert master == server.process.pid  # `serve` execs gunicorn: the PID started is the master
        sock, rest = start_half_sent_mint(server)
        os.kill(server.process.pid, sig)
        time.sleep(0.5)
        answer = finish(sock, rest)
        assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
        assert server.process.wait(timeout=15) == 0
        assert not any(alive(pid) for pid in workers)


def test_make_serve_passes_sigterm_to_the_server_and_leaves_nothing_running(tmp_path):
    server = LiveServer("serve", tmp_path, ENV, argv=["make", "--no-print-directory", "serve"])
    with server:
        master, workers = server_pids(server)
        sock, rest = start_half_sent_mint(server)
        os.kill(server.process.pid, signal.SIGTERM)  # make's PID, as a supervisor tracks it
        time.sleep(0.5)
        assert finish(sock, rest).startswith(b"HTTP/1.1 201 ")
        server.process.wait(timeout=15)
        assert "Shutting down: Master" in server.output()
        assert not alive(master) and not any(alive(pid) for pid in workers)


def test_serve_replaces_a_worker_that_dies(tmp_path):
    with LiveServer("serve", tmp_path, ENV) as server:
        _, workers = server_pids(server)
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(server_pids(server)[1]) < 3:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        _, now = server_pids(server)
        replacement = (now - workers).pop()
        assert alive(replacement)
        for _ in range(10):
            assert server.request("GET", "/healthz")[0] == 200


def test_a_sigterm_shutdown_logs_no_socket_error(tmp_path):
    server = LiveServer("serve", tmp_path, ENV)
    with server:
        _, workers = server_pids(server)
        deadline = time.monotonic() + 20
        while server.output().count("Application startup complete") < 2:  # both workers serve
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert server.request("GET", "/healthz")[0] == 200
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    output = server.output()
    assert "Shutting down: Master" in output
    assert output.count("Finished server process") == len(workers) == 2  # each worker shut down
    assert "Error while closing socket" not in output and "Bad file descriptor" not in output, output
