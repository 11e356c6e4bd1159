"""The gateway check (`checkRequest`) in process: what a proxy is told, on both engines."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings
from app.domain.gateway import BadRouteMap, canonical_path, default_routes, load_route_map
from app.domain.grants import address_allowed
from tests.conftest import FakeClock

ENGINES = ("sqlite", "postgresql")
CHECK = "/api/v1/gateway/check"


@pytest.fixture
def proxy(app: Any) -> Iterator[Any]:
    """A test client whose peer is a loopback address, as nginx or Caddy on the same host."""
    with app.test_client(client=("127.0.0.1", 40100)) as test_client:
        yield test_client


def ask(proxy: Any, method: str, uri: str, key: str | None = None, how: str = "bearer", **headers: str) -> Any:
    """Ask the check about `method uri` as Caddy's forward_auth would."""
    sent = {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, "X-Forwarded-Host": "intel.example", **headers}
    if key is not None and how == "bearer":
        sent["Authorization"] = f"Bearer {key}"
    elif key is not None and how == "header":
        sent["X-API-Key"] = key
    return proxy.get(CHECK, headers=sent)


def test_check_allows_valid_key_with_identity_headers(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    response = ask(proxy, "GET", "/api/v1/iocs?limit=5", key["key"])
    assert response.status_code == 200, response.text
    assert response.headers["X-Account-Id"] == "user-1"
    assert response.headers["X-Key-Id"] == key["id"]
    assert response.headers["X-Key-Tier"] == "free"
    assert "iocs:read" in response.headers["X-Key-Scopes"].split(" ")
    assert response.headers["X-Upstream-Uri"] == "/api/v1/iocs?limit=5"
    assert response.headers["X-RateLimit-Limit"] == "10"
    assert response.headers["X-RateLimit-Remaining"] == "9"
    assert '"minute";q=10;w=60' in response.headers["RateLimit-Policy"]
    assert response.json()["data"]["required_scopes"] == ["iocs:read"]


def test_check_counts_usage_as_whoami_does(
    proxy: Any, client: Any, mint: Callable[..., dict[str, Any]], session: Callable[..., dict[str, str]]
) -> None:
    key = mint()
    for _ in range(3):
        assert ask(proxy, "GET", "/api/v1/articles", key["key"], how="header").status_code == 200
    listed = client.get(f"/api/v1/keys/{key['id']}", cookies=session()).json()["data"]
    assert listed["total_requests"] == 3
    assert listed["last_used_at"] is not None


def test_check_reads_key_from_original_query_and_strips_it(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    response = ask(proxy, "GET", f"/api/v1/lookup/8.8.8.8?api_key={key['key']}&verbose=1")
    assert response.status_code == 200, response.text
    assert response.headers["X-Upstream-Uri"] == "/api/v1/lookup/8.8.8.8?verbose=1"
    assert key["key"] not in response.text


def test_check_reads_nginx_original_headers(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    response = proxy.get(
        CHECK,
        headers={
            "X-Original-Method": "GET",
            "X-Original-URI": "/api/v1/statistics/daily",
            "Authorization": f"Bearer {key['key']}",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["required_scopes"] == ["statistics:read"]


def test_check_refuses_missing_and_unknown_keys(proxy: Any) -> None:
    missing = ask(proxy, "GET", "/api/v1/iocs")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    unknown = ask(proxy, "GET", "/api/v1/iocs", "sk_live_" + "A" * 38)
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "invalid_api_key"


def test_check_refuses_two_keys(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    first, second = mint("prod-one"), mint("prod-two")
    response = ask(proxy, "GET", f"/api/v1/iocs?api_key={second['key']}", first["key"])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_check_refuses_revoked_key_on_next_request(
    proxy: Any, client: Any, mint: Callable[..., dict[str, Any]], session: Callable[..., dict[str, str]]
) -> None:
    key = mint()
    assert ask(proxy, "GET", "/api/v1/iocs", key["key"]).status_code == 200
    assert client.delete(f"/api/v1/keys/{key['id']}", cookies=session()).status_code == 204
    response = ask(proxy, "GET", "/api/v1/iocs", key["key"])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "revoked_api_key"


def test_check_refuses_expired_and_rolled_out_keys(
    proxy: Any,
    client: Any,
    clock: FakeClock,
    mint: Callable[..., dict[str, Any]],
    session: Callable[..., dict[str, str]],
) -> None:
    expiring = mint("prod-expiring", expires_in_days=1)
    rolled = mint("prod-rolled")
    answer = client.post(f"/api/v1/keys/{rolled['id']}/roll", json={"grace_period_minutes": 5}, cookies=session())
    assert answer.status_code == 201, answer.text
    assert ask(proxy, "GET", "/api/v1/iocs", rolled["key"]).status_code == 200  # in its grace period
    clock.advance(86_400 + 1)
    expired = ask(proxy, "GET", "/api/v1/iocs", expiring["key"])
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "expired_api_key"
    rolled_out = ask(proxy, "GET", "/api/v1/iocs", rolled["key"])
    assert rolled_out.status_code == 401
    assert rolled_out.json()["error"]["details"]["rolled"] is True


def test_check_refuses_free_key_a_pro_only_scope_naming_it(
    proxy: Any, client: Any, mint: Callable[..., dict[str, Any]], session: Callable[..., dict[str, str]]
) -> None:
    key = mint()
    response = ask(proxy, "GET", "/api/v1/export/stix/latest", key["key"])
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert error["details"]["missing_scopes"] == ["export:stix"]
    assert "export:stix" in error["message"]
    # Refused before counting: the key has no use recorded.
    assert client.get(f"/api/v1/keys/{key['id']}", cookies=session()).json()["data"]["total_requests"] == 0


def test_check_allows_pro_key_a_pro_only_scope(
    proxy: Any, make_app: Callable[..., Any], mint: Callable[..., dict[str, Any]]
) -> None:
    key = mint()
    proxy.app.app.extensions["services"].keys.set_tier("user-1", "pro")
    response = ask(proxy, "GET", "/api/taxii2/collections/", key["key"])
    assert response.status_code == 200, response.text
    assert response.headers["X-Key-Tier"] == "pro"
    assert "taxii:read" in response.headers["X-Key-Scopes"].split(" ")


def test_check_is_method_aware_and_fails_closed(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    for method, uri in (("POST", "/api/v1/iocs"), ("GET", "/api/v1/admin/users")):
        response = ask(proxy, method, uri, key["key"])
        assert response.status_code == 403, (method, uri)
        assert response.json()["error"]["code"] == "route_not_mapped"
        assert response.json()["error"]["details"] == {"method": method, "path": uri}


def test_check_allows_unmapped_route_when_switched_on(
    make_app: Callable[..., Any], session: Callable[..., dict[str, str]]
) -> None:
    app = make_app(gateway_routes=default_routes(allow_unmapped=True))
    with app.test_client(client=("127.0.0.1", 40101)) as proxy:
        minted = proxy.post("/api/v1/keys", json={"name": "prod-splunk"}, cookies=session()).json()["data"]
        response = ask(proxy, "GET", "/api/v1/admin/users", minted["key"])
        assert response.status_code == 200, response.text
        assert response.json()["data"]["required_scopes"] == []


def test_check_matches_the_path_it_sends_upstream(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    # A free key may read IOCs, not TAXII: dot segments cannot smuggle one route in as another.
    response = ask(proxy, "GET", "/api/v1/iocs/../../taxii2/collections", key["key"])
    assert response.status_code == 403
    assert response.json()["error"]["details"]["missing_scopes"] == ["taxii:read"]
    encoded = ask(proxy, "GET", "/api/v1/iocs/%2e%2e/%2e%2e/taxii2/collections", key["key"])
    assert encoded.status_code == 403
    slash = ask(proxy, "GET", "/api/v1/iocs%2F..%2F..%2Ftaxii2", key["key"])
    assert slash.status_code == 400
    assert slash.json()["error"]["details"]["field"] == "X-Forwarded-Uri"


def test_check_needs_the_original_request(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    response = proxy.get(CHECK, headers={"Authorization": f"Bearer {mint()['key']}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_check_answers_only_configured_proxies(app: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    with app.test_client(client=("192.0.2.10", 40102)) as stranger:
        response = ask(stranger, "GET", "/api/v1/iocs", key["key"])
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "proxy_not_allowed"


def test_check_answers_proxies_named_in_gateway_allow(
    make_app: Callable[..., Any], session: Callable[..., dict[str, str]]
) -> None:
    import ipaddress

    app = make_app(gateway_allow=(ipaddress.ip_network("192.0.2.0/24"),))
    with (
        app.test_client(client=("192.0.2.10", 40103)) as gateway,
        app.test_client(client=("127.0.0.1", 40104)) as local,
    ):
        minted = gateway.post("/api/v1/keys", json={"name": "prod-splunk"}, cookies=session()).json()["data"]
        assert ask(gateway, "GET", "/api/v1/iocs", minted["key"]).status_code == 200
        assert ask(local, "GET", "/api/v1/iocs", minted["key"]).json()["error"]["code"] == "proxy_not_allowed"


def test_check_refuses_exhausted_account_with_429(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    for _ in range(10):
        assert ask(proxy, "GET", "/api/v1/iocs", key["key"]).status_code == 200
    response = ask(proxy, "GET", "/api/v1/iocs", key["key"])
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["X-RateLimit-Remaining"] == "0"


def test_check_in_header_mode_answers_403_with_the_true_status(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint()
    for _ in range(10):
        ask(proxy, "GET", "/api/v1/iocs", key["key"])
    response = proxy.get(
        CHECK + "?refusal=header",
        headers={"X-Original-Method": "GET", "X-Original-URI": "/api/v1/iocs", "Authorization": f"Bearer {key['key']}"},
    )
    assert response.status_code == 403
    assert response.headers["X-Gateway-Status"] == "429"
    carried = json.loads(response.headers["X-Gateway-Error"])
    assert carried["error"]["code"] == "rate_limit_exceeded"
    assert carried == response.json()
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["X-RateLimit-Remaining"] == "0"
    unknown = proxy.get(
        CHECK + "?refusal=header", headers={"X-Original-Method": "GET", "X-Original-URI": "/api/v1/iocs"}
    )
    assert unknown.status_code == 401
    assert unknown.headers["X-Gateway-Status"] == "401"


def test_check_allowlist_client_is_the_address_the_proxy_wrote() -> None:
    from app.web.gateway import client_address, forwarded_headers

    def client(*forwarded_for: bytes) -> str | None:
        headers = [(b"x-api-key", b"sk_live_x"), *((b"x-forwarded-for", v) for v in forwarded_for)]
        return client_address(forwarded_headers({"headers": headers})[1], "127.0.0.1")

    assert client(b"198.51.100.1, 203.0.113.9") == "203.0.113.9"
    assert client(b"198.51.100.1", b"203.0.113.9") == "203.0.113.9"  # the last line is the proxy's
    assert client() == "127.0.0.1"


def test_address_allowed_by_allowlist() -> None:
    import ipaddress

    networks = (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert address_allowed("203.0.113.9", networks)
    assert address_allowed("::ffff:203.0.113.9", networks)
    assert not address_allowed("198.51.100.1", networks)
    assert not address_allowed(None, networks)
    assert address_allowed("198.51.100.1", None)


def test_canonical_path_resolves_dots_and_refuses_ambiguity() -> None:
    assert canonical_path("/api/v1/iocs/../taxii2/x") == "/api/v1/taxii2/x"
    assert canonical_path("//api//v1/iocs/") == "/api/v1/iocs/"
    assert canonical_path("/api/v1/iocs/%41") == "/api/v1/iocs/A"
    assert canonical_path("/api/v1/iocs%2ftaxii2") is None
    assert canonical_path("/a\\b") is None
    assert canonical_path("/a%0d%0ab") is None
    assert canonical_path("/a%ff") is None


def test_scope_map_file_replaces_default(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": {"GET /feeds/{feed}/items": "iocs:read", "* /public/**": None}}))
    routes = load_route_map(path)
    assert routes.route_for("GET", "/feeds/abc/items").scopes == ("iocs:read",)
    assert routes.route_for("POST", "/public/x/y").scopes == ()
    assert routes.route_for("GET", "/api/v1/iocs") is None


def test_scope_map_read_from_upstream_openapi(tmp_path: Path) -> None:
    path = tmp_path / "upstream.yaml"
    path.write_text(
        "openapi: 3.1.0\n"
        "servers: [{url: 'https://intel.example/api/v1'}]\n"
        "paths:\n"
        "  /iocs/{id}:\n"
        "    get: {security: [{BearerAuth: [iocs:read]}]}\n"
        "  /export/stix:\n"
        "    get: {x-scopes: [export:stix], security: [{ApiKeyHeader: []}]}\n"
        "  /health:\n"
        "    get: {security: []}\n"
    )
    routes = load_route_map(path)
    assert routes.route_for("GET", "/api/v1/iocs/42").scopes == ("iocs:read",)
    assert routes.route_for("GET", "/api/v1/export/stix").scopes == ("export:stix",)
    assert routes.route_for("GET", "/api/v1/health").scopes == ()
    assert routes.route_for("DELETE", "/api/v1/iocs/42") is None


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not valid JSON"),
        ('{"routes": {"GET /iocs": "iocs:raed"}}', "'iocs:raed', which no tier grants"),
        ('{"routes": {"FETCH /iocs": "iocs:read"}}', "must be 'METHODS /path'"),
        ('{"routes": {}}', "non-empty 'routes'"),
    ],
)
def test_bad_scope_map_stops_start_up_in_one_line(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "routes.json"
    path.write_text(content)
    with pytest.raises(BadRouteMap):
        load_route_map(path)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {
                "APP_ENV": "development",
                "SUPABASE_JWT_SECRET": "x" * 40,
                "DATABASE_URL": f"sqlite:///{tmp_path}/k.db",
                "GATEWAY_SCOPE_MAP": str(path),
            }
        )
    message = str(raised.value)
    assert says in message
    assert "\n" not in message
    assert message.startswith("GATEWAY_SCOPE_MAP: ")


def test_gateway_settings_from_environment(tmp_path: Path) -> None:
    env = {"APP_ENV": "development", "SUPABASE_JWT_SECRET": "x" * 40, "DATABASE_URL": f"sqlite:///{tmp_path}/k.db"}
    settings = Settings.from_env({**env, "GATEWAY_ALLOW": "10.0.0.0/8, fd00::/8", "GATEWAY_ALLOW_UNMAPPED": "on"})
    assert [str(n) for n in settings.gateway_allow] == ["10.0.0.0/8", "fd00::/8"]
    assert settings.gateway_routes.allow_unmapped
    assert not Settings.from_env(env).gateway_routes.allow_unmapped
    with pytest.raises(ConfigError, match="GATEWAY_ALLOW"):
        Settings.from_env({**env, "GATEWAY_ALLOW": "10.0.0.1/8"})


def test_check_in_header_mode_allows_without_a_body(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    # nginx never reads the check's body; one left unread closes its kept-alive connection.
    key = mint()
    response = proxy.get(
        CHECK + "?refusal=header",
        headers={"X-Original-Method": "GET", "X-Original-URI": "/api/v1/iocs?limit=5", "X-API-Key": key["key"]},
    )
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["X-Key-Id"] == key["id"]
    assert response.headers["X-Upstream-Uri"] == "/api/v1/iocs?limit=5"
    assert response.headers["X-RateLimit-Remaining"] == "9"


def test_check_refuses_address_outside_key_allowlist_uncounted(
    proxy: Any,
    client: Any,
    mint: Callable[..., dict[str, Any]],
    session: Callable[..., dict[str, str]],
) -> None:
    key = mint(allowed_ips=["203.0.113.0/24"])
    inside = ask(proxy, "GET", "/api/v1/iocs", key["key"], **{"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
    assert inside.status_code == 200, inside.text
    assert inside.json()["data"]["allowed_ips"] == ["203.0.113.0/24"]
    outside = ask(proxy, "GET", "/api/v1/iocs", key["key"], **{"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert outside.status_code == 403
    assert outside.json()["error"]["code"] == "ip_not_allowed"
    assert outside.json()["error"]["details"]["address"] == "198.51.100.7"
    assert client.get(f"/api/v1/keys/{key['id']}", cookies=session()).json()["data"]["total_requests"] == 1


def test_check_refuses_a_restricted_key_the_routes_scope_naming_it(proxy: Any, mint: Callable[..., dict[str, Any]]) -> None:
    key = mint(scopes=["iocs:read"])
    assert ask(proxy, "GET", "/api/v1/iocs", key["key"]).status_code == 200
    refused = ask(proxy, "GET", "/api/v1/export/csv/latest", key["key"])
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["code"], error["details"]["missing_scopes"]) == ("insufficient_scope", ["export:csv"])
    assert "export:csv" in error["message"]
