"""Schemathesis over the whole contract, in process: every check, positive and negative data.

No check is excluded. Two settings keep the run meaningful rather than noisy:
- the session user is on the pro tier, and key management and leak reports allow plenty of
  requests, so the hundreds of generated requests test the contract rather than the rate
  limiter (which has tests of its own);
- whoami is called with a real pro key minted for the run.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode

from app import create_app
from app.config import Settings
from app.domain.sessions import issue_token

EXAMPLES = 200


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory):
    return build_live_app(tmp_path_factory)


def build_live_app(tmp_path_factory: pytest.TempPathFactory, database_url: str = ""):
    """The app the run fuzzes, on SQLite, or on the PostgreSQL `database_url` names."""
    secret = "schemathesis-secret-0123456789-0123456789"
    settings = Settings(
        jwt_secret=secret,
        database_path=tmp_path_factory.mktemp("st") / "keys.db",
        database_url=database_url,
        cors_origin_regex="",
        management_limit_per_minute=1_000_000,
        management_limit_per_day=10_000_000,
        max_active_keys=1_000_000,
        leak_report_limit_per_minute=1_000_000,
        leak_report_limit_per_day=10_000_000,
    )
    app = create_app(settings)
    services = app.app.extensions["services"]
    services.keys.set_tier("fuzz-user", "pro")
    services.keys.set_tier("key-owner", "pro")
    token = issue_token(secret, "fuzz-user", time.time(), 24 * 3600)
    owner_token = issue_token(secret, "key-owner", time.time(), 24 * 3600)
    with app.test_client() as client:
        minted = client.post("/api/v1/keys", json={"name": "schemathesis"}, cookies={"sb-access-token": owner_token})
        assert minted.status_code == 201
    return app, token, minted.json()["data"]["key"]


schema = schemathesis.pytest.from_fixture("contract")


@pytest.fixture(scope="module")
def contract(live_app):
    app, token, api_key = live_app
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)

    @loaded.auth()
    class Credentials:
        def get(self, case, ctx):
            return {"session": token, "key": api_key}

        def set(self, case, data, ctx):
            if case.operation.path == "/api/v1/whoami":
                case.headers = {**(case.headers or {}), "X-API-Key": data["key"]}
            else:
                case.cookies = {**(case.cookies or {}), "sb-access-token": data["session"]}

    return loaded


EXAMPLES_RUN: Counter[str] = Counter()
CHECKS_RUN: set[str] = set()


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case):
    EXAMPLES_RUN[f"{case.operation.method.upper()} {case.operation.path}"] += 1
    case.call_and_validate(additional_checks=[_record_checks])


def _record_checks(ctx, response, case):
    CHECKS_RUN.update(check.__name__ for check in ctx.internals.checks) if hasattr(ctx, "internals") else None


def test_the_run_covered_every_operation_with_every_check_enabled(contract):
    """The run above reached every operation with enough examples and every built-in check on.

    (It reads what that run recorded, so it runs after it, in the same session.)"""
    if not EXAMPLES_RUN:
        pytest.skip("runs after test_every_operation_conforms, in the same session")
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in contract.get_all_operations())}
    assert set(EXAMPLES_RUN) == operations
    # Operations with inputs get the full budget; those with none (healthz, whoami) have only a
    # handful of distinct requests, which Hypothesis stops at once it has tried them all.
    for operation, count in EXAMPLES_RUN.items():
        has_inputs = operation.split()[0] in ("POST",) or "{" in operation or operation.endswith(("/keys", "/key-events"))
        assert count >= (EXAMPLES if has_inputs else 1), (operation, count)
    expected = {
        "not_a_server_error", "status_code_conformance", "content_type_conformance",
        "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
        "positive_data_acceptance", "missing_required_header", "unsupported_method",
        "use_after_free", "ensure_resource_availability", "ignored_auth",
    }
    assert expected <= CHECKS_RUN, expected - CHECKS_RUN
    print(f"\nSchemathesis examples per operation: {dict(EXAMPLES_RUN)}")


def test_stateful_mint_read_revoke_read(contract, live_app):
    """Follow the contract's links: mint -> read -> revoke -> read (use_after_free must hold),
    mint -> roll -> read or revoke the replacement, and mint -> update."""
    app = live_app[0]
    keys = app.app.extensions["services"].keys

    class Workflow(contract.as_state_machine()):
        def setup(self):
            # Each run starts from an account with no keys, so that a name minted in one run
            # is not a 409 in the next: Hypothesis replays runs and expects the same answers.
            while page := keys.list("fuzz-user", 100, None).items:
                for record in page:
                    keys.revoke("fuzz-user", record.id, "req_stateful")

    Workflow.run(
        settings=hypothesis_settings(
            max_examples=60, stateful_step_count=6, deadline=None, suppress_health_check=list(HealthCheck),
            # The same walk every run, so the coverage asserted below does not depend on luck.
            derandomize=True,
        )
    )
    # Every event of the run, not only the newest: the setup's own revocations between runs
    # (more of them since a roll leaves two keys to revoke) can crowd the machine's out of a page.
    trail, cursor = [], None
    while True:
        page = keys.events("fuzz-user", 100, cursor)
        trail += page.items
        if (cursor := page.next_cursor) is None:
            break
    # The links were followed: keys minted by the machine were revoked through DELETE.
    assert [e for e in trail if e.type == "revoked" and e.request_id != "req_stateful"]
    # And mint -> roll: keys minted by the machine were rolled through the link to rollAPIKey.
    assert any(e.type == "rolled" for e in trail)
    # And mint -> update: keys minted by the machine were changed through the link to updateAPIKey.
    assert any(e.type in ("renamed", "scopes_changed", "allowlist_changed") for e in trail)
