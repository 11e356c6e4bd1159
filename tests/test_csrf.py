"""Cross-site request forgery and CORS: which pages may change keys with a user's session."""

from __future__ import annotations

import pytest

from app.config import LOCALHOST_ORIGINS, ConfigError, Settings
from tests.test_api import assert_error

KEYS = "/api/v1/keys"
BODY = {"name": "prod-splunk-2026q2"}


@pytest.fixture
def dev_client(make_app):
    with make_app(cors_origin_regex=LOCALHOST_ORIGINS, cors_origins=("https://app.example",)).test_client() as client:
        yield client


def keys_of(client, session) -> list[str]:
    return [k["name"] for k in client.get(KEYS, cookies=session()).json()["data"]]


@pytest.mark.parametrize("origin", ["http://testserver", "http://localhost:5173", "http://127.0.0.1:3000",
                                    "https://app.example"])
def test_a_page_on_an_allowed_origin_mints(dev_client, session, origin):
    response = dev_client.post(KEYS, json=BODY, cookies=session(), headers={"Origin": origin})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://localhost.evil.example"},
    {"Referer": "https://evil.example/attack.html"},
    {"Origin": "http://localhost:5173", "Referer": "http://localhost:5173/"} | {"Origin": "https://app.example.evil"},
])
def test_a_page_on_a_foreign_origin_is_refused_before_anything_is_written(dev_client, session, store, headers):
    response = dev_client.post(KEYS, json=BODY, cookies=session(), headers=headers)
    error = assert_error(response, 403, "origin_not_allowed")
    assert error["details"]["header"] in ("Origin", "Referer")
    assert keys_of(dev_client, session) == []
    # Not even counted against the account's key-management limit: only the listing above was.
    assert response.headers.get("x-ratelimit-remaining") is None


def test_a_refusal_names_a_referers_origin_never_its_path_or_query(dev_client, session):
    referer = "https://evil.example:8443/steal?api_key=sk_live_not_a_real_one&t=eyJ.token.here"
    response = dev_client.post(KEYS, json=BODY, cookies=session(), headers={"Referer": referer})
    error = assert_error(response, 403, "origin_not_allowed")
    assert error["details"] == {"header": "Referer", "origin": "https://evil.example:8443"}
    assert "sk_live_" not in response.text and "eyJ" not in response.text and "steal" not in response.text
    for odd in ("https://evil.example;t=sk_live_x/", "https://evil.example%2Fsk_live_x/"):
        answer = dev_client.post(KEYS, json=BODY, cookies=session(), headers={"Referer": odd})
        assert assert_error(answer, 403, "origin_not_allowed")["details"]["origin"] == "(not a URL)"
    garbage = dev_client.post(KEYS, json=BODY, cookies=session(), headers={"Referer": "not a url sk_live_x"})
    assert assert_error(garbage, 403, "origin_not_allowed")["details"]["origin"] == "(not a URL)"
    assert "sk_live_" not in garbage.text


def test_a_revoke_from_a_foreign_page_is_refused_and_the_key_keeps_working(dev_client, session, mint):
    key = mint()
    response = dev_client.delete(f"{KEYS}/{key['id']}", cookies=session(), headers={"Origin": "https://evil.example"})
    assert_error(response, 403, "origin_not_allowed")
    assert dev_client.get("/api/v1/whoami", headers={"X-API-Key": key["key"]}).status_code == 200


def test_a_request_with_neither_origin_nor_referer_passes(dev_client, session):
    assert dev_client.post(KEYS, json=BODY, cookies=session()).status_code == 201


def test_a_referer_on_this_server_passes(dev_client, session):
    response = dev_client.post(KEYS, json=BODY, cookies=session(), headers={"Referer": "http://testserver/"})
    assert response.status_code == 201


def test_reading_from_a_foreign_origin_is_not_refused_by_the_origin_rule(dev_client, session):
    # GET changes nothing; CORS keeps the page from reading the answer.
    response = dev_client.get(KEYS, cookies=session(), headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_production_allows_only_its_own_and_configured_origins(make_app, session):
    production = make_app(env="production", cors_origin_regex="", cors_origins=("https://keys.example",))
    with production.test_client() as client:
        for origin in ("http://localhost:5173", "https://evil.example"):
            response = client.post(KEYS, json=BODY, cookies=session(), headers={"Origin": origin})
            assert_error(response, 403, "origin_not_allowed")
        assert client.post(KEYS, json=BODY, cookies=session(), headers={"Origin": "https://keys.example"}).status_code == 201
        own = client.post(KEYS, json={"name": "own-page"}, cookies=session(), headers={"Origin": "http://testserver"})
        assert own.status_code == 201


def test_cors_origins_are_allowed_exactly_with_credentials(dev_client, session):
    response = dev_client.get(KEYS, cookies=session(), headers={"Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["access-control-allow-credentials"] == "true"
    other = dev_client.get(KEYS, cookies=session(), headers={"Origin": "https://app.example:8443"})
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("header", ["Prefer", "X-Requested-With", "traceparent", "sentry-trace"])
def test_preflights_allow_the_headers_frontend_libraries_add(dev_client, header):
    response = dev_client.options(KEYS, headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": f"content-type, {header}"})
    assert response.status_code == 200, response.text
    assert header.lower() in response.headers["access-control-allow-headers"].lower()


def test_cors_settings_are_read_from_the_environment(tmp_path):
    settings = Settings.from_env({
        "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/k.db", "CORS_ORIGINS": "https://a.example, http://b.example:8080/",
        "CORS_ALLOW_HEADERS": "Content-Type, X-Custom"})
    assert settings.cors_origins == ("https://a.example", "http://b.example:8080")
    assert settings.cors_allow_headers == ("Content-Type", "X-Custom")
    for bad in ("*", "https://a.example/path", "a.example"):
        with pytest.raises(ConfigError, match="CORS_ORIGINS"):
            Settings.from_env({"APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/k.db", "CORS_ORIGINS": bad})
