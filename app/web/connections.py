"""Bounds on open connections: per worker process, and per client address within it.

An idle connection costs a file descriptor and nothing else, so a client could hold
thousands of them (each kept open by a request every couple of seconds, or by opening new
ones faster than the read timeout closes them) until the process runs out of descriptors
and every other client's connection fails. `ConnectionTable` keeps the count:

- a client address (an IPv6 client by its /64, which one machine usually holds whole) holds at
  most `per_client` connections to a worker; a new one past that closes the client's oldest
  idle connection, or, if none of its connections is idle, is closed at once;
- a worker holds at most `total` connections; a new one past that closes the oldest waiting
  connection of the client holding the most, or, if every connection has a request in flight,
  is closed at once.

Idle means between requests: no request being read or answered. Waiting means no request in
flight: idle, or with its request head begun but not complete. A head trickling in costs the
worker no more than an idle connection, and a few addresses holding unfinished heads would
otherwise fill the worker for as long as the head read timeout: at the worker's bound they are
closed like idle ones (unanswered: no request was made). Closing an idle keep-alive
connection is what HTTP allows a server at any time (a client retries on a fresh one), so
the clients that lose connections are those holding the most, and a new client is served. A
request whose head was read whole (being read further, or answered) is never closed.
Peers in `FORWARDED_ALLOW_IPS` are proxies carrying many clients: only the worker's bound
applies to them.
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter

from app.config import Settings
from app.domain.grants import ip_of

# Descriptors a worker needs besides its connections: the listening socket, the database's
# files (or its pool's connections, counted apart), the metrics files, logs and the like.
RESERVED_DESCRIPTORS = 256

SHED = Counter(
    "connections_shed",
    "Connections the server closed to stay within its connection bounds, by bound "
    "(client or worker) and which connection (an idle one, one whose request head had not "
    "arrived whole, or the new one).",
    ["limit", "closed"],
)


class Connection(Protocol):
    """What the table needs of a connection."""

    def idle(self) -> bool: ...
    def waiting(self) -> bool: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a worker holds, and how many of them one client address may."""

    total: int = 1000
    per_client: int = 100
    proxies: tuple[str, ...] = ()  # FORWARDED_ALLOW_IPS: peers exempt from the per-client bound

    def descriptors_needed(self, pool_size: int = 0) -> int:
        """File descriptors a worker needs to hold `total` connections (and `pool_size` database connections)."""
        return self.total + pool_size + RESERVED_DESCRIPTORS


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The connection bounds `settings` ask for."""
    return ConnectionLimits(settings.max_connections, settings.max_connections_per_client, settings.forwarded_allow_ips)


def descriptors_problem(settings: Settings) -> str | None:
    """Raise the open-files limit to what the connection bounds need; why it cannot, in one line, or None."""
    pool = settings.database_pool_size if settings.engine == "postgresql" else 0
    return raise_descriptor_limit(connection_limits(settings).descriptors_needed(pool))


def client_key(address: str | None, proxies: Sequence[str] = ()) -> str | None:
    """The key one client's connections are counted under: its IPv4 address, or its IPv6 /64.

    None for a trusted proxy (`proxies` as FORWARDED_ALLOW_IPS has them) or a peer with no IP
    address (a Unix socket): the per-client bound does not apply to them.
    """
    ip = ip_of(address)
    if ip is None:
        return None
    if "*" in proxies or any(ip in ipaddress.ip_network(proxy) for proxy in proxies):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class ConnectionTable:
    """The open connections of one worker, by client, oldest first."""

    limits: ConnectionLimits
    _all: dict[Connection, str | None] = field(default_factory=dict)
    _by_client: dict[str, dict[Connection, None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._all)

    def admit(self, connection: Connection, address: str | None) -> bool:
        """Count a new connection from `address`, closing others to make room; False if it must be closed itself."""
        key = client_key(address, self.limits.proxies)
        if key is not None:
            mine = self._by_client.get(key, {})
            if len(mine) >= self.limits.per_client and not self._close_oldest_idle(mine, "client"):
                SHED.labels("client", "new").inc()
                return False
        if len(self._all) >= self.limits.total and not self._close_idle_of_the_greediest():
            SHED.labels("worker", "new").inc()
            return False
        self._all[connection] = key
        if key is not None:
            self._by_client.setdefault(key, {})[connection] = None
        return True

    def release(self, connection: Connection) -> None:
        """Forget a connection that closed."""
        if connection not in self._all:
            return
        key = self._all.pop(connection)
        if key is not None:
            mine = self._by_client[key]
            del mine[connection]
            if not mine:
                del self._by_client[key]

    def _close_oldest_idle(
        self, connections: dict[Connection, None] | dict[Connection, str | None], limit: str
    ) -> bool:
        """Close the oldest idle connection of `connections` (the client's bound)."""
        for connection in connections:
            if connection.idle():
                self._shed(connection, limit, "idle")
                return True
        return False

    def _close_oldest_waiting(self, connections: dict[Connection, None] | dict[Connection, str | None]) -> bool:
        """Close the oldest connection of `connections` with no request in flight (the worker's bound)."""
        for connection in connections:
            if connection.idle():
                self._shed(connection, "worker", "idle")
                return True
            if connection.waiting():
                self._shed(connection, "worker", "head")
                return True
        return False

    def _shed(self, connection: Connection, limit: str, closed: str) -> None:
        self.release(connection)  # now: its close is reported later, when the loop gets to it
        connection.close()
        SHED.labels(limit, closed).inc()

    def _close_idle_of_the_greediest(self) -> bool:
        if self._by_client:
            # Usually the client holding the most has one waiting: found without sorting.
            greediest = max(self._by_client.values(), key=len)
            if self._close_oldest_waiting(greediest):
                return True
            # Otherwise the others, most first; then proxies (not counted by client), or anyone.
            for mine in sorted(self._by_client.values(), key=len, reverse=True):
                if mine is not greediest and self._close_oldest_waiting(mine):
                    return True
        return self._close_oldest_waiting(self._all)


def raise_descriptor_limit(needed: int) -> str | None:
    """Raise this process's soft limit on open files to `needed` if it is lower; why it cannot, in one line, or None.

    Inherited by the processes it starts (gunicorn's workers). The hard limit (systemd's
    `LimitNOFILE`, `ulimit -Hn`) is the most a process may raise it to.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        return (
            f"MAX_CONNECTIONS needs {needed} open files per process (connections, database pool and "
            f"{RESERVED_DESCRIPTORS} more), but the hard limit is {hard}: lower MAX_CONNECTIONS or raise "
            "the limit (LimitNOFILE= in the systemd unit, ulimit -n)"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as error:  # a system maximum below the hard limit (macOS: OPEN_MAX)
        return f"MAX_CONNECTIONS needs {needed} open files per process, which this system refuses: {error}"
    return None
