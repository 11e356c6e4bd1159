"""Bounds on open connections: a client holding many idle ones cannot starve the others.

The table's rule is tested with plain objects; the servers (`make run`'s, and `make serve`'s
with one worker, since the bounds are per worker) with real sockets from several loopback
addresses (127.0.0.2, 127.0.0.3, ...: on Linux all of 127.0.0.0/8 is this machine).
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from app.config import ConfigError, Settings
from app.web.connections import ConnectionLimits, ConnectionTable, client_key, raise_descriptor_limit
from tests.live import LiveServer
from tests.rawhttp import Answer, read_answer, request_bytes

SECRET = "connections-test-secret-0123456789-0123456789"


class FakeConnection:
    """`idle`: between requests; `waiting`: no request in flight (idle, or its head still arriving)."""

    def __init__(self, name: str, idle: bool = True, waiting: bool | None = None) -> None:
        self.name, self.is_idle, self.closed = name, idle, False
        self.is_waiting = idle if waiting is None else waiting

    def idle(self) -> bool:
        return self.is_idle

    def waiting(self) -> bool:
        return self.is_waiting

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return self.name


def test_client_key_is_the_ipv4_address_or_the_ipv6_64():
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"


def test_client_key_leaves_trusted_proxies_and_non_ip_peers_uncounted():
    assert client_key("10.0.0.5", ("10.0.0.0/8",)) is None
    assert client_key("10.0.0.5", ("*",)) is None
    assert client_key("192.0.2.1", ("10.0.0.0/8",)) == "192.0.2.1"
    assert client_key(None) is None and client_key("unix-socket") is None


def test_a_client_at_its_bound_loses_its_oldest_idle_connection():
    table = ConnectionTable(ConnectionLimits(total=10, per_client=2))
    first, second, third = (FakeConnection(n) for n in ("first", "second", "third"))
    assert table.admit(first, "192.0.2.1") and table.admit(second, "192.0.2.1")
    assert table.admit(third, "192.0.2.1")
    assert first.closed and not second.closed and len(table) == 2


def test_a_client_whose_connections_are_all_busy_has_its_new_one_refused():
    table = ConnectionTable(ConnectionLimits(total=10, per_client=2))
    busy = [FakeConnection(f"busy{n}", idle=False) for n in range(2)]
    for connection in busy:
        assert table.admit(connection, "192.0.2.1")
    assert not table.admit(FakeConnection("new"), "192.0.2.1")
    assert not any(c.closed for c in busy)
    assert table.admit(FakeConnection("other"), "192.0.2.2")  # another client is not affected


def test_a_full_worker_closes_an_idle_connection_of_the_client_holding_the_most():
    table = ConnectionTable(ConnectionLimits(total=4, per_client=3))
    small = FakeConnection("small")
    greedy = [FakeConnection(f"greedy{n}") for n in range(3)]
    assert table.admit(small, "192.0.2.9")
    for connection in greedy:
        assert table.admit(connection, "192.0.2.1")
    newcomer = FakeConnection("newcomer")
    assert table.admit(newcomer, "192.0.2.5")
    assert greedy[0].closed and not small.closed and len(table) == 4


def test_a_full_worker_with_every_connection_busy_refuses_the_new_one():
    table = ConnectionTable(ConnectionLimits(total=2, per_client=2))
    assert table.admit(FakeConnection("a", idle=False), "192.0.2.1")
    assert table.admit(FakeConnection("b", idle=False), "192.0.2.2")
    assert not table.admit(FakeConnection("c"), "192.0.2.3")
    assert len(table) == 2


def test_a_full_worker_closes_a_connection_still_waiting_for_its_head_of_the_client_holding_the_most():
    table = ConnectionTable(ConnectionLimits(total=4, per_client=3))
    in_flight = FakeConnection("in_flight", idle=False, waiting=False)
    assert table.admit(in_flight, "192.0.2.9")
    heads = [FakeConnection(f"head{n}", idle=False, waiting=True) for n in range(3)]
    for connection in heads:
        assert table.admit(connection, "192.0.2.1")
    assert table.admit(FakeConnection("newcomer"), "192.0.2.5")
    assert heads[0].closed and not heads[1].closed and not in_flight.closed and len(table) == 4


def test_a_client_at_its_bound_keeps_its_connections_whose_heads_are_arriving():
    # The per-client bound closes only idle ones: a client's own unfinished heads are its business.
    table = ConnectionTable(ConnectionLimits(total=10, per_client=2))
    heads = [FakeConnection(f"head{n}", idle=False, waiting=True) for n in range(2)]
    for connection in heads:
        assert table.admit(connection, "192.0.2.1")
    assert not table.admit(FakeConnection("new"), "192.0.2.1")
    assert not any(c.closed for c in heads)


def test_a_trusted_proxy_is_bound_by_the_worker_only():
    table = ConnectionTable(ConnectionLimits(total=5, per_client=1, proxies=("127.0.0.1/32",)))
    proxied = [FakeConnection(f"p{n}") for n in range(5)]
    for connection in proxied:
        assert table.admit(connection, "127.0.0.1")
    assert not any(c.closed for c in proxied)
    assert table.admit(FakeConnection("sixth"), "127.0.0.1")  # the worker's bound: the oldest idle goes
    assert proxied[0].closed


def test_released_connections_make_room_again():
    table = ConnectionTable(ConnectionLimits(total=1, per_client=1))
    first = FakeConnection("first", idle=False)
    assert table.admit(first, "192.0.2.1")
    table.release(first)
    table.release(first)  # reported closed twice: harmless
    assert table.admit(FakeConnection("second", idle=False), "192.0.2.1") and len(table) == 1


def test_connection_bounds_are_settings():
    settings = Settings.from_env(
        {
            "SUPABASE_JWT_SECRET": SECRET,
            "DATABASE_URL": "sqlite:///x/keys.db",
            "MAX_CONNECTIONS": "50",
            "MAX_CONNECTIONS_PER_CLIENT": "5",
        }
    )
    assert (settings.max_connections, settings.max_connections_per_client) == (50, 5)
    defaults = Settings.from_env({"SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": "sqlite:///x/keys.db"})
    assert (defaults.max_connections, defaults.max_connections_per_client) == (1000, 100)
    with pytest.raises(ConfigError, match="MAX_CONNECTIONS_PER_CLIENT"):
        Settings.from_env(
            {"SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": "sqlite:///x/keys.db", "MAX_CONNECTIONS_PER_CLIENT": "0"}
        )


def test_a_descriptor_limit_the_process_cannot_reach_is_one_line():
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    problem = raise_descriptor_limit(hard + 1)
    assert problem is not None and "MAX_CONNECTIONS" in problem and str(hard) in problem and "\n" not in problem
    assert raise_descriptor_limit(64) is None


# -- over real sockets ----------------------------------------------------------------------

LIMITS = {
    "MAX_CONNECTIONS": "6",
    "MAX_CONNECTIONS_PER_CLIENT": "3",
    # Idle connections that sent nothing stay open this long: longer than any test here.
    "REQUEST_READ_TIMEOUT": "60",
}


@pytest.fixture(params=["serve", "run"])
def server(request: pytest.FixtureRequest, tmp_path) -> Iterator[LiveServer]:
    env = {"SUPABASE_JWT_SECRET": SECRET, **LIMITS}
    if request.param == "serve":
        env |= {"APP_ENV": "production", "WEB_CONCURRENCY": "1"}  # the bounds are per worker
    with LiveServer(request.param, tmp_path, env) as live:
        yield live


def open_from(stack: ExitStack, server: LiveServer, address: str) -> socket.socket:
    """Connect to `server` from the loopback address `address`; closed with `stack`."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(address, 0))
    return stack.enter_context(sock)


def ask(sock: socket.socket) -> Answer:
    """Send GET /healthz on an open connection; the answer, or Answer(None) if the server had closed it."""
    started = time.monotonic()
    try:
        sock.sendall(request_bytes("GET", "/healthz"))
    except (BrokenPipeError, ConnectionResetError):
        return Answer(None)
    return read_answer(sock, started, 10)


def served(server: LiveServer, address: str) -> Answer:
    with ExitStack() as stack:
        return ask(open_from(stack, server, address))


def test_a_client_past_its_connections_loses_its_oldest_idle_ones_and_others_are_served(server):
    with ExitStack() as stack:
        greedy = [open_from(stack, server, "127.0.0.2") for _ in range(5)]  # 2 past its 3, all idle
        # Accepted after the greedy client's, so answered only once the server has counted them.
        assert served(server, "127.0.0.3").status == 200
        answers = [ask(sock).status for sock in greedy]
    assert answers == [None, None, 200, 200, 200]


def test_a_worker_holding_its_maximum_still_serves_a_new_client(server):
    with ExitStack() as stack:
        held = [open_from(stack, server, "127.0.0.2") for _ in range(3)]
        held += [open_from(stack, server, "127.0.0.4") for _ in range(3)]  # 6: the worker's maximum, all idle
        assert served(server, "127.0.0.3").status == 200
        answers = [ask(sock).status for sock in held]
    # The newcomer closed the oldest idle connection of a client holding the most (of two
    # holding 3 each, the first to have come).
    assert answers == [None, 200, 200, 200, 200, 200]


def test_a_worker_full_of_unfinished_request_heads_from_many_addresses_still_serves_a_new_client(server):
    # Eight addresses each hold 3 connections (their bound) with a request head begun and never
    # finished: 24 for a worker that holds 6. Each connection first has a whole request
    # answered, so the unfinished head that follows it in the same packet is known to have been
    # read before the next connection opens.
    partial = request_bytes("GET", "/healthz").replace(b"Connection: close\r\n", b"") + b"GET /healthz HTTP/1.1\r\nHo"
    with ExitStack() as stack:
        for n in range(8):
            for _ in range(3):
                sock = open_from(stack, server, f"127.0.2.{n + 1}")
                try:
                    sock.sendall(partial)
                    read_answer(sock, time.monotonic(), 10)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed to make room (or, unbounded, refused): either way, no longer held
        answer = served(server, "127.0.3.1")
        assert answer.status == 200, str(answer)


def test_a_client_holding_more_idle_connections_than_the_process_has_files_leaves_others_served(tmp_path):
    # The process may open 400 files (as a unit's LimitNOFILE would say); one client opens 500
    # connections and lets them sit. Unbounded, the server runs out of descriptors and stops
    # accepting anyone; bounded (100 a worker, 50 a client), the greedy client keeps 50.
    env = {
        "SUPABASE_JWT_SECRET": SECRET,
        "MAX_CONNECTIONS": "100",
        "MAX_CONNECTIONS_PER_CLIENT": "50",
        "REQUEST_READ_TIMEOUT": "60",
    }
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    argv = ["prlimit", "--nofile=400:400", sys.executable, "-m", "app", "run"]
    with LiveServer("run", tmp_path, env, argv=argv) as server, ExitStack() as stack:
        greedy = [open_from(stack, server, "127.0.0.2") for _ in range(500)]
        answer = served(server, "127.0.0.3")  # waits 10 s at most
        assert answer.status == 200, str(answer)
        assert [ask(sock).status for sock in greedy[-50:]] == [200] * 50
        assert ask(greedy[0]).status is None
