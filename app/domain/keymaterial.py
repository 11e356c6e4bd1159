"""API key material: format, checksum, digest and preview.

A key is `sk_live_` + 32 random base62 characters + a 6-character base62 CRC32 of
everything before it, so a typo is caught without touching the database and secret
scanners can recognise the prefix. Only the SHA-256 digest is ever stored.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import zlib
from urllib.parse import quote, unquote

PREFIX = "sk_live_"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
KEY_PATTERN = re.compile(rf"^{PREFIX}[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}$")
PREVIEW_SECRET_CHARS = 4


def generate() -> str:
    """Return a new random key with its checksum."""
    # One draw from the OS's CSPRNG, uniform over every possible 32-character secret (one
    # read of randomness, not one per character).
    body = PREFIX + _base62(secrets.randbelow(62**RANDOM_LENGTH), RANDOM_LENGTH)
    return body + checksum(body)


def checksum(body: str) -> str:
    """Return the 6-character base62 CRC32 of `body`."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def _base62(value: int, width: int) -> str:
    """Write `value` (below 62**width) as exactly `width` base62 digits, most significant first."""
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars))


def is_well_formed(key: str) -> bool:
    """Tell whether `key` has the right shape and a matching checksum."""
    if len(key) != KEY_LENGTH or not KEY_PATTERN.match(key):
        return False
    return checksum(key[:-CHECKSUM_LENGTH]) == key[-CHECKSUM_LENGTH:]


def digest(key: str) -> str:
    """Return the hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


# Anything that may be a key, wherever it is written (linear: the class holds no `_`).
KEY_LIKE = re.compile(re.escape(PREFIX) + r"[0-9A-Za-z]+")
MASK = PREFIX + "[REDACTED]"
# What a key may hide in within a URL: a run of URL-safe and base64 characters and percent escapes.
ENCODED_RUN = re.compile(r"(?:[0-9A-Za-z_+/=.~-]|%[0-9A-Fa-f]{2})+")
# Base64 (either alphabet) long enough to hold a key's prefix and part of its secret.
BASE64_RUN = re.compile(r"[0-9A-Za-z+/_-]{16,}={0,2}")
DECODE_ROUNDS = 4  # percent-decodings tried; a run still encoded after them is masked whole
# What `quote` leaves as written when a masked run is encoded again: printable ASCII but `%`.
URL_SAFE = "!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"


def redact(text: str) -> str:
    """Mask every key in `text` (a leak report's source URL may hold the key itself).

    A key is found as written, percent-encoded (in either case of hex, up to DECODE_ROUNDS
    times over) or in base64; the run of text that holds it is kept decoded with the key
    masked, and whatever holds no key is kept as written.
    """
    return ENCODED_RUN.sub(_mask_run, text)


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    forms = [run]
    for _ in range(DECODE_ROUNDS):
        decoded = unquote(forms[-1], encoding="latin-1")
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    else:
        if unquote(forms[-1], encoding="latin-1") != forms[-1]:
            return "[REDACTED]"  # encoded more times than anyone writes a URL: fail closed
    if not any(KEY_LIKE.search(form) or _base64_keys(form) for form in forms):
        return run
    masked = BASE64_RUN.sub(lambda m: "[REDACTED]" if _base64_keys(m.group(0)) else m.group(0), forms[-1])
    return quote(KEY_LIKE.sub(MASK, masked), safe=URL_SAFE, encoding="latin-1")


def _base64_keys(text: str) -> bool:
    """Whether a base64 run in `text`, read from any of the four alignments, decodes to a key."""
    for run in BASE64_RUN.findall(text):
        run = run.rstrip("=").replace("-", "+").replace("_", "/")
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            plain = base64.b64decode(chunk).decode("latin-1")
            if KEY_LIKE.search(plain) or KEY_LIKE.search(unquote(plain, encoding="latin-1")):
                return True
    return False


def preview(key: str) -> str:
    """Return the prefix and the first few characters of the secret, the rest masked."""
    shown = key[len(PREFIX) : len(PREFIX) + PREVIEW_SECRET_CHARS]
    return f"{PREFIX}{shown}••••••••"
