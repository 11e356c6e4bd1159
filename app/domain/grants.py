"""What a key may do: the scopes in force for it and the addresses it may be used from.

One function each, asked by every use of a key (whoami, the gateway check), so that keys
restricted at mint need only these to change. Today a key carries its tier's full scope set
and may be used from any address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from app.domain.records import KeyRecord
from app.domain.tiers import get_tier

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def effective_scopes(record: KeyRecord) -> tuple[str, ...]:
    """Return the scopes in force for `record`: today, its account's tier's full set."""
    return get_tier(record.tier).scopes


def allowed_networks(record: KeyRecord) -> tuple[Network, ...] | None:
    """Return the networks `record` may be used from, or None for anywhere (every key today)."""
    return None


def address_allowed(address: str | None, networks: Sequence[Network] | None) -> bool:
    """Whether a use from `address` passes an allowlist (None: no allowlist, any address passes)."""
    if networks is None:
        return True
    if not address:
        return False
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in networks)
