"""What a key may do: the scopes in force for it and the addresses it may be used from.

One function each, asked by every use of a key (whoami, the gateway check). A key may be
restricted at mint or later (`updateAPIKey`) to a subset of its tier's scopes and to an
allowlist of addresses; the checks of what an owner asks for live here too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from app.domain import keymaterial
from app.domain.errors import InvalidParameter, ScopeNotGranted
from app.domain.records import KeyRecord
from app.domain.tiers import TIERS, get_tier

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ALLOWED_IPS = 20
# Longer than any address (45 characters) with a zone (an interface's name, at most 15): no address.
MAX_ADDRESS_TEXT = 64
KNOWN_SCOPES: tuple[str, ...] = tuple(dict.fromkeys(s for tier in TIERS.values() for s in tier.scopes))


def effective_scopes(record: KeyRecord) -> tuple[str, ...]:
    """Return the scopes in force for `record`: those it was granted that its account's tier grants now."""
    tier_scopes = get_tier(record.tier).scopes
    if record.scopes is None:
        return tier_scopes
    return tuple(s for s in tier_scopes if s in record.scopes)


def allowed_networks(record: KeyRecord) -> tuple[Network, ...] | None:
    """Return the networks `record` may be used from, or None for anywhere (a key without an allowlist)."""
    if record.allowed_ips is None:
        return None
    return _networks(record.allowed_ips)


@lru_cache(maxsize=1024)  # a key's allowlist, parsed once while it is in use
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def ip_of(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`address` as an IP address (its zone dropped, an IPv4-mapped IPv6 address as the IPv4 one), or None."""
    if not address or len(address) > MAX_ADDRESS_TEXT:
        return None
    return _ip_of(address)


@lru_cache(maxsize=4096)  # the same peers and clients, request after request
def _ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def address_allowed(address: str | None, networks: Sequence[Network] | None) -> bool:
    """Whether a use from `address` passes an allowlist (None: no allowlist, any address passes)."""
    if networks is None:
        return True
    parsed = ip_of(address)
    return parsed is not None and any(parsed in network for network in networks)


def granted_scopes(
    requested: Sequence[str], grantable: Sequence[str], tier: str, widening: bool = False
) -> tuple[str, ...]:
    """Return `requested` in the tier's order; InvalidParameter naming the first scope not in `grantable`.

    `grantable` is the tier's set at mint, or what the key was minted with when it is narrowed
    (`widening`): a scope beyond it is named, and said to be unknown or above the tier
    (InvalidParameter), or, within the tier, a widening (ScopeNotGranted).
    """
    if not requested:
        raise InvalidParameter(
            "scopes must name at least one scope; omit it for the tier's full set.",
            {"field": "scopes", "in": "body", "constraint": "minItems"},
        )
    for scope in requested:
        if scope in grantable:
            continue
        scope = keymaterial.redact(scope)  # named in the answer: never a key sent by mistake
        if widening and scope in get_tier(tier).scopes:
            # Well formed, and within the tier: it conflicts with what this key was minted with.
            raise ScopeNotGranted(
                f"scopes: {scope!r} was not granted to this key when it was minted; a key's scopes can only be "
                "narrowed (mint a new key for more).",
                {"field": "scopes", "scope": scope, "grantable": list(grantable)},
            )
        if scope not in KNOWN_SCOPES:
            reason = f"scopes: {scope!r} is not a scope of this API (known: {', '.join(KNOWN_SCOPES)})."
        else:
            reason = f"scopes: {scope!r} is above this account's tier ({tier})."
        raise InvalidParameter(reason, {"field": "scopes", "in": "body", "scope": scope, "grantable": list(grantable)})
    return tuple(s for s in KNOWN_SCOPES if s in requested)


def allowlist(entries: Sequence[str]) -> tuple[str, ...]:
    """Return `entries` as canonical addresses and CIDR blocks; InvalidParameter naming the first bad one.

    At most MAX_ALLOWED_IPS; a block of /0 (every address) is refused, and one written with host
    bits set (`10.0.0.1/24`) is the block it lies in. Duplicates are kept once.
    """
    if not entries:
        raise InvalidParameter(
            "allowed_ips must hold at least one address or CIDR block; send null to allow every address.",
            {"field": "allowed_ips", "in": "body", "constraint": "minItems"},
        )
    if len(entries) > MAX_ALLOWED_IPS:
        raise InvalidParameter(
            f"allowed_ips holds at most {MAX_ALLOWED_IPS} entries ({len(entries)} here).",
            {"field": "allowed_ips", "in": "body", "constraint": "maxItems", "expected": MAX_ALLOWED_IPS},
        )
    canonical: list[str] = []
    for index, entry in enumerate(entries):
        shown = keymaterial.redact(entry)  # named in the answer: never a key sent by mistake
        # The entry's index in `field`, as the contract's own checks name it (`allowed_ips.1`).
        details = {"field": f"allowed_ips.{index}", "in": "body", "entry": shown}
        try:
            if "%" in entry:  # a zone (`fe80::1%eth0`) names a local interface, no client
                raise ValueError("a scoped address names a local interface")
            # `10.0.0.1/24` is taken as the block it lies in, 10.0.0.0/24, and shown so.
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError as error:
            raise InvalidParameter(
                f"allowed_ips: {shown!r} is not an IPv4 or IPv6 address or CIDR block "
                f"({keymaterial.redact(str(error))}).",
                details,
            ) from None
        mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
        if mapped is not None and network.prefixlen >= 96:
            # ::ffff:10.0.0.1 is how an IPv4 client reaches a dual-stack socket: kept as IPv4,
            # as the client's address is compared (::ffff:0:0/96 is every IPv4 address: /0).
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        if network.prefixlen == 0:
            raise InvalidParameter(f"allowed_ips: {shown!r} allows every address; send null for no allowlist.", details)
        text = str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)
        if text not in canonical:
            canonical.append(text)
    return tuple(canonical)
