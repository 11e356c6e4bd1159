"""Production switches: DOCS, CONTRACT and TRUSTED_HOSTS."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app import create_app
from app.config import ConfigError, Settings


def test_docs_off_removes_swagger_ui_and_contract_off_the_contract(settings):
    client = create_app(replace(settings, docs=False, contract=False)).test_client()
    for path in ("/ui/", "/ui/openapi.json", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
    assert client.get("/healthz").status_code == 200


def test_docs_and_contract_are_served_by_default(client):
    assert client.get("/ui/").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_trusted_hosts_refuse_any_other_host_with_an_envelope(settings):
    client = create_app(replace(settings, trusted_hosts=("keys.example.com", "*.internal"))).test_client()
    refused = client.get("/healthz", headers={"Host": "evil.example"})
    assert refused.status_code == 421
    assert refused.json()["error"]["code"] == "host_not_allowed"
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
    for host in ("keys.example.com", "KEYS.example.com:443", "a.internal"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_trusted_hosts_must_be_host_names(tmp_path):
    with pytest.raises(ConfigError, match="TRUSTED_HOSTS"):
        Settings.from_env({"TRUSTED_HOSTS": "https://keys.example.com/", "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/k.db"})
