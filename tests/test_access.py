"""The access line and the request metrics: what the first and last layer writes for each request."""

from __future__ import annotations

import io
import logging

import pytest
from prometheus_client import REGISTRY

from app import metrics
from app.domain import keymaterial
from app.logs import JSONFormatter, RedactingFilter, TextFormatter
from app.web.access import access_log, log_access


@pytest.fixture
def access_stream():
    """The access logger writing through a stream handler, as `app.logs.configure` sets it up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    level, propagate = access_log.level, access_log.propagate
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    yield handler, stream
    access_log.removeHandler(handler)
    access_log.setLevel(level)
    access_log.propagate = propagate


@pytest.mark.parametrize("formatter", [TextFormatter, JSONFormatter])
def test_the_access_line_is_what_the_logger_would_write_with_secrets_masked(access_stream, formatter, monkeypatch):
    handler, stream = access_stream
    handler.setFormatter(formatter())
    monkeypatch.setattr(logging, "_startTime", 0.0)
    secret = keymaterial.generate()
    facts = (
        "req_0123456789abcdef",
        "GET",
        "/api/v1/whoami",
        401,
        0.0123,
        f"{secret}:0",
        "acct",
        None,
        "invalid_api_key",
    )

    monkeypatch.setattr("time.time", lambda: 1_800_000_000.5)
    monkeypatch.setattr("time.time_ns", lambda: 1_800_000_000_500_000_000)
    log_access(*facts)
    direct = stream.getvalue()
    stream.seek(0)
    stream.truncate()
    request_id, method, route, status, elapsed, client, account_id, key_id, error_code = facts
    access_log.info(
        "%s %s %d",
        method,
        route,
        status,
        extra={
            "fields": {
                "request_id": request_id,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 1),
                "client": client,
                "account_id": account_id,
                "key_id": key_id,
                "error_code": error_code,
            }
        },
    )
    assert direct == stream.getvalue()
    assert secret not in direct and "[REDACTED]" in direct


def test_the_line_goes_straight_to_the_configured_handler_and_otherwise_as_a_record(access_stream, caplog):
    from app.logs import write_info

    handler, stream = access_stream
    handler.setFormatter(TextFormatter())
    assert write_info(access_log, "GET /healthz 200", {"status": 200, "key_id": None})
    assert stream.getvalue().endswith(" INFO app.access GET /healthz 200 status=200\n")
    # Anything else on the way (a second handler, a filter, another formatter): not straight.
    with caplog.at_level(logging.INFO, logger="app.access"):
        access_log.addHandler(caplog.handler)
        try:
            assert not write_info(access_log, "GET /healthz 200", {})
            log_access("req_1", "GET", "/healthz", 200, 0.001, "127.0.0.1:1")
        finally:
            access_log.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == ["GET /healthz 200"]
    handler.setFormatter(logging.Formatter())
    assert not write_info(access_log, "GET /healthz 200", {})


def test_no_access_line_is_written_below_info(access_stream):
    _, stream = access_stream
    access_log.setLevel(logging.WARNING)
    log_access("req_0", "GET", "/healthz", 200, 0.001, "127.0.0.1:1")
    assert stream.getvalue() == ""


def test_each_request_is_counted_in_its_own_children():
    def counts() -> list[float]:
        return [
            REGISTRY.get_sample_value(name, labels) or 0.0
            for name, labels in (
                ("http_requests_total", {"operation": "getCurrentKey", "method": "GET", "status": "429"}),
                ("rate_limit_refusals_total", {"operation": "getCurrentKey"}),
                ("http_request_duration_seconds_count", {"operation": "createAPIKey"}),
                ("api_keys_minted_total", {}),
            )
        ]

    before = counts()
    for _ in range(3):
        metrics.record("getCurrentKey", "GET", 429, 0.001)
    metrics.record("createAPIKey", "POST", 201, 0.001)
    metrics.record("createAPIKey", "POST", 201, 0.001)
    assert [b - a for a, b in zip(before, counts(), strict=True)] == [3, 3, 2, 2]
