"""The development server's conveniences: /dev/login, Prefer (code, example, delay), the
contract file, the key page; and their absence in production."""

from __future__ import annotations

import asyncio
import json
import re
from http.cookies import SimpleCookie

import pytest
from connexion.json_schema import Draft4ResponseValidator

from app import SPEC_PATH
from app.web.contract import ContractIndex
from tests.test_api import assert_error

KEYS = "/api/v1/keys"
START_OF_A_DAY = 1_795_046_400.0  # 2026-11-19T00:00:00Z
SPEC = json.loads(SPEC_PATH.read_text())
OPERATIONS = {
    op["operationId"]: (method.upper(), path.replace("{key_id}", "0b6f3c1e-4a5d-4e2f-9c8b-7a6d5e4f3b2a"))
    for path, item in SPEC["paths"].items() for method, op in item.items() if method in ("get", "post", "delete")
}
# The responses of the operations `Prefer` can be sent to (HEAD is answered as its GET).
RESPONSES = {op: responses for op, responses in ((op.operation_id, op.responses)
             for op in ContractIndex(SPEC).operations.values()) if op in OPERATIONS}


@pytest.fixture
def production(make_app):
    with make_app(env="production", key_page=False).test_client() as client:
        yield client


# -- /dev/login ------------------------------------------------------------------------------


def test_dev_login_sets_an_httponly_session_cookie_and_the_tier_then_redirects_to_the_key_page(client):
    response = client.get("/dev/login?user=tom@example&tier=pro", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = SimpleCookie(response.headers["set-cookie"])["sb-access-token"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    minted = client.post(KEYS, json={"name": "tom-laptop-dev"}, cookies={"sb-access-token": cookie.value})
    assert minted.status_code == 201
    assert minted.json()["data"]["tier"] == "pro"


def test_dev_login_redirects_to_a_next_path_on_this_server(client):
    response = client.get("/dev/login?user=tom&next=/ui/", follow_redirects=False)
    assert response.headers["location"] == "/ui/"


@pytest.mark.parametrize("target", ["//evil.example/", "http://evil.example/", "https://evil.example",
                                    "/\\evil.example", "\\\\evil.example", "javascript:alert(1)", "evil", "/%0d%0aX: y"])
def test_dev_login_never_redirects_to_another_host(client, target):
    from urllib.parse import quote

    response = client.get(f"/dev/login?user=tom&next={quote(target, safe='')}", follow_redirects=False)
    error = assert_error(response, 400, "invalid_parameter")
    assert error["details"]["field"] == "next"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("query", ["", "user=", "user=tom&tier=platinum", "user=%20tom"])
def test_dev_login_refuses_a_bad_user_or_tier(client, query):
    assert_error(client.get(f"/dev/login?{query}", follow_redirects=False), 400, "invalid_parameter")


def test_dev_login_with_an_empty_tier_keeps_the_accounts_tier(client):
    # The key page's form sends `tier=` when "keep current tier" is chosen.
    client.get("/dev/login?user=tom&tier=pro", follow_redirects=False)
    response = client.get("/dev/login?user=tom&tier=", follow_redirects=False)
    assert response.status_code == 303
    cookie = SimpleCookie(response.headers["set-cookie"])["sb-access-token"]
    minted = client.post(KEYS, json={"name": "tom-laptop-dev"}, cookies={"sb-access-token": cookie.value})
    assert minted.json()["data"]["tier"] == "pro"


def test_the_key_pages_sign_in_form_keeps_the_current_tier_unless_one_is_chosen(client):
    form = re.search(r'<form id="signin-form".*?</form>', client.get("/").text, re.S).group(0)
    select = re.search(r'<select name="tier">(.*?)</select>', form, re.S).group(1)
    options = re.findall(r'<option value="([^"]*)"( selected)?>', select)
    assert options[0] == ("", " selected")  # sent as `tier=`: the account keeps its tier
    assert {value for value, _ in options[1:]} == {"free", "pro"}


def test_dev_logout_clears_the_session_cookie_and_redirects_to_the_key_page(client):
    client.get("/dev/login?user=tom", follow_redirects=False)
    response = client.get("/dev/logout", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = SimpleCookie(response.headers["set-cookie"])["sb-access-token"]
    assert cookie.value == "" and cookie["max-age"] == "0" and cookie["path"] == "/" and cookie["httponly"]
    assert_error(client.get(KEYS), 401, "missing_session")


def test_dev_logout_redirects_only_to_a_path_on_this_server(client):
    assert client.get("/dev/logout?next=/ui/", follow_redirects=False).headers["location"] == "/ui/"
    response = client.get("/dev/logout?next=//evil.example/", follow_redirects=False)
    assert assert_error(response, 400, "invalid_parameter")["details"]["field"] == "next"


def test_the_key_page_carries_the_poor_name_rule_that_minting_uses(client):
    from html import unescape

    from app.domain.keys import NAME_HINT, USELESS_NAME

    body = re.search(r"<body([^>]*)>", client.get("/").text).group(1)
    attributes = {name: unescape(value) for name, value in re.findall(r'data-([a-z-]+)="([^"]*)"', body)}
    assert attributes["poor-name"] == USELESS_NAME.pattern and USELESS_NAME.flags & re.IGNORECASE
    assert attributes["name-hint"] == NAME_HINT
    assert attributes["dev-login"] == "on"


# -- Prefer: code ----------------------------------------------------------------------------


@pytest.mark.parametrize("operation,code", [(op, code) for op, responses in RESPONSES.items()
                                            for code in responses])
def test_prefer_code_answers_every_documented_status_as_the_contract_documents_it(client, operation, code):
    method, path = OPERATIONS[operation]
    response = client.request(method, path, headers={"Prefer": f"code={code}"})
    assert response.status_code == int(code)
    documented = RESPONSES[operation][code]
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in response.headers, (operation, code, name)
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if schema is not None:
        Draft4ResponseValidator(schema).validate(response.json())
    if code.startswith(("4", "5")):
        sent = assert_error(response, int(code), response.json()["error"]["code"])["code"]
        # A code the operation's examples show: never one it cannot send (the vendor's 401
        # example on createAPIKey, `missing_api_key`, is the one such example kept as published).
        media = documented.get("content", {}).get("application/json", {})
        shown = {example["value"]["error"]["code"] for example in media.get("examples", {}).values()}
        shown |= {media["example"]["error"]["code"]} if "example" in media else set()
        if shown and (operation, code) != ("createAPIKey", "401"):
            assert sent in shown, (operation, code, sent)


def test_prefer_code_404_on_metrics_is_not_found_as_a_real_one_is(client):
    forced = assert_error(client.get("/metrics", headers={"Prefer": "code=404"}), 404, "not_found")
    real = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})  # from no trusted proxy
    assert_error(real, 404, "not_found")
    assert forced["message"] == real.json()["error"]["message"]


def test_prefer_code_does_not_do_the_operation(client, session):
    response = client.post(KEYS, json={"name": "never-minted"}, cookies=session(), headers={"Prefer": "code=201"})
    assert response.status_code == 201
    assert client.get(KEYS, cookies=session()).json()["data"] == []


def test_prefer_code_429_is_realistic_with_retry_after_and_rate_limit_headers(client):
    response = client.post(KEYS, headers={"Prefer": "code=429"})
    error = assert_error(response, 429, "rate_limit_exceeded")
    assert int(response.headers["retry-after"]) == error["details"]["retry_after"] > 0
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert int(response.headers["x-ratelimit-limit"]) == error["details"]["limit"]
    assert "retry after" in error["message"]


def test_prefer_code_401_on_key_management_is_a_missing_session(client):
    assert_error(client.get(KEYS, headers={"Prefer": "code=401"}), 401, "missing_session")
    assert_error(client.get("/api/v1/whoami", headers={"Prefer": "code=401"}), 401, "missing_api_key")
    assert_error(client.post(KEYS, headers={"Prefer": "code=401"}), 401, "missing_session")


def test_prefer_code_the_operation_does_not_document_is_a_400_listing_those_it_does(client):
    import json

    from app import SPEC_PATH

    documented = sorted(int(s) for s in json.loads(SPEC_PATH.read_text())["paths"]["/api/v1/keys"]["get"]["responses"])
    assert {200, 400, 401, 429, 500, 503} <= set(documented)
    error = assert_error(client.get(KEYS, headers={"Prefer": "code=418"}), 400, "invalid_parameter")
    assert error["details"]["expected"] == documented
    assert ", ".join(map(str, documented)) in error["message"]


SUCCESSES = [(op, code) for op, responses in RESPONSES.items() for code in responses if code.startswith("2")]
NAMED_EXAMPLES = [
    (op, code, name) for op, responses in RESPONSES.items() for code, response in responses.items()
    for media in response.get("content", {}).values() for name in media.get("examples", {})
]


def strings(value):
    """Every string in a JSON value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def keys_shown(value):
    """Every object in a JSON value that shows a key's secret."""
    if isinstance(value, dict):
        if "key" in value:
            yield value
        for item in value.values():
            yield from keys_shown(item)
    elif isinstance(value, list):
        for item in value:
            yield from keys_shown(item)


def assert_coherent(response, operation: str, code: str) -> None:
    """The answer is valid, realistic, and its body and rate-limit headers tell the same story."""
    from app.domain import keymaterial

    documented = RESPONSES[operation][code]
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in response.headers, (operation, code, name)
    if code == "204":
        assert response.content == b""
        return
    if "application/json" not in documented["content"]:
        media_type = next(iter(documented["content"]))
        assert response.headers["content-type"] == media_type
        assert response.text == documented["content"][media_type]["examples"]["counters"]["value"]
        return
    body = response.json()
    Draft4ResponseValidator(documented["content"]["application/json"]["schema"]).validate(body)
    assert "string" not in set(strings(body)), (operation, code)  # schema filler
    for shown in keys_shown(body):
        assert keymaterial.is_well_formed(shown["key"]), shown["key"]
        assert shown["full_key"] == shown["key"] and shown["key_preview"] == keymaterial.preview(shown["key"])
    if "ratelimit-policy" in response.headers:
        policy = re.fullmatch(r'"minute";q=([0-9]+);w=60, "day";q=([0-9]+);w=86400', response.headers["ratelimit-policy"])
        left = re.fullmatch(r'"minute";r=([0-9]+);t=[0-9]+, "day";r=([0-9]+);t=[0-9]+', response.headers["ratelimit"])
        assert policy and left
        assert response.headers["x-ratelimit-limit"] == policy.group(1)
        assert int(response.headers["x-ratelimit-remaining"]) == min(int(left.group(1)), int(left.group(2)))
        windows = body["data"].get("rate_limit") if isinstance(body.get("data"), dict) else None
        if windows is not None:  # whoami: the windows it states are the ones the headers describe
            minute, day = windows["minute"], windows["day"]
            assert (minute["limit"], day["limit"]) == (int(policy.group(1)), int(policy.group(2)))
            assert (minute["remaining"], day["remaining"]) == (int(left.group(1)), int(left.group(2)))
            if "rate_limit_per_minute" in body["data"]:  # whoami's key states its tier's limits too
                assert (body["data"]["rate_limit_per_minute"], body["data"]["rate_limit_per_day"]) == (
                    minute["limit"], day["limit"])
            binding = minute if minute["remaining"] <= day["remaining"] else day
            assert response.headers["x-ratelimit-reset"] == str(binding["reset"])


@pytest.mark.parametrize("operation,code", SUCCESSES)
def test_prefer_code_2xx_answers_a_realistic_example_that_agrees_with_its_headers(client, operation, code):
    method, path = OPERATIONS[operation]
    response = client.request(method, path, headers={"Prefer": f"code={code}"})
    assert response.status_code == int(code)
    assert_coherent(response, operation, code)


def test_every_documented_success_has_a_named_example():
    for operation, code in SUCCESSES:
        if code != "204":
            assert any(media.get("examples") for media in RESPONSES[operation][code]["content"].values()), (
                operation, code)


def test_a_forced_key_is_freshly_minted_for_each_answer(client):
    first = client.post(KEYS, headers={"Prefer": "code=201"}).json()["data"]
    second = client.post(KEYS, headers={"Prefer": "example=descriptive_name"}).json()["data"]
    assert first["key"] != second["key"]


# -- Prefer: example -------------------------------------------------------------------------


def test_prefer_example_answers_with_the_named_example(client):
    response = client.post(KEYS, headers={"Prefer": "example=poor_name"})
    assert response.status_code == 201
    assert response.json()["meta"]["name_hint"]
    conflict = client.post(KEYS, headers={"Prefer": "code=409, example=key_limit_reached"})
    assert_error(conflict, 409, "key_limit_reached")
    day = client.get("/api/v1/whoami", headers={"Prefer": 'code=429; example="day"'})
    assert assert_error(day, 429, "rate_limit_exceeded")["details"]["window"] == "day"


@pytest.mark.parametrize("operation,code,name", NAMED_EXAMPLES)
def test_prefer_every_named_example_can_be_forced(client, operation, code, name):
    method, path = OPERATIONS[operation]
    response = client.request(method, path, headers={"Prefer": f"code={code}, example={name}"})
    assert response.status_code == int(code)
    example = next(m["examples"][name]["value"] for m in RESPONSES[operation][code]["content"].values()
                   if name in m.get("examples", {}))
    if code.startswith(("4", "5")):
        error = assert_error(response, int(code), example["error"]["code"])
        # A 429's wait is the forced window's real one, the example's figure replaced by it.
        wait = f"retry after {error['details'].get('retry_after')} s"
        assert error["message"] == re.sub(r"retry after \d+ s", wait, example["error"]["message"])
        assert set(error["details"]) == set(example["error"]["details"])
    else:
        assert_coherent(response, operation, code)


@pytest.mark.parametrize("name,code,reason", [("revoked_by_owner", "revoked_api_key", "owner"),
                                              ("revoked_as_leaked", "revoked_api_key", "leaked"),
                                              ("expired", "expired_api_key", None),
                                              ("rolled", "expired_api_key", None)])
def test_prefer_forces_each_state_a_key_is_refused_in_on_whoami(client, name, code, reason):
    response = client.get("/api/v1/whoami", headers={"Prefer": f"code=401, example={name}"})
    details = assert_error(response, 401, code)["details"]
    assert details.get("reason") == reason
    assert ("replaced_by" in details) == (name == "rolled")


def forced_now(clock) -> str:
    """The time forced answers are coherent with: the service's clock, weeks after the examples were written."""
    from app.domain.keys import rfc3339

    clock.advance(30 * 86400)
    return rfc3339(int(clock() * 1_000_000))


def test_prefer_rolled_key_example_is_in_its_grace_period_now(client, clock):
    now = forced_now(clock)
    key = client.get(OPERATIONS["getAPIKey"][1], headers={"Prefer": "example=rolled_key"}).json()["data"]
    assert key["status"] == "active" and key["replaced_by"]
    assert key["created_at"] < key["last_used_at"] <= now < key["expires_at"]


def test_prefer_forced_roll_leaves_the_old_key_working_for_its_grace_period_from_now(client, clock):
    now = forced_now(clock)
    method, path = OPERATIONS["rollAPIKey"]
    answer = client.request(method, path, headers={"Prefer": "code=201"}).json()
    assert answer["data"]["created_at"] == now
    assert now < answer["meta"]["rolled_from"]["expires_at"] < answer["data"]["expires_at"]


def test_prefer_forced_whoami_was_last_used_in_the_minute_its_headers_count(client, clock):
    from app.domain.keys import rfc3339

    now = forced_now(clock)
    response = client.get("/api/v1/whoami", headers={"Prefer": "code=200"})
    key = response.json()["data"]
    minute_start = rfc3339((int(response.headers["x-ratelimit-reset"]) - 60) * 1_000_000)
    assert minute_start <= key["last_used_at"] <= now and key["created_at"] < key["last_used_at"]
    assert key["expires_at"] is None or key["expires_at"] > now


@pytest.mark.parametrize("example,length", [("minute", 60), ("day", 86400)])
def test_prefer_forced_429_resets_when_its_window_ends(client, clock, example, length):
    clock.now = START_OF_A_DAY + 3 * 3600 + 17 * 60 + 11.5  # 03:17:11.5 UTC
    response = client.post(KEYS, headers={"Prefer": f"code=429, example={example}"})
    details = assert_error(response, 429, "rate_limit_exceeded")["details"]
    second = int(clock())
    end = second - second % length + length  # the minute's end; the day's, at UTC midnight
    assert details["reset"] == end and details["retry_after"] == end - second
    assert response.headers["retry-after"] == str(end - second)
    assert re.findall(r"retry after (\d+) s", response.json()["error"]["message"]) in ([], [str(end - second)])
    assert f'"{example}";r=0;t={end - second}' in response.headers["ratelimit"]


def test_prefer_example_unknown_is_a_400_naming_the_known_ones(client):
    error = assert_error(client.post(KEYS, headers={"Prefer": "example=nope"}), 400, "invalid_parameter")
    assert "descriptive_name" in error["details"]["expected"] and "poor_name" in error["details"]["expected"]


# -- Prefer: delay and MOCK_DELAY_MS ---------------------------------------------------------


@pytest.fixture
def slept(monkeypatch):
    """Record the latency asked for instead of waiting on the wall clock."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return waits


def test_prefer_delay_waits_on_the_event_loop_then_does_the_operation(client, session, slept):
    response = client.post(KEYS, json={"name": "slow-mint"}, cookies=session(), headers={"Prefer": "delay=1500"})
    assert response.status_code == 201
    assert slept == [1.5]


def test_prefer_delay_combines_with_code(client, slept):
    assert client.get(KEYS, headers={"Prefer": "code=503, delay=250"}).status_code == 503
    assert slept == [0.25]


@pytest.mark.parametrize("value", ["10001", "99999999999999999999", "0" * 4 + "10001"])
def test_prefer_delay_out_of_bounds_is_a_400(client, slept, value):
    error = assert_error(client.get(KEYS, headers={"Prefer": f"delay={value}"}), 400, "invalid_parameter")
    assert (error["details"]["constraint"], error["details"]["expected"]) == ("maximum", 10_000)
    assert slept == []


@pytest.mark.parametrize("value", ["-1", "1.5", "soon", "abc", "0x10", "²", "５"])
def test_prefer_delay_not_in_ascii_digits_is_a_400_naming_the_pattern_and_echoing_the_value(client, slept, value):
    response = client.get(KEYS, headers={"Prefer": f"delay={value}".encode()})  # sent as UTF-8 bytes
    error = assert_error(response, 400, "invalid_parameter")
    assert (error["details"]["constraint"], error["details"]["expected"]) == ("pattern", "^[0-9]+$")
    assert f"delay={value} is not a whole number of milliseconds in ASCII digits" in error["message"]
    assert slept == []


def test_prefer_code_in_digits_other_than_ascii_is_echoed_as_sent_and_named_a_pattern_failure(client):
    response = client.get(KEYS, headers={"Prefer": "code=２００".encode()})
    error = assert_error(response, 400, "invalid_parameter")
    assert "code=２００ is not a status code in ASCII digits" in error["message"]
    assert "\u00ef" not in response.text and "ï" not in error["message"]
    assert (error["details"]["constraint"], error["details"]["expected"]) == ("pattern", "^[0-9]+$")


@pytest.mark.parametrize("prefer", ["delay= 5", "delay =5", "delay=5;foo", "delay", "code=429 ;x=1", "code = 429"])
def test_prefer_written_otherwise_than_name_equals_value_is_a_400(client, slept, prefer):
    error = assert_error(client.get(KEYS, headers={"Prefer": prefer}), 400, "invalid_parameter")
    assert error["details"]["constraint"] == "pattern" and error["details"]["field"] == "Prefer"
    assert prefer.strip() in error["message"]
    assert slept == []


def test_prefer_semicolons_between_known_preferences_and_unknown_preferences_are_read_as_ever(client, slept):
    assert client.post(KEYS, headers={"Prefer": "code=429; example=day"}).json()["error"]["details"]["window"] == "day"
    assert client.get(KEYS, headers={"Prefer": "return=minimal; x=1, code=503, delay=\"5\""}).status_code == 503
    assert slept == [0.005]


def test_prefer_delay_in_digits_other_than_ascii_is_a_400_not_a_500(tmp_path):
    from tests.live import LiveServer
    from tests.rawhttp import exchange, request_bytes

    # Over a bare socket, byte for byte: a header is read as Latin-1, where 0xB2 is '²', which
    # str.isdigit() admits and int() refuses (a test client would re-encode it as UTF-8).
    with LiveServer("run", tmp_path) as server:
        for value in (b"\xb2", b"1\xb3", b"\xb9\xb9", b"9" * 5000):
            answer = exchange(server.port, request_bytes("GET", KEYS, [(b"Prefer", b"delay=" + value)]))
            assert answer.status == 400, (value[:10], str(answer))
            error = answer.json()["error"]
            assert (error["code"], error["details"]["field"]) == ("invalid_parameter", "Prefer")
        assert "Traceback" not in server.output()


def test_mock_delay_ms_delays_every_operation_and_prefer_overrides_it(make_app, session, slept):
    with make_app(mock_delay_ms=300).test_client() as client:
        client.get(KEYS, cookies=session())
        client.get(KEYS, cookies=session(), headers={"Prefer": "delay=0"})
    assert slept == [0.3]


# -- the contract file and the key page -------------------------------------------------------


def test_openapi_json_is_the_repository_file_byte_for_byte(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.content == SPEC_PATH.read_bytes()
    assert '"$ref"' in response.text and response.json()["servers"] == SPEC["servers"]


def test_swagger_ui_reads_a_copy_pointed_at_this_server(client):
    assert "/ui/openapi.json" in client.get("/ui/").text
    assert client.get("/ui/openapi.json").json()["servers"] == [{"url": ""}]


def test_the_key_page_allows_no_inline_script_and_no_other_origin(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http" not in policy and "*" not in policy
    # Its own requests must say which page sent them (the cross-site rule reads Origin).
    assert page.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in page.text and not re.search(r"\son[a-z]+\s*=", page.text)  # no inline script
    for asset in ("/static/keys.js", "/static/keys.css"):
        assert client.get(asset).status_code == 200


# -- absent in production --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dev/login?user=tom", "/dev/logout", "/", "/static/keys.js"])
def test_development_routes_are_404_in_production(production, path):
    assert_error(production.get(path, follow_redirects=False), 404, "not_found")


def test_prefer_is_ignored_in_production(production, session, slept):
    response = production.post(KEYS, json={"name": "real-mint"}, cookies=session(),
                               headers={"Prefer": "code=429, delay=5000"})
    assert response.status_code == 201
    assert slept == []


def test_the_key_page_can_be_turned_on_in_production(make_app):
    with make_app(env="production", key_page=True).test_client() as client:
        page = client.get("/")
        assert page.status_code == 200
        assert 'data-dev-login="off"' in page.text  # the page offers no /dev/login or /dev/logout
        assert client.get("/dev/login?user=tom", follow_redirects=False).status_code == 404


def test_a_named_429_example_and_its_headers_tell_the_same_wait(client):
    response = client.get(KEYS, headers={"Prefer": "code=429, example=day"})
    error = assert_error(response, 429, "rate_limit_exceeded")
    details = error["details"]
    assert response.headers["retry-after"] == str(details["retry_after"])
    assert response.headers["x-ratelimit-reset"] == str(details["reset"])
    assert details["reset"] > 1_795_000_000  # from now, not a date in the example's past


def test_a_forced_503_says_when_to_retry_as_a_real_one_does(client):
    response = client.get("/healthz", headers={"Prefer": "code=503"})
    assert_error(response, 503, "service_unavailable")
    assert int(response.headers["retry-after"]) >= 1


def test_prefer_answers_carry_ratelimit_fields_for_the_operations_real_limits(client, settings):
    admitted = client.get("/api/v1/whoami", headers={"Prefer": "code=200"})
    assert admitted.headers["ratelimit-policy"] == '"minute";q=10;w=60, "day";q=1000;w=86400'  # a free key's
    windows = admitted.json()["data"]["rate_limit"]  # the counts the example states
    assert re.fullmatch(rf'"minute";r={windows["minute"]["remaining"]};t=([0-9]+), "day";r={windows["day"]["remaining"]};t=([0-9]+)',
                        admitted.headers["ratelimit"])
    pro = client.get("/api/v1/whoami", headers={"Prefer": "code=200, example=pro_key"})
    assert pro.headers["ratelimit-policy"] == '"minute";q=1000;w=60, "day";q=1000000;w=86400'  # the tier it shows
    refused = client.get("/api/v1/whoami", headers={"Prefer": "code=429"})
    retry_after = refused.headers["retry-after"]
    assert re.fullmatch(rf'"minute";r=0;t={retry_after}, "day";r=990;t=[0-9]+', refused.headers["ratelimit"])
    refused = client.get(KEYS, headers={"Prefer": "code=429"})
    assert refused.headers["ratelimit-policy"] == (
        f'"minute";q={settings.management_limit_per_minute};w=60, "day";q={settings.management_limit_per_day};w=86400')
    # A named example keeps its own figures: the headers describe the limits its body states.
    day = client.get(KEYS, headers={"Prefer": "code=429, example=day"})
    stated = day.json()["error"]["details"]["limit"]
    assert day.headers["ratelimit-policy"] == f'"minute";q=10;w=60, "day";q={stated};w=86400'
    wait = day.json()["error"]["details"]["retry_after"]
    assert day.headers["retry-after"] == str(wait)
    assert re.fullmatch(rf'"minute";r=0;t=[0-9]+, "day";r=0;t={wait}', day.headers["ratelimit"])
