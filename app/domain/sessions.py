"""Session authentication: Supabase access tokens (HS256 JWTs) from the `sb-access-token` cookie."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jwt

from app.domain.errors import AnonymousSession, InvalidSession, MissingSession
from app.domain.keys import valid_user_id

AUDIENCE = "authenticated"
ALGORITHM = "HS256"
# Checked before any parsing or HMAC. Supabase's access tokens are 1-2 KB, user metadata included.
MAX_TOKEN_LENGTH = 8192
# Supabase's clock and ours may disagree a little; a token issued further ahead is refused.
IAT_SKEW_SECONDS = 60

# A time claim is a moment from 1970 to the end of 9999 (RFC 3339's last second): `exp` of
# 1e308 is a finite number but no time, and would make a session that never expires.
LAST_SECOND = 253_402_300_799


class SessionVerifier:
    """Check session tokens signed with the project's JWT secret."""

    def __init__(
        self, secret: str, leeway_seconds: int = 0, cache_size: int = 4096, allow_anonymous: bool = False
    ) -> None:
        self._secret = secret
        self._leeway = leeway_seconds
        self._allow_anonymous = allow_anonymous
        # A browser sends the same token with every request until it expires: check its
        # signature once. Only tokens that verified are kept, and their time claims are
        # still checked against the clock on every request.
        self._verified = functools.lru_cache(maxsize=cache_size)(self._verify_signature)

    def user_id(self, token: str | None, now: float) -> str:
        """Return the user id (`sub`) of a valid token; raise MissingSession or InvalidSession."""
        if not token:
            raise MissingSession("Sign in: the sb-access-token session cookie is missing.")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidSession(
                f"The session token is longer than {MAX_TOKEN_LENGTH} characters; sign in again.",
                {"limit_length": MAX_TOKEN_LENGTH},
            )
        try:
            claims = self._verified(token)
            _check_times(claims, now, self._leeway)
        except jwt.PyJWTError:
            raise InvalidSession("The session token is invalid or has expired; sign in again.") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not valid_user_id(sub):
            raise InvalidSession("The session token names no user; sign in again.")
        if not self._allow_anonymous and is_anonymous(claims):
            # Anyone can sign in anonymously as often as they like: each sign-in a new account
            # with its own key cap and limits, none of them anyone's to answer for.
            raise AnonymousSession(
                "An anonymous session cannot manage API keys: sign in with an account.", {"reason": "anonymous"}
            )
        return sub

    def _verify_signature(self, token: str) -> MappingProxyType:
        # `algorithms` pins HS256, so `alg: none` and every other algorithm are refused. Time
        # claims are checked against the injected clock rather than PyJWT's own.
        claims = jwt.decode(
            token,
            self._secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "aud"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        return MappingProxyType(claims)


def is_anonymous(claims: Mapping[str, Any]) -> bool:
    """Whether Supabase issued these claims to an anonymous sign-in, by any of the marks it sets.

    Read loosely, for a refusal must not hang on spelling: a truthy `is_anonymous` (`true`,
    `"true"` in any case, `1`), and `role` or an `amr` method of `anon`/`anonymous` in any case.
    """
    if _truthy(claims.get("is_anonymous")) or _anonymous_word(claims.get("role")):
        return True
    amr = claims.get("amr")
    if isinstance(amr, list):
        # Supabase writes entries as {"method": "anonymous", "timestamp": ...}; RFC 8176 as strings.
        return any(_anonymous_word(entry.get("method") if isinstance(entry, dict) else entry) for entry in amr)
    return False


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return isinstance(value, bool | int | float) and bool(value)


def _anonymous_word(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("anon", "anonymous")


def _check_times(claims: Mapping[str, Any], now: float, leeway: int) -> None:
    exp = _seconds(claims, "exp")
    if exp is None or exp + leeway <= now:
        raise jwt.ExpiredSignatureError("expired")
    nbf = _seconds(claims, "nbf")
    if nbf is not None and nbf - leeway > now:
        raise jwt.ImmatureSignatureError("not yet valid")
    iat = _seconds(claims, "iat")
    if iat is not None and iat - max(leeway, IAT_SKEW_SECONDS) > now:
        raise jwt.ImmatureSignatureError("issued in the future")


def _seconds(claims: Mapping[str, Any], name: str) -> float | None:
    """Return a time claim as finite seconds, None if absent; raise if it is no time at all."""
    value = claims.get(name)
    if value is None:
        return None
    # JSON admits NaN, Infinity and integers of any length as numbers: none of them is a time.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise jwt.InvalidTokenError(f"{name} is not a number")
    try:
        seconds = float(value)
    except OverflowError:
        raise jwt.InvalidTokenError(f"{name} is out of range") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= LAST_SECOND:
        raise jwt.InvalidTokenError(f"{name} is out of range")
    return seconds


def issue_token(secret: str, user_id: str, now: float, ttl_seconds: int = 3600) -> str:
    """Return a session token for `user_id`, as Supabase would issue it (for development)."""
    claims = {
        "sub": user_id,
        "aud": AUDIENCE,
        "role": "authenticated",
        "iat": int(now),
        "exp": int(now) + ttl_seconds,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
