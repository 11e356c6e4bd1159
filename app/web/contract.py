"""The contract, walked once: its operations by id, path and method, their security and
responses, and the path templates requests are matched against.

`ContractIndex` is built once per app from `openapi.json` and handed to every layer that
asks the contract something: the cross-site request check (`cookie_operations`), the error
handlers (`key_operations`, `allowed_methods`), the access log (`route_of`, `template_of`),
the development server's `Prefer` (`responses`) and the factory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The HTTP methods an OpenAPI path item may hold an operation for (its other keys are
# `parameters`, `summary`, `servers` and the like).
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
COOKIE_SCHEME = "CookieAuth"  # the session cookie's security scheme


@dataclass(frozen=True)
class Operation:
    """One operation of the contract."""

    operation_id: str
    method: str  # upper case
    path: str  # the path template, as the contract writes it
    security: tuple[dict[str, list[str]], ...]
    responses: dict[str, Any]  # by status, local `$ref`s resolved

    @property
    def by_cookie(self) -> bool:
        """Whether the session cookie authenticates it."""
        return any(COOKIE_SCHEME in requirement for requirement in self.security)

    @property
    def by_key(self) -> bool:
        """Whether an API key (any scheme but the session cookie) authenticates it."""
        return any(name != COOKIE_SCHEME for requirement in self.security for name in requirement)


class ContractIndex:
    """What the layers ask of the contract, worked out once."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.operations: dict[str, Operation] = {}
        self.by_route: dict[tuple[str, str], Operation] = {}  # (METHOD, path template)
        self._paths: list[tuple[re.Pattern[str], str, str]] = []  # (pattern, Allow header value, template)
        for path, item in document["paths"].items():
            methods = []
            for method, operation in item.items():
                if method not in HTTP_METHODS:
                    continue
                methods.append(method.upper())
                if "operationId" not in operation:
                    continue
                found = Operation(
                    operation["operationId"],
                    method.upper(),
                    path,
                    tuple(operation.get("security", ())),
                    {code: self.resolve(response) for code, response in operation.get("responses", {}).items()},
                )
                self.operations[found.operation_id] = found
                self.by_route[(found.method, path)] = found
            pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$")
            self._paths.append((pattern, ", ".join(sorted(methods)), path))
        self.cookie_operations = frozenset(op.operation_id for op in self.operations.values() if op.by_cookie)
        self.key_operations = frozenset(op.operation_id for op in self.operations.values() if op.by_key)

    def resolve(self, node: Any) -> Any:
        """Return `node` with every local `$ref` in it replaced by what it names."""
        if isinstance(node, dict):
            if "$ref" in node:
                target: Any = self.document
                for part in node["$ref"].lstrip("#/").split("/"):
                    target = target[part]
                return self.resolve(target)
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v) for v in node]
        return node

    def responses(self, operation_id: str) -> dict[str, Any]:
        """Return the responses an operation documents, by status."""
        return self.operations[operation_id].responses

    def template_of(self, operation_id: str) -> str | None:
        """Return the path template of an operation."""
        operation = self.operations.get(operation_id)
        return operation.path if operation else None

    def allowed_methods(self, path: str) -> str | None:
        """Return the Allow header value for a path (`GET, HEAD`), or None if no template matches it."""
        for pattern, methods, _ in self._paths:
            if pattern.match(path):
                return methods
        return None

    def route_of(self, path: str) -> str | None:
        """Return the path template that `path` matches (`/api/v1/keys/{key_id}`), or None."""
        for pattern, _, template in self._paths:
            if pattern.match(path):
                return template
        return None
