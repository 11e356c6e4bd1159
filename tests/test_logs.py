from __future__ import annotations

import json
import logging
import os
import re
import signal
import time

import pytest

from app.config import ConfigError, Settings
from app.domain import keymaterial
from app.domain.sessions import issue_token
from app.logs import JSONFormatter, RedactingFilter, TextFormatter, scrub
from app.store import SCHEMA_VERSION
from app.version import __version__
from tests.conftest import SECRET, START
from tests.live import LiveServer


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured():
    handler = ListHandler()
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler.lines
    logger.removeHandler(handler)
    logger.propagate = True


def test_scrub_masks_api_key():
    key = keymaterial.generate()
    cleaned = scrub(f"auth with {key} failed")
    assert key not in cleaned
    assert key[len("sk_live_"):] not in cleaned
    assert cleaned == "auth with [REDACTED] failed"


def test_scrub_masks_several_keys_and_keeps_other_text():
    a, b = keymaterial.generate(), keymaterial.generate()
    assert scrub(f"a={a},b={b};") == "a=[REDACTED],b=[REDACTED];"


def test_scrub_masks_jwt():
    token = issue_token(SECRET, "user-1", START)
    cleaned = scrub(f"cookie sb-access-token={token}; path=/")
    assert token not in cleaned
    assert token.split(".")[2] not in cleaned
    assert cleaned == "cookie sb-access-token=[REDACTED]; path=/"


def test_scrub_leaves_harmless_text_alone():
    text = 'GET /api/v1/keys?limit=20 200 1.2ms req_0123456789abcdef "sk_live_"'
    assert scrub(text) == text


def test_filter_masks_key_passed_as_argument(captured):
    logger, lines = captured
    key = keymaterial.generate()
    logger.info("presented %s for user %s", key, "user-1")
    assert lines == ["INFO presented [REDACTED] for user user-1"]


def test_filter_masks_key_in_mapping_argument(captured):
    logger, lines = captured
    key = keymaterial.generate()
    logger.info("presented %(key)s", {"key": key})
    assert lines == ["INFO presented [REDACTED]"]


def test_filter_masks_key_inside_exception_traceback(captured):
    logger, lines = captured
    key = keymaterial.generate()
    try:
        raise ValueError(f"bad key {key}")
    except ValueError:
        logger.exception("lookup failed")
    (line,) = lines
    assert key not in line
    assert "[REDACTED]" in line
    assert "Traceback" in line and "ValueError: bad key [REDACTED]" in line


def test_filter_masks_jwt_in_exception_chain(captured):
    logger, lines = captured
    token = issue_token(SECRET, "user-1", START)
    try:
        try:
            raise KeyError(token)
        except KeyError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        logger.error("failed", exc_info=outer)
    assert token not in lines[0]
    assert "RuntimeError: wrapped" in lines[0]


def test_filter_keeps_percent_signs_in_cleaned_message(captured):
    logger, lines = captured
    key = keymaterial.generate()
    logger.info("100%% sure %s", key)
    assert lines == ["INFO 100% sure [REDACTED]"]


# -- the two formats -------------------------------------------------------------------------

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def formatted(formatter: logging.Formatter, message: str, *args, fields=None) -> str:
    record = logging.LogRecord("app.test", logging.WARNING, __file__, 1, message, args, None)
    record.created = START + 0.25  # 2026-11-18T11:06:40.250Z
    if fields is not None:
        record.fields = fields
    assert RedactingFilter().filter(record)
    return formatter.format(record)


def test_json_line_is_one_object_with_utc_time_level_logger_message_and_fields():
    key = keymaterial.generate()
    line = formatted(JSONFormatter(), "refused %s\nsecond line", key,
                     fields={"route": "/api/v1/whoami", "status": 401, "client": f"x-{key}", "key_id": None})
    assert "\n" not in line
    entry = json.loads(line)
    assert entry == {"time": "2026-11-18T11:06:40.250Z", "level": "WARNING", "logger": "app.test",
                     "message": "refused [REDACTED]\nsecond line", "pid": os.getpid(),
                     "route": "/api/v1/whoami", "status": 401, "client": "x-[REDACTED]"}


def test_text_line_writes_fields_as_key_value_pairs_that_no_value_can_forge():
    line = formatted(TextFormatter(), "GET /api/v1/keys 200", fields={
        "request_id": "req_0123456789abcdef", "route": "/api/v1/keys/{key_id}", "duration_ms": 1.5,
        "account_id": 'eve status=500 "x"\nforged', "key_id": None})
    assert line == ('2026-11-18T11:06:40.250Z WARNING app.test GET /api/v1/keys 200 request_id=req_0123456789abcdef '
                    'route=/api/v1/keys/{key_id} duration_ms=1.5 account_id="eve status=500 \\"x\\"\\nforged"')


@pytest.mark.parametrize("created", [START + 0.25, 0.0, 1e9 + 0.9995, 4102444799.999, 951782400.5])
def test_times_are_utc_to_the_millisecond_as_strftime_writes_them(created):
    from app.logs import utc_time

    for _ in range(2):  # asked again (the second is remembered), the same text
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"
        assert utc_time(created) == expected


@pytest.mark.parametrize(("value", "written"), [
    (0, "0"), (-17, "-17"), (12.5, "12.5"), (1e-05, "1e-05"), (1e16, "1e+16"), (float("inf"), "inf"),
    (float("nan"), "nan"), (True, "True"), ("plain-text_1.0", "plain-text_1.0"), ("two words", '"two words"'),
    ("caf\u00e9", '"caf\\u00e9"'),
])
def test_a_field_is_written_as_it_is_when_plain_and_quoted_otherwise(value, written):
    line = formatted(TextFormatter(), "m", fields={"v": value})
    assert line.endswith(f" m v={written}")


def test_log_format_is_text_or_json_and_anything_else_refuses_to_start():
    assert Settings.from_env({"SUPABASE_JWT_SECRET": "s" * 32}).log_format == "text"
    assert Settings.from_env({"SUPABASE_JWT_SECRET": "s" * 32, "LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT must be one of text, json, not 'logfmt'"):
        Settings.from_env({"SUPABASE_JWT_SECRET": "s" * 32, "LOG_FORMAT": "logfmt"})


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://keys:s3cret-pw@db.internal:5432/keys?sslmode=require&password=other", "postgresql://db.internal:5432/keys"),
    ("postgres://keys:pw@[::1]/keys", "postgres://[::1]/keys"),
    ("sqlite:////var/lib/keys/keys.db", "/var/lib/keys/keys.db"),
])
def test_the_database_is_named_without_credentials(url, shown, tmp_path):
    env = {"SUPABASE_JWT_SECRET": "s" * 32, "DATABASE_URL": url}
    assert Settings.from_env(env).database_location == shown


# -- access lines ----------------------------------------------------------------------------


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


def test_an_access_line_names_the_route_account_and_key_never_the_key_itself(client, mint, caplog):
    minted = mint(user_id="alice")
    with caplog.at_level("INFO", logger="app.access"):
        client.get("/api/v1/whoami", params={"api_key": minted["key"]})
        client.get(f"/api/v1/keys/{minted['id']}", cookies={"sb-access-token": issue_token(SECRET, "alice", START)})
    by_key, by_session = access_records(caplog)
    assert by_key.fields["route"] == "/api/v1/whoami" and by_key.fields["method"] == "GET"
    assert (by_key.fields["account_id"], by_key.fields["key_id"], by_key.fields["status"]) == ("alice", minted["id"], 200)
    assert by_key.fields["request_id"].startswith("req_") and by_key.fields["duration_ms"] >= 0
    assert by_key.fields["client"] and by_key.fields["error_code"] is None
    assert by_session.fields["route"] == "/api/v1/keys/{key_id}" and minted["id"] not in by_session.getMessage()
    assert (by_session.fields["account_id"], by_session.fields["key_id"]) == ("alice", None)
    for record in (by_key, by_session):
        assert minted["key"] not in record.getMessage() + repr(record.fields)


def test_an_error_answers_access_line_carries_its_code_and_whom_it_refused(client, mint, session, caplog):
    minted = mint(user_id="bob")
    client.delete(f"/api/v1/keys/{minted['id']}", cookies=session("bob"))
    with caplog.at_level("INFO", logger="app.access"):
        client.get("/api/v1/whoami", headers={"X-API-Key": minted["key"]})  # revoked: 401
        client.get("/api/v1/keys/0b6f3c1e-4a5d-4e2f-9c8b-7a6d5e4f3b2a", cookies=session("bob"))  # 404
        client.get("/api/v1/whoami")  # no key: 401
    revoked, missing_key, no_key = access_records(caplog)
    assert (revoked.fields["status"], revoked.fields["error_code"]) == (401, "revoked_api_key")
    assert (revoked.fields["account_id"], revoked.fields["key_id"]) == ("bob", minted["id"])
    assert (missing_key.fields["status"], missing_key.fields["error_code"]) == (404, "key_not_found")
    assert (no_key.fields["error_code"], no_key.fields["account_id"]) == ("missing_api_key", None)


def test_an_unmatched_paths_access_line_holds_no_part_of_it(client, caplog):
    key = keymaterial.generate()
    with caplog.at_level("INFO", logger="app.access"):
        client.get(f"/api/v1/keys-typo/{key}?api_key={key}")
        client.get("/openapi.json")
        client.head("/healthz")
    (unmatched, page, head) = access_records(caplog)
    assert (unmatched.fields["route"], unmatched.fields["status"], unmatched.fields["error_code"]) == ("-", 404, "not_found")
    assert "typo" not in unmatched.getMessage() + repr(unmatched.fields)
    assert page.fields["route"] == "/openapi.json"
    assert (head.fields["method"], head.fields["route"], head.fields["status"]) == ("HEAD", "/healthz", 200)


# -- the servers' own lines, in either format -----------------------------------------------

LIVE_SECRET = "log-test-secret-0123456789-0123456789-abcd"


def exercise(server: LiveServer) -> dict[str, str]:
    """Mint a key, use it, send it to a path that is no route; return the key and ids seen."""
    cookie = {"Cookie": f"sb-access-token={issue_token(LIVE_SECRET, 'carol', time.time(), 3600)}"}
    _, _, body = server.request("POST", "/api/v1/keys", {"name": "log-format"}, cookie)
    key = body["data"]["key"]
    _, headers, _ = server.request("GET", "/api/v1/whoami", headers={"X-API-Key": key})
    server.request("GET", f"/no-such-route/{key}")
    deadline = time.monotonic() + 10
    while headers["x-request-id"] not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"key": key, "key_id": body["data"]["id"], "request_id": headers["x-request-id"]}


def stop(server: LiveServer) -> int:
    """SIGTERM the server, wait for it to end (its last lines written), return its exit status."""
    os.kill(server.process.pid, signal.SIGTERM)
    return server.process.wait(timeout=20)


def json_lines(output: str) -> list[dict]:
    lines = output.splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # every line, whoever wrote it


@pytest.mark.parametrize("command", ["serve", "run"])
def test_log_format_json_makes_every_line_of_the_server_one_json_object(tmp_path, command):
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": LIVE_SECRET, "WEB_CONCURRENCY": "2", "LOG_FORMAT": "json"}
    with LiveServer(command, tmp_path, env) as server:
        seen = exercise(server)
        status = stop(server)
    entries = json_lines(server.output())
    assert all(ISO_UTC.fullmatch(e["time"]) and e["level"] and e["logger"] and "message" in e for e in entries)
    assert seen["key"] not in server.output()
    messages = {(e["logger"], e["message"].split(" [")[0]) for e in entries}
    assert ("uvicorn.error", "Application startup complete.") in messages
    starts = [e for e in entries if e["logger"] == "app" and "starting" in e["message"]]
    workers = 2 if command == "serve" else 1
    assert len(starts) == workers and len({e["pid"] for e in starts}) == workers
    assert all(e["version"] == __version__ and e["env"] == "production" and e["schema_version"] == SCHEMA_VERSION
               and e["database"] == str(server.database_path) and e["workers"] == workers for e in starts)
    (used,) = [e for e in entries if e.get("request_id") == seen["request_id"]]
    assert used["logger"] == "app.access" and used["route"] == "/api/v1/whoami" and used["status"] == 200
    assert (used["account_id"], used["key_id"]) == ("carol", seen["key_id"])
    assert [e["route"] for e in entries if e.get("status") == 404] == ["-"]
    if command == "serve":
        assert status == 0
        gunicorn = [e["message"] for e in entries if e["logger"] == "gunicorn.error"]
        assert any(m.startswith("Starting gunicorn ") for m in gunicorn)
        assert any(m.startswith("Listening at: ") for m in gunicorn)
        assert sum(m.startswith("Booting worker with pid: ") for m in gunicorn) == 2
        assert "Shutting down: Master" in gunicorn


def test_log_format_text_puts_gunicorns_lines_and_the_access_line_in_one_format(tmp_path):
    env = {"APP_ENV": "production", "SUPABASE_JWT_SECRET": LIVE_SECRET, "WEB_CONCURRENCY": "1"}
    with LiveServer("serve", tmp_path, env) as server:
        seen = exercise(server)
        assert stop(server) == 0
    lines = server.output().splitlines()
    line_start = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ ")
    assert all(line_start.match(line) for line in lines), [line for line in lines if not line_start.match(line)]
    assert any(" gunicorn.error Booting worker with pid: " in line for line in lines)
    (used,) = [line for line in lines if seen["request_id"] in line]
    assert " app.access GET /api/v1/whoami 200 " in used
    assert " route=/api/v1/whoami status=200 " in used and f" account_id=carol key_id={seen['key_id']}" in used
    assert seen["key"] not in server.output()
