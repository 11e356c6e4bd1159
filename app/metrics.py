"""Prometheus metrics, counted from each request's outcome, summed across gunicorn workers.

Under `serve`, PROMETHEUS_MULTIPROC_DIR names a directory made for this server's lifetime:
prometheus_client then keeps each worker's values in files there, and `/metrics` sums them
(`MultiProcessCollector`). Under `run` (one process) it reads the values in memory.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from app.domain.grants import ip_of

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NO_OPERATION = "none"  # requests no operation of the contract matched

REQUESTS = Counter("http_requests", "Requests answered, by operation, method and status.",
                   ["operation", "method", "status"])
DURATION = Histogram("http_request_duration_seconds", "Time to answer a request, by operation.", ["operation"],
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RATE_LIMITED = Counter("rate_limit_refusals", "Requests refused by a rate limit (429), by operation.", ["operation"])
STORE_ERRORS = Counter("store_errors", "Requests answered 503 because the key store could not answer.", ["operation"])
LEAK_REPORTS_ADMITTED = Counter("leak_reports_admitted", "Leak reports the per-address limit let through.")
LEAK_REPORTS_REFUSED = Counter("leak_reports_refused",
                               "Leak reports refused by the per-address limit (429), by the window that refused.",
                               ["window"])
UNTRUSTED_FORWARDED = Counter("forwarded_for_untrusted",
                              "Requests carrying X-Forwarded-For from a peer FORWARDED_ALLOW_IPS does not name.")
MINTED = Counter("api_keys_minted", "API keys minted.")
REVOKED = Counter("api_keys_revoked", "API keys revoked.")
# What each successful operation means for the key counters.
# A roll mints the replacement (the old key expires; it is not revoked). Leak reports revoke
# however many keys they name: app.services counts those.
KEY_EVENTS = {("createAPIKey", 201): MINTED, ("rollAPIKey", 201): MINTED, ("revokeAPIKey", 204): REVOKED}


# Each (operation, method, status)'s children of the request metrics, looked up once: asking
# `labels()` per request takes a lock and rebuilds the label tuple every time. Bounded, as the
# metrics' own children are: past MAX_CACHED, children are looked up per request again.
MAX_CACHED = 1024
_children: dict[tuple[str, str, int], tuple[Any, ...]] = {}


def record(operation: str | None, method: str, status: int, seconds: float) -> None:
    """Count one answered request."""
    operation = operation or NO_OPERATION
    key = (operation, method, status)
    children = _children.get(key)
    if children is None:
        children = _request_children(operation, method, status)
        if len(_children) < MAX_CACHED:
            _children[key] = children
    requests, duration, refusals, event = children
    requests.inc()
    duration.observe(seconds)
    if refusals is not None:
        refusals.inc()
    if event is not None:
        event.inc()


def _request_children(operation: str, method: str, status: int) -> tuple[Any, ...]:
    """The metrics one answered request of this kind counts in: requests, duration, refusals, key events."""
    refusals = RATE_LIMITED.labels(operation) if status == 429 else STORE_ERRORS.labels(operation) if status == 503 else None
    return REQUESTS.labels(operation, method, str(status)), DURATION.labels(operation), refusals, KEY_EVENTS.get(
        (operation, status))


def exposition() -> tuple[bytes, str]:
    """Every metric in Prometheus' text format, and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
    return generate_latest(), CONTENT_TYPE_PLAIN_0_0_4


def allowed(client: str | None, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the client's address lies in one of `networks`."""
    address = ip_of(client)
    return address is not None and any(address in network for network in networks)
