"""Security handlers that inspect the security function's signature once, not per request."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from connexion.exceptions import OAuthResponseProblem
from connexion.lifecycle import ConnexionRequest
from connexion.security import NO_VALUE


class SignatureOnce:
    """Mixin for a Connexion security handler.

    Replaces `AbstractSecurityHandler._generic_check` (connexion 3.3.0, connexion/security.py),
    which calls `inspect.signature` on the security function twice per request; here the
    wrapper is built knowing the answers. Its behaviour is otherwise the upstream body's.
    """

    def _generic_check(self, func: Any, exception_msg: str) -> Any:
        takes_scopes = self._accepts_kwarg(func, self.required_scopes_kw)  # type: ignore[attr-defined]
        takes_request = self._accepts_kwarg(func, self.request_kw)  # type: ignore[attr-defined]

        async def wrapper(request: ConnexionRequest, *args: Any, required_scopes: Any = None) -> Any:
            kwargs = {}
            if takes_scopes:
                kwargs["required_scopes"] = required_scopes
            if takes_request:
                kwargs["request"] = request
            token_info = func(*args, **kwargs)
            while asyncio.iscoroutine(token_info):
                token_info = await token_info
            if token_info is NO_VALUE:
                return NO_VALUE
            if token_info is None:
                raise OAuthResponseProblem(detail=exception_msg)
            return token_info

        return wrapper


def signature_once(security_map: Mapping[str, type]) -> dict[str, type]:
    """Return `security_map` with each handler class given the SignatureOnce mixin."""
    return {scheme: type(f"SignatureOnce{cls.__name__}", (SignatureOnce, cls), {}) for scheme, cls in security_map.items()}
