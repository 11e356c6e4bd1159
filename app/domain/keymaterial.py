"""API key material: format, checksum, digest and preview.

A key is `sk_live_` + 32 random base62 characters + a 6-character base62 CRC32 of
everything before it, so a typo is caught without touching the database and secret
scanners can recognise the prefix. Only the SHA-256 digest is ever stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

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


def redact(text: str) -> str:
    """Mask every key-like run in `text` (a leak report's source URL may hold the key itself)."""
    return KEY_LIKE.sub(PREFIX + "[REDACTED]", text)


def preview(key: str) -> str:
    """Return the prefix and the first few characters of the secret, the rest masked."""
    shown = key[len(PREFIX) : len(PREFIX) + PREVIEW_SECRET_CHARS]
    return f"{PREFIX}{shown}••••••••"
