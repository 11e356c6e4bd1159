"""Required scopes, on an operation of the tests' own copy of the contract.

None of our operations needs a scope yet (every key may call whoami), so this spec adds
whoami require `taxii:read`, a pro-only scope, through the same verification function.
"""

from __future__ import annotations

import json

import pytest

from app import SPEC_PATH, create_app


@pytest.fixture
def scoped_client(settings, clock):
    spec = json.loads(SPEC_PATH.read_text())
    spec["paths"]["/api/v1/whoami"]["get"]["security"] = [
        {"BearerAuth": ["taxii:read"]},
        {"ApiKeyHeader": ["taxii:read"]},
    ]
    app = create_app(settings, clock=clock, spec=spec)
    with app.test_client() as client:
        yield client, app.app.extensions["services"]


@pytest.mark.parametrize("how", ["Authorization", "X-API-Key"])
def test_key_without_the_required_scope_is_forbidden(scoped_client, session, how):
    client, _ = scoped_client
    key = client.post("/api/v1/keys", json={"name": "free-key"}, cookies=session()).json()["data"]
    header = {how: f"Bearer {key['key']}" if how == "Authorization" else key["key"]}
    response = client.get("/api/v1/whoami", headers=header)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert error["details"]["missing_scopes"] == ["taxii:read"]
    # A forbidden request is not counted against the key.
    stored = client.get(f"/api/v1/keys/{key['id']}", cookies=session()).json()["data"]
    assert stored["total_requests"] == 0


def test_key_whose_tier_grants_the_scope_passes(scoped_client, session):
    client, services = scoped_client
    key = client.post("/api/v1/keys", json={"name": "pro-key"}, cookies=session()).json()["data"]
    services.keys.set_tier("user-1", "pro")
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key['key']}"}).status_code == 200
