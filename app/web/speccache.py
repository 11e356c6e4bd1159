"""Swagger UI's copies of the contract, answered from memory after the first request."""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class SpecCacheMiddleware:
    """Swagger UI's copies of the contract, answered from memory after the first request.

    Connexion's Swagger UI layer serialises the whole contract again for every request
    (measured in process: 140 ms for `/ui/openapi.json`, 530 ms for its YAML), on the event
    loop and with no credentials needed: a handful of clients could stall every worker. The
    documents cannot change while the process runs, so each (path, root path) is rendered
    once; what is replayed is the answer as Connexion gave it, before `stamp` adds the
    per-request headers.
    """

    def __init__(self, app: ASGIApp, paths: Collection[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self._answers: dict[tuple[str, str], list[Message]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope.get("root_path", ""))
        answer = self._answers.get(key)
        if answer is not None:
            for message in answer:
                await send({**message, "headers": list(message.get("headers", ()))})
            return
        recorded: list[Message] = []

        async def record(message: Message) -> None:
            recorded.append({**message, "headers": list(message.get("headers", ()))})
            await send(message)

        await self.app(scope, receive, record)
        if recorded and recorded[0].get("status") == 200 and not recorded[-1].get("more_body", False):
            self._answers[key] = recorded
