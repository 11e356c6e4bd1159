"""Who the client is: the peer, or behind trusted proxies the address they appended.

Replaces uvicorn's ProxyHeadersMiddleware (uvicorn 0.54, `uvicorn/middleware/proxy_headers.py`),
which with `FORWARDED_ALLOW_IPS=*` believes the leftmost X-Forwarded-For entry, the one the
client writes. Here, as each proxy appends the address it was reached from:

- a peer that is not a trusted proxy is the client, whatever X-Forwarded-For says;
- from a trusted peer, X-Forwarded-For is read from the right: the first entry that is not a
  trusted proxy is the client. `*` trusts the peer, whatever it is, and no entry: the client is
  the rightmost entry (one proxy in front, of unknown address);
- an entry that is not an IP address stops the walk: the client is the trusted proxy that
  appended it; only the rightmost MAX_HOPS entries are ever read.

A request carrying X-Forwarded-For from a peer that is not a trusted proxy came through a
proxy this server was not told to trust (or forged the header): its client is unknown, which
`/metrics` treats as outside METRICS_ALLOW.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from starlette.types import ASGIApp, Receive, Scope, Send

from app import metrics
from app.web.state import request_state

MAX_HOPS = 16  # X-Forwarded-For entries read, rightmost first; the rest is never parsed
# How much of the header, from its end, is looked at: room for MAX_HOPS IPv6 addresses and ports.
MAX_FORWARDED_CHARS = MAX_HOPS * 56
# The longest an address is written, with a port: `[` + 45 (an IPv6 address ending in IPv4) + `]:65535`.
MAX_ADDRESS_CHARS = 53
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Proxies:
    """The peers whose X-Forwarded-For and -Proto are believed (FORWARDED_ALLOW_IPS)."""

    networks: tuple[Network, ...] = ()
    any_peer: bool = False  # `*`: whatever connects is one proxy, of no known address

    @classmethod
    def parse(cls, items: Sequence[str]) -> Proxies:
        """Build from FORWARDED_ALLOW_IPS' items (checked by `Settings`): addresses, networks, or `*`."""
        if tuple(items) == ("*",):
            return cls(any_peer=True)
        return cls(networks=tuple(ipaddress.ip_network(item) for item in items))

    def trusts(self, address: Address) -> bool:
        """Whether `address` is one of the configured proxies (`*` names none by address)."""
        return any(address in network for network in self.networks)

    def trusts_peer(self, peer: Address | None) -> bool:
        """Whether the connection's peer is a trusted proxy (`*`: whatever it is, a Unix socket too)."""
        return self.any_peer or (peer is not None and self.trusts(peer))


@dataclass(frozen=True)
class Client:
    """The client of one request as the proxies in front saw it."""

    address: str | None  # an IP address as text; None when the peer is no IP (a Unix socket)
    forwarded: bool  # taken from X-Forwarded-For
    unknown: bool  # X-Forwarded-For came from a peer that is no trusted proxy: the real client is not known
    peer: str | None = None  # the connection's own peer address, whatever X-Forwarded-For says


def parse_address(text: str) -> Address | None:
    """An X-Forwarded-For entry's address (`1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`), or None.

    None too for what no proxy appends: an entry longer than any address and port, or a scoped
    address (`fe80::1%eth0`), whose zone id is free text of any length.
    """
    text = text.strip()
    if len(text) > MAX_ADDRESS_CHARS or "%" in text:
        return None
    return _parse_address(text)


@lru_cache(maxsize=4096)  # a proxy's address and its clients' repeat from request to request
def _parse_address(text: str) -> Address | None:
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 and (text[end + 1 :] == "" or text[end + 1] == ":") else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_address(peer: str | None) -> Address | None:
    """The connection peer's address; a link-local peer's zone (`fe80::1%eth0`) is the socket's, so dropped."""
    return parse_address(peer.split("%", 1)[0]) if peer else None


def resolve(peer: str | None, forwarded_for: Sequence[str], proxies: Proxies) -> Client:
    """The client of a request from `peer` carrying these X-Forwarded-For values, in order."""
    if not forwarded_for:
        return Client(peer, False, False)
    if not proxies.trusts_peer(peer_address(peer)):
        return Client(peer, False, True)
    # The header's values from the last back, until MAX_FORWARDED_CHARS are in hand.
    taken: list[str] = []
    size = 0
    for value in reversed(forwarded_for):
        taken.append(value)
        size += len(value) + 1
        if size > MAX_FORWARDED_CHARS:
            break
    joined = ",".join(reversed(taken))
    hops = joined[-MAX_FORWARDED_CHARS:].rsplit(",", MAX_HOPS)
    if size > MAX_FORWARDED_CHARS or len(hops) > MAX_HOPS:
        hops = hops[1:]  # cut short, or beyond the hops read: never taken for an address
    client: Address | None = None
    for entry in reversed(hops):
        address = parse_address(entry)
        if address is None:
            break  # not an address: no trusted proxy wrote it
        client = address
        if proxies.any_peer or not proxies.trusts(address):
            break
    if client is None:
        return Client(peer, False, False)
    return Client(str(client), True, False)


class ClientAddressMiddleware:
    """Set each request's `client` (and, from a trusted proxy, its `scheme`) to what the proxies saw.

    The first thing to act on every request (only the access log's layer, which sets the
    request up and reads its client once it is answered, is outside it), so that the access
    log, the limits and `/metrics` all see the same client; the request state's `client` holds the `Client`.
    """

    def __init__(self, app: ASGIApp, proxies: Proxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        forwarded_for: list[str] = []
        forwarded_proto = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
        peer = scope.get("client")
        client = resolve(peer[0] if peer else None, forwarded_for, self.proxies)
        if client.forwarded:
            scope["client"] = (client.address, 0)
        if forwarded_proto is not None and self.proxies.trusts_peer(peer_address(peer[0] if peer else None)):
            # The nearest proxy's word: the rightmost value.
            proto = forwarded_proto.decode("latin-1").rsplit(",", 1)[-1].strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto
        if client.unknown:
            # A proxy this server was not told to trust (or a forged header): every client
            # behind it shares one address's limits. Counted, for operators to see.
            metrics.UNTRUSTED_FORWARDED.inc()
        request_state(scope).client = Client(client.address, client.forwarded, client.unknown, peer[0] if peer else None)
        await self.app(scope, receive, send)
