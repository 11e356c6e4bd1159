from __future__ import annotations

import hashlib
import re
import zlib

import pytest

from app.domain import keymaterial
from app.domain.keymaterial import BASE62, PREFIX

BODY_LENGTH = len(PREFIX) + 32


def _other_char(c: str) -> str:
    return "A" if c != "A" else "B"


def test_generate_has_prefix_32_base62_chars_and_6_char_checksum():
    key = keymaterial.generate()
    assert re.fullmatch(r"sk_live_[0-9A-Za-z]{32}[0-9A-Za-z]{6}", key)
    assert key[BODY_LENGTH:] == keymaterial.checksum(key[:BODY_LENGTH])


def test_generated_key_is_well_formed():
    assert keymaterial.is_well_formed(keymaterial.generate())


def test_generated_keys_are_unique():
    keys = {keymaterial.generate() for _ in range(1000)}
    assert len(keys) == 1000


def test_every_position_of_the_secret_takes_every_base62_character():
    # 3,000 keys: a character missing from a position by chance has odds of about e^-48.
    # A draw too small for 32 characters, or a lopsided encoding, leaves some out.
    secrets_ = [keymaterial.generate()[len(PREFIX) : BODY_LENGTH] for _ in range(3000)]
    for position in range(32):
        assert {s[position] for s in secrets_} == set(BASE62), position


def test_checksum_is_deterministic_and_six_base62_chars():
    body = keymaterial.generate()[:BODY_LENGTH]
    first = keymaterial.checksum(body)
    assert first == keymaterial.checksum(body)
    assert len(first) == 6
    assert set(first) <= set(BASE62)


def test_checksum_is_base62_crc32_of_body():
    body = keymaterial.generate()[:BODY_LENGTH]
    value = 0
    for c in keymaterial.checksum(body):
        value = value * 62 + BASE62.index(c)
    assert value == zlib.crc32(body.encode("ascii"))


def test_checksum_differs_for_different_bodies():
    body = keymaterial.generate()[:BODY_LENGTH]
    typo = body[:-1] + _other_char(body[-1])
    assert keymaterial.checksum(body) != keymaterial.checksum(typo)


def test_is_well_formed_rejects_one_character_typo_at_every_position():
    key = keymaterial.generate()
    for i in range(len(PREFIX), len(key)):
        typo = key[:i] + _other_char(key[i]) + key[i + 1 :]
        assert not keymaterial.is_well_formed(typo), i


def test_is_well_formed_rejects_swapped_adjacent_characters():
    key = keymaterial.generate()
    i = next(i for i in range(len(PREFIX), len(key) - 1) if key[i] != key[i + 1])
    swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    assert not keymaterial.is_well_formed(swapped)


@pytest.mark.parametrize("prefix", ["sk_test_", "pk_live_", "SK_LIVE_", "sk-live-", ""])
def test_is_well_formed_rejects_wrong_prefix(prefix):
    key = keymaterial.generate()
    body = prefix + key[len(PREFIX) : BODY_LENGTH]
    # Even with a checksum that matches the altered body, the prefix must be refused.
    assert not keymaterial.is_well_formed(body + keymaterial.checksum(body))


def test_is_well_formed_rejects_wrong_length():
    key = keymaterial.generate()
    short_body = key[: BODY_LENGTH - 1]
    long_body = key[:BODY_LENGTH] + "A"
    assert not keymaterial.is_well_formed(short_body + keymaterial.checksum(short_body))
    assert not keymaterial.is_well_formed(long_body + keymaterial.checksum(long_body))
    assert not keymaterial.is_well_formed(key[:-1])
    assert not keymaterial.is_well_formed(key + "A")
    assert not keymaterial.is_well_formed("")
    assert not keymaterial.is_well_formed(PREFIX)


@pytest.mark.parametrize("bad", ["_", "-", "+", "/", "=", " ", "."])
def test_is_well_formed_rejects_non_base62_ascii_even_with_matching_checksum(bad):
    key = keymaterial.generate()
    body = key[: BODY_LENGTH - 1] + bad
    assert not keymaterial.is_well_formed(body + keymaterial.checksum(body))


@pytest.mark.parametrize("bad", ["é", "٣", "Ａ", "\x00"])
def test_is_well_formed_rejects_non_ascii_characters(bad):
    key = keymaterial.generate()
    assert not keymaterial.is_well_formed(key[: BODY_LENGTH - 1] + bad + key[BODY_LENGTH:])


def test_is_well_formed_rejects_trailing_newline_and_whitespace():
    key = keymaterial.generate()
    assert not keymaterial.is_well_formed(key + "\n")
    assert not keymaterial.is_well_formed(" " + key)
    assert not keymaterial.is_well_formed(key + " ")


def test_digest_is_sha256_hex_of_key():
    key = keymaterial.generate()
    d = keymaterial.digest(key)
    assert d == hashlib.sha256(key.encode("ascii")).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", d)
    assert key not in d


def test_digest_differs_per_key():
    a, b = keymaterial.generate(), keymaterial.generate()
    assert keymaterial.digest(a) != keymaterial.digest(b)
    assert keymaterial.digest(a) == keymaterial.digest(a)


def test_preview_shows_prefix_and_at_most_four_secret_chars():
    key = keymaterial.generate()
    preview = keymaterial.preview(key)
    assert preview.startswith(PREFIX)
    shown = re.match(r"[0-9A-Za-z]*", preview[len(PREFIX) :]).group(0)
    assert len(shown) <= 4
    assert key.startswith(PREFIX + shown)


def test_preview_never_contains_the_rest_of_the_secret():
    key = keymaterial.generate()
    preview = keymaterial.preview(key)
    rest = key[len(PREFIX) + 4 :]
    assert rest not in preview
    assert key[BODY_LENGTH:] not in preview  # the checksum
    # No run of 5 consecutive secret characters appears in the preview.
    secret = key[len(PREFIX) :]
    assert not any(secret[i : i + 5] in preview for i in range(len(secret) - 4))


def encoded_forms(key: str) -> dict[str, str]:
    """The ways a key turns up in a URL: as is, percent-encoded in either case, twice, in base64."""
    import base64

    return {
        "raw": key,
        "percent_upper": key.replace("_", "%5F"),
        "percent_lower": key.replace("_", "%5f"),
        "percent_every_char": "".join(f"%{ord(c):02x}" for c in key),
        "double": key.replace("_", "%255F"),
        "triple": key.replace("_", "%25255f"),
        "base64": base64.b64encode(key.encode()).decode(),
        "base64_url_unpadded": base64.urlsafe_b64encode(b"token=" + key.encode()).decode().rstrip("="),
        "base64_percent": base64.b64encode(b"k:" + key.encode()).decode().replace("=", "%3D"),
    }


@pytest.mark.parametrize("form", list(encoded_forms(PREFIX + "A" * 38)))
def test_redact_masks_a_key_however_it_is_encoded(form):
    key = keymaterial.generate()
    text = f"https://paste.example/raw?x=1&k={encoded_forms(key)[form]}&y=%20two"
    masked = keymaterial.redact(text)
    assert "[REDACTED]" in masked and masked.startswith("https://paste.example/raw?x=1&k=")
    assert masked.endswith("&y=%20two")  # what holds no key is kept as written
    # Nothing left to decode into the key, however many times it is decoded.
    import base64
    from urllib.parse import unquote

    for _ in range(4):
        masked = unquote(masked)
    assert key not in masked and key[len(PREFIX) :] not in masked
    for run in re.findall(r"[A-Za-z0-9+/_-]{16,}", masked):
        for start in range(4):
            chunk = run[start:].replace("-", "+").replace("_", "/")
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            assert key.encode() not in base64.b64decode(chunk)


def test_redact_keeps_text_without_a_key_as_written():
    text = "https://github.com/acme/ci/blob/main/.env%20old#L3?q=c2VjcmV0LWJ1dC1ub3QtYS1rZXk%3D"
    assert keymaterial.redact(text) == text
    assert keymaterial.redact("https://x.example/?k=sk_live_abc") == "https://x.example/?k=sk_live_[REDACTED]"


def test_redact_masks_what_stays_encoded_after_every_round_it_decodes():
    deep = "sk" + "%" + "25" * 12 + "5Flive" + "_" + "A" * 38
    masked = keymaterial.redact(f"https://x.example/?k={deep}")
    assert "A" * 38 not in masked and "[REDACTED]" in masked
