from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from app.domain import keymaterial
from app.domain.sessions import issue_token
from app.logs import RedactingFilter, scrub
from app.web.middleware import redacted_target
from tests.conftest import SECRET, START


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


def scope(query: str, path: str = "/api/v1/whoami") -> dict:
    return {"type": "http", "path": path, "query_string": query.encode("latin-1")}


def test_redacted_target_masks_api_key_query_parameter():
    key = keymaterial.generate()
    target = redacted_target(scope(f"api_key={key}"))
    assert key not in target
    assert target.startswith("/api/v1/whoami?api_key=")
    assert "REDACTED" in target


def test_redacted_target_masks_percent_encoded_parameter_name():
    key = keymaterial.generate()
    for name in ("api%5Fkey", "api%5fkey", "%61pi_key", quote("api_key", safe="")):
        target = redacted_target(scope(f"{name}={key}"))
        assert key not in target, name
        assert "REDACTED" in target, name


def test_redacted_target_masks_percent_encoded_value():
    key = keymaterial.generate()
    encoded = "".join(f"%{ord(c):02X}" for c in key)
    target = redacted_target(scope(f"api_key={encoded}"))
    assert encoded not in target and key not in target


def test_redacted_target_masks_every_repeated_api_key():
    a, b = keymaterial.generate(), keymaterial.generate()
    target = redacted_target(scope(f"api_key={a}&api_key={b}"))
    assert a not in target and b not in target


def test_redacted_target_keeps_other_parameters():
    key = keymaterial.generate()
    target = redacted_target(scope(f"limit=20&api_key={key}&cursor=abc"))
    path, query = target.split("?", 1)
    assert path == "/api/v1/whoami"
    parts = query.split("&")
    assert parts[0] == "limit=20" and parts[2] == "cursor=abc"
    assert parts[1].startswith("api_key=") and key not in parts[1]


def test_redacted_target_leaves_query_without_secret_untouched():
    assert redacted_target(scope("limit=20&cursor=a%2Fb")) == "/api/v1/whoami?limit=20&cursor=a%2Fb"


def test_redacted_target_without_query_is_the_path():
    assert redacted_target(scope("")) == "/api/v1/whoami"
