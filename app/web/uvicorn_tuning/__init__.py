"""Everything that reaches into uvicorn's (and httptools') internals, in one place.

- `protocol.HookedHttpToolsProtocol`: uvicorn's httptools protocol with hooks at each step of
  reading a request, so that `app.web.transport` can bound request heads without overriding
  uvicorn's methods or calling its private helpers.

Written against, and checked with, uvicorn 0.54.0 and httptools 0.9.0: `app.compat.check_upstream`
refuses any other series before the server starts. tests/test_uvicorn_tuning.py holds the same
conversations (keep-alive, pipelining, chunked bodies, `Expect: 100-continue`, upgrades) with
the bounded protocol and uvicorn's plain `HttpToolsProtocol`, and requires identical bytes.
"""

from __future__ import annotations

from app.web.uvicorn_tuning.protocol import HookedHttpToolsProtocol

__all__ = ["HookedHttpToolsProtocol"]
