"""A hostile-input corpus against `make serve`'s two workers, over bare sockets.

Every case is a request a hostile or broken client could send. Each must be refused with a
4xx in the contract's envelope (or, where the HTTP server refuses it before the app sees
it, a bare 4xx or a closed connection, accepted case by case), leave the server healthy
for everyone else, and write nothing: the attacking account's keys and key events read
the same afterwards. Each attack comes from an account of its own.

Decisions written down here:
- A body with the same member twice (`{"name":"a","name":"b"}`) is refused (400
  `invalid_json`): two parsers in a chain may each pick a different one, and the client
  meant one of them; guessing which would mint a key under a name the client may not see.
- A UTF-8 byte order mark before the JSON text is refused like any other bytes before it.
- `1.0` and `1e2` are not integers (JSON Schema draft 4, which the contract follows).
- A header folded onto a continuation line (obs-fold), a space before a header's colon,
  conflicting Content-Length, Content-Length with Transfer-Encoding: refused (RFC 9112),
  never read one way here and another way by a proxy in front.
- A name with an invisible character, or surrounding spaces, beside an active key named
  without it: refused, either as invalid (400) or as the same name (409); never a second
  key that reads the same.
- Dot segments and encoded slashes are not resolved: no route has them, so 404 (or 400
  for a key id that is not one), and never a request that lands on another resource.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.domain.sessions import issue_token
from tests.conftest import fresh_pg_schema, schema_url
from tests.live import LiveServer
from tests.rawhttp import Answer, exchange, request_bytes

SECRET = "hostile-test-secret-0123456789-0123456789"
ANY_4XX = frozenset(range(400, 500))
ISSUED: list[str] = []  # every session token and key this module handed out (see the last test)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The production server the corpus attacks, on each engine (PostgreSQL on a fresh schema)."""
    tmp = tmp_path_factory.mktemp("hostile")
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": SECRET, "WEB_CONCURRENCY": "2"}
    if request.param == "sqlite":
        with LiveServer("serve", tmp, env) as server:
            yield server
        return
    for schema in fresh_pg_schema():
        with LiveServer("serve", tmp, {**env, "DATABASE_URL": schema_url(schema)}) as server:
            yield server


class Account:
    """A fresh account to attack from, with what it had stored before the attack."""

    def __init__(self, server: LiveServer, label: str) -> None:
        self.server = server
        self.user = f"hostile-{label}-{time.time_ns()}"
        self.token = issue_token(SECRET, self.user, time.time(), 3600)
        self.cookie = b"sb-access-token=" + self.token.encode()
        ISSUED.append(self.token)
        self.keys: list[dict[str, Any]] = []

    def mint(self, name: str) -> dict[str, Any]:
        status, _, body = self.server.request(
            "POST", "/api/v1/keys", {"name": name}, {"Cookie": self.cookie.decode()}
        )
        assert status == 201, body
        self.keys.append(body["data"])
        ISSUED.append(body["data"]["key"])
        return body["data"]

    def stored(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return the account's keys and key events, as the account itself reads them."""
        headers = {"Cookie": self.cookie.decode()}
        status, _, keys = self.server.request("GET", "/api/v1/keys?limit=100", headers=headers)
        assert status == 200, keys
        status, _, events = self.server.request("GET", "/api/v1/key-events?limit=100", headers=headers)
        assert status == 200, events
        return keys["data"], events["data"]


def mint_request(cookie: bytes, body: bytes, content_type: bytes = b"application/json",
                 extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    headers = [(b"Cookie", cookie), (b"Content-Type", content_type), *(extra or [])]
    return request_bytes("POST", "/api/v1/keys", headers, body)


VALID = b'{"name":"must-not-be-minted"}'


def assert_refused(
    answer: Answer, statuses: frozenset[int] | set[int] = ANY_4XX, codes: set[str] | None = None,
    transport: bool = False, secrets: tuple[str, ...] = (),
) -> None:
    """A 4xx in the envelope; with `transport`, also a bare 4xx or a closed connection."""
    if answer.status is None:
        assert transport, f"the server closed the connection without an answer ({answer})"
        return
    assert answer.status in statuses, str(answer)
    for secret in secrets:
        assert secret.encode() not in answer.body, "a secret was echoed back"
    try:
        error = answer.json()["error"]
    except (ValueError, KeyError, TypeError):
        assert transport, f"not the contract's error envelope: {answer}"
        assert answer.status in ANY_4XX, str(answer)
        return
    assert answer.header("content-type") == "application/json", answer.headers
    assert set(error) == {"code", "message", "details", "request_id"}, error
    assert error["request_id"] == answer.header("x-request-id")
    if codes is not None:
        assert error["code"] in codes, str(answer)


def assert_healthy(server: LiveServer, within: float = 2.0) -> None:
    answer = exchange(server.port, request_bytes("GET", "/healthz"), timeout=within)
    assert answer.status == 200 and answer.json()["status"] == "ok", str(answer)


# -- malformed JSON bodies on POST /api/v1/keys, with a valid session --------------------

BAD_JSON = {"invalid_json"}
BAD_FIELD = {"invalid_parameter"}
EITHER = BAD_JSON | BAD_FIELD


def deep(depth: int) -> bytes:
    return b'{"name":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


JSON_CASES = [
    ("exponent-1e999", b'{"name":"huge-exponent","expires_in_days":1e999}', EITHER),
    ("integer-5000-digits", b'{"name":"huge-integer","expires_in_days":' + b"9" * 5000 + b"}", EITHER),
    ("negative-integer-5000-digits", b'{"name":"huge-negative","expires_in_days":-' + b"9" * 5000 + b"}", EITHER),
    ("name-is-5000-digit-integer", b'{"name":' + b"1" * 5000 + b"}", EITHER),
    ("minus-zero", b'{"name":"minus-zero","expires_in_days":-0}', BAD_FIELD),
    ("float-1.0-for-integer", b'{"name":"float-days","expires_in_days":1.0}', BAD_FIELD),
    ("exponent-1e2-for-integer", b'{"name":"exponent-days","expires_in_days":1e2}', BAD_FIELD),
    ("nan", b'{"name":"nan-days","expires_in_days":NaN}', EITHER),
    ("infinity", b'{"name":"infinite-days","expires_in_days":Infinity}', EITHER),
    ("minus-infinity", b'{"name":"minus-infinite","expires_in_days":-Infinity}', EITHER),
    ("nan-as-name", b'{"name":NaN}', EITHER),
    ("arrays-nested-10000", b"[" * 10_000 + b"]" * 10_000, EITHER),
    ("objects-nested-10000-in-name", deep(10_000), EITHER),
    ("duplicate-member", b'{"name":"dup-first","name":"dup-second"}', BAD_JSON),
    ("duplicate-member-escaped", b'{"name":"dup-first","n\\u0061me":"dup-second"}', BAD_JSON),
    ("duplicate-member-days", b'{"name":"dup-days","expires_in_days":1,"expires_in_days":365}', BAD_JSON),
    ("invalid-utf8-byte", b'{"name":"bad-\xff-utf8"}', BAD_JSON),
    ("overlong-utf8-slash", b'{"name":"overlong-\xc0\xaf"}', BAD_JSON),
    ("utf8-encoded-surrogate", b'{"name":"surrogate-\xed\xa0\x80"}', BAD_JSON),
    ("truncated-utf8-sequence", b'{"name":"cut-\xe2\x82"}', BAD_JSON),
    ("lone-high-surrogate", b'{"name":"lone-\\ud800"}', BAD_JSON),
    ("lone-low-surrogate", b'{"name":"lone-\\udc00"}', BAD_JSON),
    ("reversed-surrogate-pair", b'{"name":"rev-\\udc00\\ud800"}', BAD_JSON),
    ("lone-surrogate-in-member-name", b'{"name":"x","\\ud800":1}', BAD_JSON),
    ("utf8-bom", b'\xef\xbb\xbf{"name":"bom-first"}', BAD_JSON),
    ("trailing-garbage", b'{"name":"trailing"} x', BAD_JSON),
    ("two-documents", b'{"name":"first-doc"}{"name":"second-doc"}', BAD_JSON),
    ("trailing-nul", b'{"name":"trailing-nul"}\x00', BAD_JSON),
    ("raw-control-character-in-string", b'{"name":"tab\there"}', BAD_JSON),
    ("single-quotes", b"{'name':'single'}", BAD_JSON),
    ("top-level-array", b'[{"name":"in-an-array"}]', BAD_FIELD),
    ("top-level-string", b'"name"', BAD_FIELD),
    ("top-level-number", b"42", BAD_FIELD),
    ("top-level-null", b"null", BAD_FIELD),
    ("top-level-true", b"true", BAD_FIELD),
    ("empty-body", b"", EITHER),
    ("whitespace-only-body", b" \t\r\n ", EITHER),
]


@pytest.mark.parametrize(("body", "codes"), [pytest.param(b, c, id=i) for i, b, c in JSON_CASES])
def test_malformed_json_is_refused_and_writes_nothing(served: LiveServer, body: bytes, codes: set[str]) -> None:
    attacker = Account(served, "json")
    before = attacker.stored()
    answer = exchange(served.port, mint_request(attacker.cookie, body))
    assert_refused(answer, {400}, codes, secrets=(attacker.token,))
    assert attacker.stored() == before
    assert_healthy(served)


# -- header tricks ------------------------------------------------------------------------

def raw_mint(head: bytes, body: bytes = VALID) -> bytes:
    """A mint request whose header block (after Host and Connection) is exactly `head`."""
    return (b"POST /api/v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + head
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def whoami(headers: list[tuple[bytes, bytes]], query: str = "") -> bytes:
    return request_bytes("GET", "/api/v1/whoami" + query, headers)


Build = Callable[["Account", "Account"], bytes]
# (id, build(attacker, other), statuses, codes, transport-level refusal accepted)
HEADER_CASES: list[tuple[str, Build, frozenset[int] | set[int], set[str] | None, bool]] = [
    ("cookie-64KiB",
     lambda a, b: mint_request(a.cookie + b"; padding=" + b"x" * 65536, VALID), ANY_4XX, None, True),
    ("other-header-64KiB",
     lambda a, b: mint_request(a.cookie, VALID, extra=[(b"X-Padding", b"x" * 65536)]), ANY_4XX, None, True),
    ("10000-headers",
     lambda a, b: mint_request(a.cookie, VALID, extra=[(b"X-Pad-%d" % i, b"1") for i in range(10_000)]),
     ANY_4XX, None, True),
    ("two-session-cookies-one-header",
     lambda a, b: mint_request(a.cookie + b"; " + b.cookie, VALID), {401}, {"invalid_session"}, False),
    ("two-session-cookies-two-headers",
     lambda a, b: mint_request(a.cookie, VALID, extra=[(b"Cookie", b.cookie)]), {401}, {"invalid_session"}, False),
    ("content-type-twice-conflicting",
     lambda a, b: mint_request(a.cookie, VALID, extra=[(b"Content-Type", b"text/plain")]),
     {415}, {"unsupported_media_type"}, False),
    ("content-type-list-in-one-header",
     lambda a, b: mint_request(a.cookie, VALID, content_type=b"application/json, text/plain"),
     {415}, {"unsupported_media_type"}, False),
    ("cookie-obs-folded",
     lambda a, b: raw_mint(b"Content-Type: application/json\r\nCookie: theme=dark;\r\n " + a.cookie + b"\r\n"),
     ANY_4XX, None, True),
    ("space-before-colon",
     lambda a, b: raw_mint(b"Content-Type: application/json\r\nCookie : " + a.cookie + b"\r\n"), {400}, None, True),
    ("cookie-non-ascii",
     lambda a, b: mint_request(a.cookie + "\u00e9".encode(), VALID), {400, 401}, {"invalid_session", "bad_request"}, True),
    ("cookie-latin1-byte",
     lambda a, b: mint_request(a.cookie + b"\xff", VALID), {400, 401}, {"invalid_session", "bad_request"}, True),
    ("cookie-nul",
     lambda a, b: mint_request(a.cookie + b"\x00", VALID), {400, 401}, {"invalid_session", "bad_request"}, True),
    ("content-type-nul",
     lambda a, b: mint_request(a.cookie, VALID, content_type=b"application/json\x00"),
     {400, 415}, {"unsupported_media_type", "bad_request"}, True),
    ("content-type-non-ascii",
     lambda a, b: mint_request(a.cookie, VALID, content_type=b"application/json\xff"),
     {400, 415}, {"unsupported_media_type"}, True),
    ("header-name-non-ascii",
     lambda a, b: mint_request(a.cookie, VALID, extra=[(b"X-\xff\xfe", b"1")]), ANY_4XX, None, True),
    ("content-length-twice-conflicting",
     lambda a, b: raw_mint(b"Content-Type: application/json\r\nCookie: " + a.cookie + b"\r\nContent-Length: 5\r\n"),
     {400}, None, True),
    ("content-length-with-chunked",
     lambda a, b: (b"POST /api/v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nCookie: " + a.cookie + b"\r\n"
                   b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % (len(VALID) + 7)
                   + b"%x\r\n" % len(VALID) + VALID + b"\r\n0\r\n\r\n"),
     {400}, None, True),
]

TWO_KEYS = [
    ("bearer-tab", lambda a, b: whoami([(b"Authorization", b"Bearer\t" + ka(a)), (b"X-API-Key", kb(a))])),
    ("bearer-two-spaces", lambda a, b: whoami([(b"Authorization", b"Bearer  " + ka(a)), (b"X-API-Key", kb(a))])),
    ("bearer-lowercase", lambda a, b: whoami([(b"Authorization", b"bearer " + ka(a)), (b"X-API-Key", kb(a))])),
    ("bearer-tab-and-query", lambda a, b: whoami([(b"Authorization", b"Bearer\t" + ka(a))],
                                                 "?api_key=" + kb(a).decode())),
    ("x-api-key-twice", lambda a, b: whoami([(b"X-API-Key", ka(a)), (b"X-API-Key", kb(a))])),
]


def ka(account: Account) -> bytes:
    return account.keys[0]["key"].encode()


def kb(account: Account) -> bytes:
    return account.keys[1]["key"].encode()


@pytest.mark.parametrize(("build", "statuses", "codes", "transport"),
                         [pytest.param(*case[1:], id=case[0]) for case in HEADER_CASES])
def test_header_trick_is_refused_and_writes_nothing(
    served: LiveServer, build: Build, statuses: frozenset[int], codes: set[str] | None, transport: bool,
) -> None:
    attacker, other = Account(served, "header"), Account(served, "other")
    before = attacker.stored(), other.stored()
    answer = exchange(served.port, build(attacker, other))
    assert_refused(answer, statuses, codes, transport, secrets=(attacker.token, other.token))
    assert (attacker.stored(), other.stored()) == before
    assert_healthy(served)


@pytest.mark.parametrize("build", [pytest.param(build, id=i) for i, build in TWO_KEYS])
def test_two_api_keys_in_one_request_are_refused_and_neither_is_counted(served: LiveServer, build: Build) -> None:
    attacker = Account(served, "twokeys")
    attacker.mint("first-key")
    attacker.mint("second-key")
    before = attacker.stored()
    answer = exchange(served.port, build(attacker, attacker))
    assert_refused(answer, {401}, {"invalid_api_key"}, secrets=(ka(attacker).decode(), kb(attacker).decode()))
    assert attacker.stored() == before  # neither key's total_requests nor last_used_at moved
    assert_healthy(served)


# -- Unicode names ------------------------------------------------------------------------

BASE = "prod-splunk"
REFUSED_OR_SAME = ({400, 409}, {"invalid_parameter", "duplicate_name"})
NAME_CASES = [
    ("zero-width-joiner", BASE, "prod\u200d-splunk", *REFUSED_OR_SAME),
    ("zero-width-non-joiner", BASE, "prod\u200c-splunk", *REFUSED_OR_SAME),
    ("word-joiner-u2060", BASE, "prod-\u2060splunk", *REFUSED_OR_SAME),
    ("invisible-separator-u2063", BASE, "prod-splunk\u2063", *REFUSED_OR_SAME),
    ("left-to-right-mark", BASE, "\u200eprod-splunk", *REFUSED_OR_SAME),
    ("soft-hyphen", BASE, "prod-\u00adsplunk", *REFUSED_OR_SAME),
    ("mongolian-vowel-separator-u180e", BASE, "prod-splunk\u180e", *REFUSED_OR_SAME),
    ("combining-grapheme-joiner-u034f", BASE, "prod\u034f-splunk", *REFUSED_OR_SAME),
    ("tag-character-ue0041", BASE, "prod-splunk\U000e0041", *REFUSED_OR_SAME),
    ("leading-space", BASE, " prod-splunk", *REFUSED_OR_SAME),
    ("trailing-space", BASE, "prod-splunk ", *REFUSED_OR_SAME),
    ("trailing-no-break-space", BASE, "prod-splunk\u00a0", *REFUSED_OR_SAME),
    ("only-hangul-filler-u3164", None, "\u3164\u3164\u3164", {400}, {"invalid_parameter"}),
    ("only-braille-blank-u2800", None, "\u2800\u2800\u2800", {400}, {"invalid_parameter"}),
    ("only-halfwidth-hangul-filler-uffa0", None, "\uffa0\uffa0", {400}, {"invalid_parameter"}),
    ("nfd-after-nfc", unicodedata.normalize("NFC", "café-siem"), unicodedata.normalize("NFD", "café-siem"),
     {409}, {"duplicate_name"}),
    ("nfc-after-nfd", unicodedata.normalize("NFD", "ångström-edr"), unicodedata.normalize("NFC", "ångström-edr"),
     {409}, {"duplicate_name"}),
]


@pytest.mark.parametrize(("first", "name", "statuses", "codes"),
                         [pytest.param(*case[1:], id=case[0]) for case in NAME_CASES])
def test_invisible_or_lookalike_name_is_refused_and_writes_nothing(
    served: LiveServer, first: str | None, name: str, statuses: set[int], codes: set[str],
) -> None:
    attacker = Account(served, "names")
    if first is not None:
        attacker.mint(first)
    before = attacker.stored()
    body = json.dumps({"name": name}, ensure_ascii=False).encode()
    answer = exchange(served.port, mint_request(attacker.cookie, body))
    assert_refused(answer, statuses, codes)
    keys, events = attacker.stored()
    assert (keys, events) == before, f"now {len(keys)} keys, named {[k['name'] for k in keys]}"
    assert_healthy(served)


# -- path tricks ----------------------------------------------------------------------------

NOT_FOUND = ({404}, {"not_found"})
NO_SUCH_KEY = ({400, 404}, {"invalid_parameter", "not_found", "key_not_found"})
# (id, method, target with {id} for the account's one key, statuses, codes, transport)
PATH_CASES = [
    ("post-trailing-slash", "POST", "/api/v1/keys/", *NOT_FOUND, False),
    ("post-double-slash", "POST", "//api/v1/keys", *NOT_FOUND, False),
    ("post-dot-segment", "POST", "/api/v1/./keys", *NOT_FOUND, False),
    ("post-dot-dot-segment", "POST", "/api/v1/nope/../keys", *NOT_FOUND, False),
    ("post-encoded-dot-dot", "POST", "/api/v1/nope/%2e%2e/keys", *NOT_FOUND, False),
    ("post-encoded-slash", "POST", "/api/v1%2Fkeys", *NOT_FOUND, False),
    ("post-nul", "POST", "/api/v1/keys%00", *NOT_FOUND, False),
    ("get-encoded-slash-dot-dot", "GET", "/api/v1/keys/%2F..", *NO_SUCH_KEY, False),
    ("delete-encoded-slash-after-id", "DELETE", "/api/v1/keys/{id}%2F..", *NO_SUCH_KEY, False),
    ("delete-encoded-slash-before-id", "DELETE", "/api/v1/keys/..%2F{id}", *NO_SUCH_KEY, False),
    ("delete-trailing-slash", "DELETE", "/api/v1/keys/{id}/", *NOT_FOUND, False),
    ("delete-dot-segment-after-id", "DELETE", "/api/v1/keys/{id}/.", *NOT_FOUND, False),
    ("delete-dot-dot-to-id", "DELETE", "/api/v1/keys/nope/../{id}", *NOT_FOUND, False),
    ("delete-double-slash-before-id", "DELETE", "/api/v1/keys//{id}", *NOT_FOUND, False),
    ("delete-nul-after-id", "DELETE", "/api/v1/keys/{id}%00", *NOT_FOUND, False),
    ("delete-newline-after-id", "DELETE", "/api/v1/keys/{id}%0A", *NOT_FOUND, False),
    ("delete-semicolon-parameter-after-id", "DELETE", "/api/v1/keys/{id};v=1", *NO_SUCH_KEY, False),
    ("delete-overlong-id", "DELETE", "/api/v1/keys/{id}" + "0" * 5000, *NO_SUCH_KEY, False),
    ("get-overlong-id", "GET", "/api/v1/keys/" + "a" * 10_000, {400, 404, 414}, {*NO_SUCH_KEY[1], "uri_too_long"}, False),
    ("get-target-100KiB", "GET", "/api/v1/keys/" + "a" * 100 * 1024, ANY_4XX, None, True),
]


@pytest.mark.parametrize(("method", "target", "statuses", "codes", "transport"),
                         [pytest.param(*case[1:], id=case[0]) for case in PATH_CASES])
def test_path_trick_is_refused_and_writes_nothing(
    served: LiveServer, method: str, target: str, statuses: set[int], codes: set[str] | None, transport: bool,
) -> None:
    attacker = Account(served, "paths")
    key = attacker.mint("path-target")
    before = attacker.stored()
    headers = [(b"Cookie", attacker.cookie)]
    body = None
    if method == "POST":
        headers.append((b"Content-Type", b"application/json"))
        body = VALID
    answer = exchange(served.port, request_bytes(method, target.replace("{id}", key["id"]), headers, body))
    assert_refused(answer, statuses, codes, transport)
    assert attacker.stored() == before  # the key is neither revoked nor joined by another
    assert_healthy(served)


# -- bodies that arrive oddly ---------------------------------------------------------------

def test_chunked_body_is_minted_or_refused_with_411(served: LiveServer) -> None:
    """Transfer-Encoding: chunked: read within the same bound, or refused plainly; never misread."""
    attacker = Account(served, "chunked")
    body = b'{"name":"chunked-body"}'
    head = request_bytes("POST", "/api/v1/keys", [(b"Cookie", attacker.cookie), (b"Content-Type", b"application/json"),
                                                  (b"Transfer-Encoding", b"chunked")], content_length=False)
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    answer = exchange(served.port, head + chunks)
    keys, _ = attacker.stored()
    if answer.status == 201:
        assert [k["name"] for k in keys] == ["chunked-body"]
        ISSUED.append(answer.json()["data"]["key"])
    else:
        assert_refused(answer, {411}, {"length_required"})
        assert keys == []
    assert_healthy(served)


def test_chunked_body_over_the_size_bound_is_refused(served: LiveServer) -> None:
    attacker = Account(served, "chunked-big")
    before = attacker.stored()
    head = request_bytes("POST", "/api/v1/keys", [(b"Cookie", attacker.cookie), (b"Content-Type", b"application/json"),
                                                  (b"Transfer-Encoding", b"chunked")], content_length=False)
    body = b'{"name":"' + b"x" * 80_000 + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192]) for i in range(0, len(body), 8192))
    answer = exchange(served.port, head + chunks + b"0\r\n\r\n")
    assert_refused(answer, {411, 413}, {"length_required", "payload_too_large"}, transport=False)
    assert attacker.stored() == before
    assert_healthy(served)


def test_body_cut_short_by_a_disconnect_writes_nothing(served: LiveServer) -> None:
    """Content-Length promises more than arrives; what did arrive is valid JSON on its own."""
    attacker = Account(served, "cut")
    before = attacker.stored()
    sent = b'{"name":"cut-short"}'
    data = mint_request(attacker.cookie, sent + b" " * 100)[: -100]  # Content-Length counts the 100 never sent
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(data)
        time.sleep(0.2)  # let the server start reading the body before the client goes away
    # A key minted for nobody would be there within moments; look for a second.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert attacker.stored() == before, "a key was minted from a body the client never finished"
        time.sleep(0.1)
    assert_healthy(served)


# -- time and CPU: slow clients, costly names -------------------------------------------------

HEADER_READ_BOUND_S = 20  # generous: any header read timeout a server sets should be well inside it


def test_slow_clients_are_cut_off_while_others_are_served(served: LiveServer) -> None:
    """Twenty clients trickle a header line a second; everyone else is answered at once
    throughout, and the server stops waiting for the trickling ones."""
    attacker = Account(served, "slow")
    before = attacker.stored()
    slow: list[socket.socket] = []
    cut_off_at: dict[int, float] = {}
    started = time.monotonic()
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=2)
            sock.sendall(b"POST /api/v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + attacker.cookie + b"\r\n")
            slow.append(sock)
        line = 0
        while len(cut_off_at) < len(slow) and time.monotonic() - started < HEADER_READ_BOUND_S:
            for i, sock in enumerate(slow):
                if i in cut_off_at:
                    continue
                readable, _, _ = select.select([sock], [], [], 0)
                try:
                    if readable:
                        sock.recv(65536)  # an answer (408, 400) or the end of the connection
                        cut_off_at[i] = time.monotonic() - started
                        continue
                    sock.sendall(b"X-Trickle-%d: %d\r\n" % (line, line))
                except OSError:
                    cut_off_at[i] = time.monotonic() - started
            line += 1
            healthz = exchange(served.port, request_bytes("GET", "/healthz"), timeout=2)
            assert healthz.status == 200 and healthz.seconds < 1.0, f"others were kept waiting: {healthz}"
            time.sleep(1.0)
    finally:
        for sock in slow:
            sock.close()
    assert len(cut_off_at) == len(slow), (
        f"{len(slow) - len(cut_off_at)} of {len(slow)} clients still trickling headers after "
        f"{HEADER_READ_BOUND_S} s were still being waited for"
    )
    assert attacker.stored() == before
    assert_healthy(served)


def test_65kb_name_ending_in_nul_is_refused_fast_while_others_are_served(served: LiveServer) -> None:
    """A name just under the body bound, made to be costly for a backtracking pattern."""
    attacker = Account(served, "long-name")
    before = attacker.stored()
    body = b'{"name":"' + b"a" * 65_000 + b'\\u0000"}'
    answers: list[Answer | BaseException] = []

    def attack() -> None:
        try:
            answers.append(exchange(served.port, mint_request(attacker.cookie, body), timeout=5))
        except BaseException as error:  # noqa: BLE001 - reported below
            answers.append(error)

    thread = threading.Thread(target=attack)
    thread.start()
    time.sleep(0.1)
    healthz = exchange(served.port, request_bytes("GET", "/healthz"), timeout=2)
    thread.join(timeout=10)
    assert healthz.status == 200 and healthz.seconds < 1.0, str(healthz)
    answer = answers[0]
    assert isinstance(answer, Answer), f"no answer: {answer!r}"
    assert_refused(answer, {400}, {"invalid_parameter"})
    assert answer.seconds < 1.0, f"refusing the name took {answer.seconds:.2f} s"
    assert attacker.stored() == before
    assert_healthy(served)


def test_no_secret_this_corpus_used_reached_the_log(served: LiveServer) -> None:
    time.sleep(0.2)  # the access line of the last request is written as it completes
    output = served.output()
    leaked = [secret[:12] + "..." for secret in ISSUED if secret in output or secret.split(".")[-1] in output]
    assert not leaked, f"secrets in the server's log: {leaked}"
    assert_healthy(served)

