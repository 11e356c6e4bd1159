from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest

from app import SPEC_PATH
from app.domain.errors import AnonymousSession, InvalidSession, MissingSession
from app.domain.sessions import SessionVerifier, issue_token
from tests.conftest import SECRET, START

NOW = START
COOKIE = "sb-access-token"

# HS384/HS512 tokens signed with the (short for them) test secret are built on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    base = {"sub": "user-1", "aud": "authenticated", "role": "authenticated", "iat": int(NOW), "exp": int(NOW) + 3600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{signature}"


# name -> token, built lazily so each stays self-describing.
BAD_TOKENS = {
    "wrong_secret": lambda: hs256(claims(), "another-secret-0123456789-0123456789-xyz"),
    "expired": lambda: hs256(claims(exp=int(NOW) - 1)),
    "expires_exactly_now": lambda: hs256(claims(exp=int(NOW))),
    "wrong_aud": lambda: hs256(claims(aud="anon")),
    "missing_aud": lambda: hs256(claims(aud=None)),
    "no_sub": lambda: hs256(claims(sub=None)),
    "empty_sub": lambda: hs256(claims(sub="")),
    "non_string_sub": lambda: hs256(claims(sub=42)),
    "overlong_sub": lambda: hs256(claims(sub="u" * 201)),
    "sub_with_newline": lambda: hs256(claims(sub="user-1\nINFO forged")),
    "missing_exp": lambda: hs256(claims(exp=None)),
    "string_exp": lambda: hs256(claims(exp=str(int(NOW) + 3600))),
    "infinite_exp": lambda: hs256(claims(exp=float("inf"))),
    "nan_exp": lambda: hs256(claims(exp=float("nan"))),
    "not_yet_valid": lambda: hs256(claims(nbf=int(NOW) + 60)),
    # Integers too large for a float once raised OverflowError: a 500, not a 401.
    "huge_exp": lambda: hs256(claims(exp=10**400)),
    "huge_negative_exp": lambda: hs256(claims(exp=-(10**400))),
    "huge_nbf": lambda: hs256(claims(nbf=10**400)),
    "huge_negative_nbf": lambda: hs256(claims(nbf=-(10**400))),
    "huge_iat": lambda: hs256(claims(iat=10**400)),
    # Finite, but no time: a session that would never expire, or was issued before 1970.
    "exp_1e308": lambda: hs256(claims(exp=1e308)),
    "exp_10_30": lambda: hs256(claims(exp=10**30)),
    "exp_after_9999": lambda: hs256(claims(exp=253_402_300_800)),
    "iat_before_1970": lambda: hs256(claims(iat=-(10**30))),
    "issued_in_the_future": lambda: hs256(claims(iat=int(NOW) + 3600)),
    "string_iat": lambda: hs256(claims(iat="yesterday")),
    "boolean_iat": lambda: hs256(claims(iat=True)),
    "alg_none": lambda: unsigned({"alg": "none", "typ": "JWT"}, claims()),
    "alg_none_with_hs256_signature": lambda: unsigned(
        {"alg": "none", "typ": "JWT"}, claims(), hs256(claims()).rsplit(".", 1)[1]
    ),
    "hs512_right_secret": lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
    "hs384_right_secret": lambda: jwt.encode(claims(), SECRET, algorithm="HS384"),
    "rs256_header": lambda: unsigned({"alg": "RS256", "typ": "JWT"}, claims(), b64(b"not-a-real-signature")),
    "tampered_payload": lambda: ".".join(
        [hs256(claims()).split(".")[0], b64(json.dumps(claims(sub="admin")).encode()), hs256(claims()).split(".")[2]]
    ),
    "garbage": lambda: "this-is-not-a-token",
    "two_segments": lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0",
    "non_json_segments": lambda: f"{b64(b'not json')}.{b64(b'also not json')}.{b64(b'sig')}",
    "json_array_payload": lambda: unsigned({"alg": "HS256", "typ": "JWT"}, ["sub"], "c2ln"),
    "bad_base64": lambda: "%%%.###.!!!",
}


@pytest.fixture
def verifier() -> SessionVerifier:
    return SessionVerifier(SECRET)


def test_valid_token_gives_its_sub(verifier):
    assert verifier.user_id(issue_token(SECRET, "user-42", NOW), NOW) == "user-42"


def test_token_is_valid_until_just_before_exp(verifier):
    token = issue_token(SECRET, "user-42", NOW, ttl_seconds=60)
    assert verifier.user_id(token, NOW + 59.9) == "user-42"
    with pytest.raises(InvalidSession):
        verifier.user_id(token, NOW + 60)


def test_expiry_uses_injected_now_not_wall_clock(verifier):
    # Issued and expired long ago by the wall clock, valid at the injected time.
    token = issue_token(SECRET, "user-1", 1_000_000_000, ttl_seconds=60)
    assert verifier.user_id(token, 1_000_000_030) == "user-1"


def test_leeway_accepts_recently_expired_token():
    token = issue_token(SECRET, "user-1", NOW, ttl_seconds=60)
    assert SessionVerifier(SECRET, leeway_seconds=30).user_id(token, NOW + 70) == "user-1"
    with pytest.raises(InvalidSession):
        SessionVerifier(SECRET, leeway_seconds=30).user_id(token, NOW + 90)


@pytest.mark.parametrize("token", [None, ""])
def test_missing_or_empty_token_raises_missing_session(verifier, token):
    with pytest.raises(MissingSession):
        verifier.user_id(token, NOW)


@pytest.mark.parametrize("name", BAD_TOKENS)
def test_bad_token_raises_invalid_session(verifier, name):
    with pytest.raises(InvalidSession):
        verifier.user_id(BAD_TOKENS[name](), NOW)


# -- through HTTP -------------------------------------------------------------------------


def assert_error_envelope(response, code: str) -> dict[str, Any]:
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert error["request_id"].startswith("req_")
    assert response.headers["X-Request-ID"] == error["request_id"]
    return error


def test_http_without_cookie_is_missing_session(client):
    assert_error_envelope(client.get("/api/v1/keys"), "missing_session")


@pytest.mark.parametrize("name", BAD_TOKENS)
def test_http_bad_token_is_invalid_session(client, name):
    token = BAD_TOKENS[name]()
    response = client.get("/api/v1/keys", cookies={COOKIE: token})
    assert_error_envelope(response, "invalid_session")
    assert token not in response.text


def test_http_valid_token_is_accepted(client, session):
    response = client.get("/api/v1/keys", cookies=session("user-1"))
    assert response.status_code == 200, response.text


def test_http_token_expired_by_fake_clock_is_invalid_session(client, session, clock):
    cookies = session("user-1", ttl=60)
    assert client.get("/api/v1/keys", cookies=cookies).status_code == 200
    clock.advance(60)
    response = client.get("/api/v1/keys", cookies=cookies)
    assert_error_envelope(response, "invalid_session")
    assert cookies[COOKIE] not in response.text


def test_a_token_verified_once_still_expires(verifier):
    token = issue_token(SECRET, "user-1", NOW, 60)
    assert verifier.user_id(token, NOW) == "user-1"
    assert verifier.user_id(token, NOW + 59) == "user-1"
    with pytest.raises(InvalidSession):
        verifier.user_id(token, NOW + 60)


def test_a_bad_token_stays_bad_when_asked_again(verifier):
    token = hs256(claims(), "another-secret-0123456789-0123456789-xyz")
    for _ in range(2):
        with pytest.raises(InvalidSession):
            verifier.user_id(token, NOW)


def test_iat_within_a_minute_of_clock_skew_is_accepted(verifier):
    assert verifier.user_id(hs256(claims(iat=int(NOW) + 59)), NOW) == "user-1"


def test_an_overlong_token_is_refused_before_its_signature_is_checked(monkeypatch):
    from app.domain.sessions import MAX_TOKEN_LENGTH

    verifier = SessionVerifier(SECRET)
    signed = hs256(claims(padding="x" * MAX_TOKEN_LENGTH))  # validly signed, but far too long
    checked: list[str] = []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: checked.append("decoded"))
    with pytest.raises(InvalidSession) as refusal:
        verifier.user_id(signed, NOW)
    assert refusal.value.details == {"limit_length": MAX_TOKEN_LENGTH}
    assert checked == []


def test_two_different_session_cookies_are_refused(client, session):
    alice, bob = session("alice")["sb-access-token"], session("bob")["sb-access-token"]
    response = client.get("/api/v1/keys", headers={"Cookie": f"{COOKIE}={alice}; {COOKIE}={bob}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_session"
    assert "2 different" in response.json()["error"]["message"]


def test_the_same_session_cookie_twice_is_one_session(client, session):
    alice = session("alice")["sb-access-token"]
    response = client.get("/api/v1/keys", headers={"Cookie": f"{COOKIE}={alice}; {COOKIE}={alice}"})
    assert response.status_code == 200, response.text


# -- anonymous sign-ins ---------------------------------------------------------------------

ANONYMOUS_CLAIMS = {
    "is_anonymous": {"is_anonymous": True},
    "role_anon": {"role": "anon"},
    "amr_method": {"amr": [{"method": "anonymous", "timestamp": int(NOW)}]},
    "amr_string": {"amr": ["anonymous"]},
    # Other spellings of the same marks: a truthy flag, any case.
    "is_anonymous_string": {"is_anonymous": "true"},
    "is_anonymous_string_upper": {"is_anonymous": " TRUE"},
    "is_anonymous_one": {"is_anonymous": 1},
    "is_anonymous_string_one": {"is_anonymous": "1"},
    "role_anon_capitalised": {"role": "Anon"},
    "role_anonymous": {"role": "ANONYMOUS"},
    "amr_method_capitalised": {"amr": [{"method": "Anonymous", "timestamp": int(NOW)}]},
    "amr_string_upper": {"amr": ["ANONYMOUS"]},
}


@pytest.mark.parametrize("name", ANONYMOUS_CLAIMS)
def test_an_anonymous_session_is_refused_unless_allowed(name):
    token = hs256(claims(**ANONYMOUS_CLAIMS[name]))
    with pytest.raises(AnonymousSession):
        SessionVerifier(SECRET).user_id(token, NOW)
    assert SessionVerifier(SECRET, allow_anonymous=True).user_id(token, NOW) == "user-1"


def test_a_signed_in_session_with_other_sign_in_methods_is_not_anonymous():
    token = hs256(claims(is_anonymous=False, amr=[{"method": "password", "timestamp": int(NOW)}, "otp"]))
    assert SessionVerifier(SECRET).user_id(token, NOW) == "user-1"
    for flag in ("false", "False", 0, "0", None, ""):
        assert SessionVerifier(SECRET).user_id(hs256(claims(is_anonymous=flag)), NOW) == "user-1"


def test_http_an_anonymous_session_mints_nothing_and_gets_401_anonymous_session(client, make_app):
    token = hs256(claims(is_anonymous=True, role="anon"))
    response = client.post("/api/v1/keys", json={"name": "anon-key"}, cookies={COOKIE: token})
    error = assert_error_envelope(response, "anonymous_session")
    assert "anonymous" in error["message"]
    reasons = json.loads(SPEC_PATH.read_text())["components"]["schemas"]["ErrorDetails"]["properties"]["reason"]["enum"]
    assert error["details"] == {"reason": "anonymous"} and "anonymous" in reasons
    for path in ("/api/v1/keys", "/api/v1/key-events"):
        assert_error_envelope(client.get(path, cookies={COOKIE: token}), "anonymous_session")
    with make_app(allow_anonymous_sessions=True).test_client() as allowed:
        assert allowed.post("/api/v1/keys", json={"name": "anon-key"}, cookies={COOKIE: token}).status_code == 201
    assert client.get("/api/v1/keys", cookies={COOKIE: hs256(claims())}).json()["data"] != []
