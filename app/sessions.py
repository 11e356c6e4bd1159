"""Session authentication: Supabase access tokens (HS256 JWTs) from the `sb-access-token` cookie."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jwt

from app.errors import InvalidSession, MissingSession

AUDIENCE = "authenticated"
ALGORITHM = "HS256"
MAX_USER_ID_LENGTH = 200


class SessionVerifier:
    """Check session tokens signed with the project's JWT secret."""

    def __init__(self, secret: str, leeway_seconds: int = 0, cache_size: int = 4096) -> None:
        self._secret = secret
        self._leeway = leeway_seconds
        # A browser sends the same token with every request until it expires: check its
        # signature once. Only tokens that verified are kept, and their time claims are
        # still checked against the clock on every request.
        self._verified = functools.lru_cache(maxsize=cache_size)(self._verify_signature)

    def user_id(self, token: str | None, now: float) -> str:
        """Return the user id (`sub`) of a valid token; raise MissingSession or InvalidSession."""
        if not token:
            raise MissingSession("Sign in: the sb-access-token session cookie is missing.")
        try:
            claims = self._verified(token)
            _check_times(claims, now, self._leeway)
        except jwt.PyJWTError:
            raise InvalidSession("The session token is invalid or has expired; sign in again.") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_USER_ID_LENGTH or not sub.isprintable():
            raise InvalidSession("The session token names no user; sign in again.")
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


def _check_times(claims: Mapping[str, Any], now: float, leeway: int) -> None:
    exp = claims["exp"]
    # JSON admits NaN and Infinity as numbers: neither is a time, and Infinity never expires.
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not math.isfinite(exp) or exp + leeway <= now:
        raise jwt.ExpiredSignatureError("expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, (int, float)) or not math.isfinite(nbf) or nbf - leeway > now):
        raise jwt.ImmatureSignatureError("not yet valid")


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
