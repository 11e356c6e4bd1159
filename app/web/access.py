"""Each request's id, its state, its metrics and its access-log line: the first and last thing
every request meets.

`AccessLogMiddleware` gives the request an id and its `RequestState` (with the services, for
the security functions and handlers), and, when it has been answered, counts it in the
metrics and writes one access line (`log_access`) with what an operator needs and no secret:
the operation's route template, never the raw path or query; the account and key the
security functions identified; the error code of an error answer, read from the start of
its envelope as it is sent. A request whose client left before sending it whole is logged
as 499, as nginx does.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.logs import write_info
from app.web.contract import ContractIndex
from app.web.errors import error_code_of
from app.web.paths import CONTROL_CHARACTERS, DOCS_PREFIX
from app.web.state import RequestState, attach

access_log = logging.getLogger("app.access")
# A client address as logged: an IP address and port use none of the others. Anything else
# (a proxy's X-Forwarded-For is free text) is escaped, so it cannot pose as other fields.
NOT_IN_ADDRESSES = re.compile(r"[^0-9A-Za-z.:\[\]_-]")
CLIENT_CLOSED_REQUEST = 499  # logged, as nginx does, for a request whose client left before sending it whole
# The access log's route for requests no operation matched: the pages' fixed paths as they
# are, and nothing of any other path (it could carry a secret pasted into the wrong place).
PAGE_ROUTES = frozenset({"/", "/openapi.json", "/dev/login"})
NO_ROUTE = "-"


def new_request_id() -> str:
    return "req_" + os.urandom(8).hex()  # secrets.token_hex(8), without its two calls


class AccessLogMiddleware:
    """Give each request an id and its state; count it and log it once it is answered."""

    def __init__(self, app: ASGIApp, services: Any = None, contract: ContractIndex | None = None) -> None:
        self.app = app
        self.services = services
        self.contract = contract

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]  # as sent: a HEAD is answered as its GET further in
        state = attach(scope, RequestState(new_request_id(), self.services, method))
        # Shared by every copy of the scope made further in, so routing facts reach the
        # error handlers and this layer (Starlette's test client adds it; uvicorn does not).
        extensions = scope.setdefault("extensions", {})
        started = time.perf_counter()
        status = 500
        error_code: str | None = None

        async def observed(message: Message) -> None:
            nonlocal status, error_code
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and error_code is None:
                error_code = error_code_of(message.get("body", b"")) or ""
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except ClientDisconnect:
            status = CLIENT_CLOSED_REQUEST
        finally:
            elapsed = time.perf_counter() - started
            operation = extensions.get("connexion_routing", {}).get("operation_id")
            metrics.record(operation, state.method, status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                log_access(
                    state.request_id,
                    method,
                    self._route(operation, scope["path"]),
                    status,
                    elapsed,
                    client_field(scope.get("client")),
                    state.account_id,
                    state.key_id,
                    error_code or None,
                )

    def _route(self, operation: str | None, path: str) -> str:
        """The route logged: the operation's template; for a request no operation took, the
        template its path matches (it was refused before routing), a page, or none."""
        contract = self.contract
        if operation:
            return (contract.template_of(operation) if contract else None) or NO_ROUTE
        if CONTROL_CHARACTERS.search(path):
            return NO_ROUTE
        return (contract.route_of(path) if contract else None) or (
            path if path in PAGE_ROUTES else "/ui/*" if path.startswith(DOCS_PREFIX + "/") else NO_ROUTE
        )


def log_access(
    request_id: str,
    method: str,
    route: str,
    status: int,
    elapsed: float,
    client: str,
    account_id: str | None = None,
    key_id: str | None = None,
    error_code: str | None = None,
) -> None:
    """Write one access line: the message for people, the same facts as fields for programs.

    Where the line goes to the stderr handler `app.logs.configure` installs and nowhere else
    (production, and `make run`), it is written straight to it (`app.logs.write_info`: the
    same redaction and bytes, no LogRecord); otherwise the record is made and handed to the
    logger's handlers directly: `Logger.info` would also look up its caller in the stack (a
    file and line no formatter here prints), which cost more than the rest of the line.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": request_id,
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 1),
        "client": client,
        "account_id": account_id,
        "key_id": key_id,
        "error_code": error_code,
    }
    if write_info(access_log, f"{method} {route} {status:d}", fields):
        return
    record = logging.LogRecord(access_log.name, logging.INFO, "", 0, "%s %s %d", (method, route, status), None)
    record.fields = fields
    access_log.handle(record)


def client_field(client: Any) -> str:
    """Return a client `(host, port)` as the access log shows it, escaped."""
    if not client:
        return "-"
    text = f"{client[0]}:{client[1]}"
    return NOT_IN_ADDRESSES.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)
