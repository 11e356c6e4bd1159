"""The Schemathesis run of `tests/test_schemathesis.py` on PostgreSQL: every operation with every
check, positive and negative data, and the stateful walk through the contract's links.

The same test functions, collected here, where `live_app` is the app on a fresh PostgreSQL
schema (dropped afterwards). Skipped, saying so, without PostgreSQL, unless REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import fresh_pg_schema, schema_url
from tests.test_schemathesis import (  # noqa: F401  (collected here, with this module's live_app)
    build_live_app,
    contract,
    schema,
    test_every_operation_conforms,
    test_stateful_mint_read_revoke_read,
)


@pytest.fixture(scope="module")
def pg_schema_for_run() -> Iterator[str]:
    yield from fresh_pg_schema()


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory, pg_schema_for_run: str):
    return build_live_app(tmp_path_factory, database_url=schema_url(pg_schema_for_run))


def test_the_fuzzed_app_stores_its_keys_in_postgresql(live_app):
    assert live_app[0].app.extensions["services"].store.schema_version() and (
        type(live_app[0].app.extensions["services"].store).__name__ == "PostgresStore"
    )
