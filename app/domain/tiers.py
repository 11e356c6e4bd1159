"""Tiers and scopes: the vendor's rate-limit table, defined once."""

from __future__ import annotations

from dataclasses import dataclass

# One scope per area of the Threat Intelligence API, and one per export format.
FREE_SCOPES: tuple[str, ...] = (
    "iocs:read",
    "statistics:read",
    "articles:read",
    "lookup:read",
    "export:json",
    "export:csv",
)
PRO_ONLY_SCOPES: tuple[str, ...] = (
    "export:stix",
    "export:misp",
    "export:cef",
    "export:openioc",
    "export:sigma",
    "taxii:read",
    "detection-rules:read",
)


@dataclass(frozen=True)
class Tier:
    """A subscription tier: its limits, lookback, formats and scopes."""

    name: str
    per_minute: int
    per_day: int
    lookback_days: int
    formats: tuple[str, ...]
    scopes: tuple[str, ...]


TIERS: dict[str, Tier] = {
    "free": Tier("free", 10, 1_000, 1, ("JSON", "CSV"), FREE_SCOPES),
    "pro": Tier(
        "pro",
        1_000,
        1_000_000,
        365,
        ("JSON", "CSV", "STIX", "TAXII", "MISP", "CEF", "OpenIOC", "Sigma"),
        FREE_SCOPES + PRO_ONLY_SCOPES,
    ),
}
DEFAULT_TIER = "free"


class UnknownTier(Exception):
    """No tier has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown tier {name!r}; choose one of: {', '.join(TIERS)}")
        self.name = name


def get_tier(name: str) -> Tier:
    """Return the tier called `name`."""
    try:
        return TIERS[name]
    except KeyError:
        raise UnknownTier(name) from None
