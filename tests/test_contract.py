"""The contract: a valid document, the vendor's operation kept, every operationId bound."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

import handlers
from app import SPEC_PATH, resolve_handler

ROOT = Path(__file__).resolve().parent.parent
# The vendor's document as published, kept beside the tests so that every clone can compare.
VENDOR = ROOT / "tests" / "data" / "mint-api-key.md"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


def operations(document: dict) -> list[dict]:
    return [op for item in document["paths"].values() for m, op in item.items() if m in HTTP_METHODS]


def test_openapi_document_is_valid():
    validate(spec())


def test_every_operation_id_resolves_to_a_handler():
    for operation in operations(spec()):
        function = resolve_handler(operation["operationId"])
        assert inspect.getmodule(function).__name__.startswith("handlers."), operation["operationId"]


def test_every_public_handler_is_referenced_by_the_contract():
    bound = {resolve_handler(op["operationId"]) for op in operations(spec())}
    public = {getattr(handlers, name) for name in handlers.__all__}
    assert public == bound


def test_vendor_operation_id_is_kept_as_published():
    post = spec()["paths"]["/api/v1/keys"]["post"]
    assert post["operationId"] == "createAPIKey"


def resolved(document: dict, node: dict) -> dict:
    """`node`, or what its local `$ref` names."""
    while "$ref" in node:
        target: dict = document
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_every_operation_documents_its_errors_with_the_error_schema():
    document = spec()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS or method == "head":  # HEAD: see the test below
                continue
            codes = set(operation["responses"])
            assert "500" in codes and "503" in codes, operation["operationId"]
            if operation.get("security"):
                assert {"401", "429"} <= codes, operation["operationId"]
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    schema = resolved(document, response)["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, code)


def test_head_operations_document_every_status_of_their_get_without_a_body():
    # An answer to HEAD has no content: a generated client that expects JSON in one fails to
    # decode the empty body of a 503 readiness probe. Every status the GET documents (the
    # server's own 408, 413, 414 and 431 among them) is documented for HEAD, headers only.
    document = spec()
    heads = [(path, item) for path, item in document["paths"].items() if "head" in item]
    assert {path for path, _ in heads} == {"/healthz", "/readyz"}
    for path, item in heads:
        responses = item["head"]["responses"]
        assert set(responses) == set(item["get"]["responses"]), path
        for code, response in responses.items():
            response = resolved(document, response)
            assert "content" not in response, (path, code)
            get_headers = resolved(document, item["get"]["responses"][code]).get("headers", {})
            assert set(response.get("headers", {})) == set(get_headers), (path, code)


def test_servers_name_production_first_then_the_local_development_server():
    servers = spec()["servers"]
    assert [s["url"] for s in servers] == ["https://socdefenders.ai", "http://localhost:8000"]
    assert all(s.get("description") for s in servers)


def test_changelog_lists_each_change_to_the_vendor_document():
    description = spec()["info"]["description"]
    assert "## Changes to the vendor's document" in description
    for change in ("minLength", "additionalProperties", "full_key", "status", "listAPIKeys", "getAPIKey",
                   "revokeAPIKey", "listKeyEvents", "getCurrentKey", "BearerAuth", "ApiKeyHeader", "ApiKeyQuery"):
        assert change in description, change


def test_vendor_descriptions_are_kept_word_for_word():
    text = VENDOR.read_text()
    vendor = yaml.safe_load(re.search(r"````yaml [^\n]*\n(.*?)````", text, re.DOTALL).group(1))
    kept(vendor, spec(), ())


def kept(vendor: object, ours: object, path: tuple) -> None:
    """Assert everything the vendor wrote is in ours: fields added, `required` lists widened,
    list items appended and the changelog appended to info.description are the only changes."""
    if isinstance(vendor, dict):
        assert isinstance(ours, dict), path
        for key, value in vendor.items():
            assert key in ours, path + (key,)
            if key == "required" and isinstance(value, list):
                assert set(value) <= set(ours[key]), path
            else:
                kept(value, ours[key], path + (key,))
    elif isinstance(vendor, list):
        assert isinstance(ours, list) and len(ours) >= len(vendor), path
        for index, item in enumerate(vendor):
            kept(item, ours[index], path + (index,))
    elif path == ("info", "description"):
        assert isinstance(ours, str) and ours.startswith(vendor), path
    else:
        assert ours == vendor, path


def detail_literals(kind: str) -> list[tuple[Path, ast.Dict]]:
    """The dict literals the server's code puts in an error's (`kind="error"`) or a key event's
    (`kind="event"`) `details`, with their file: given to a ServiceError or to KeyEvent.about,
    returned by `revocation`, or bound to a name `details`."""
    from app.domain.errors import ServiceError

    def subclasses(cls: type) -> set[str]:
        return {cls.__name__}.union(*(subclasses(sub) for sub in cls.__subclasses__()))

    import app.web.errors  # noqa: F401  (defines the web layer's own refusals)
    import app.web.transport  # noqa: F401

    errors, found = subclasses(ServiceError), []
    for path in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            literals = []
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if kind == "error" and name in errors or kind == "event" and name == "about":
                    literals = [arg for arg in node.args if isinstance(arg, ast.Dict)]
            elif kind == "error" and isinstance(node, ast.FunctionDef) and node.name == "revocation":
                # app.domain.keys.revocation: a revoked key's reason and time, spread into details.
                returned = [n.value for n in ast.walk(node) if isinstance(n, ast.Return)]
                literals = [value for value in returned if isinstance(value, ast.Dict)]
            elif isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                named = any(isinstance(target, ast.Name) and target.id == "details" for target in targets)
                if named and (path.parent.name == "store") == (kind == "event"):  # the stores record events
                    literals = [node.value]
            found.extend((path, literal) for literal in literals)
    return found


def details_sent(kind: str) -> dict[str, str]:
    """Map each field the server's code puts in `details` (see `detail_literals`) to where."""
    return {
        key.value: f"{path.relative_to(ROOT)}:{literal.lineno}"
        for path, literal in detail_literals(kind)
        for key in literal.keys
        if isinstance(key, ast.Constant)
    }


def detail_values_sent(kind: str) -> dict[tuple[str, object], str]:
    """Map each (field, value) the server's code writes as a constant into `details` to where."""
    return {
        (key.value, value.value): f"{path.relative_to(ROOT)}:{literal.lineno}"
        for path, literal in detail_literals(kind)
        for key, value in zip(literal.keys, literal.values, strict=True)
        if isinstance(key, ast.Constant) and isinstance(value, ast.Constant)
    }


def test_error_details_describe_every_field_the_server_sends():
    described = spec()["components"]["schemas"]["ErrorDetails"]["properties"]
    sent = details_sent("error")
    assert {"reason", "revoked_at", "replaced_by", "rolled", "window", "limit", "retry_after", "field"} <= set(sent)
    assert {field: where for field, where in sent.items() if field not in described} == {}
    details = spec()["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["details"]
    assert details["allOf"] == [{"$ref": "#/components/schemas/ErrorDetails"}]


def test_key_event_details_describe_every_field_the_server_records():
    described = spec()["components"]["schemas"]["KeyEventDetails"]["properties"]
    sent = details_sent("event")
    assert {"replaced_by", "expires_at", "rolled_from", "source", "window", "limit", "applies_to"} <= set(sent)
    assert {field: where for field, where in sent.items() if field not in described} == {}
    assert spec()["components"]["schemas"]["KeyEvent"]["properties"]["details"] == {
        "$ref": "#/components/schemas/KeyEventDetails"
    }


def test_error_details_values_the_server_sends_are_in_their_enums():
    # Error responses come from the exception handlers, outside Connexion's response
    # validation: a value the enum lacks (`reason: anonymous`) would reach clients unchecked,
    # and a generated client refuses it (`'anonymous' is not a valid ErrorDetailsReason`).
    described = spec()["components"]["schemas"]["ErrorDetails"]["properties"]
    sent = detail_values_sent("error")
    assert ("reason", "anonymous") in sent
    outside = {
        (field, value): where
        for (field, value), where in sent.items()
        if field in described and "enum" in described[field] and value not in described[field]["enum"]
    }
    assert outside == {}
    # Sent as a variable, so not found above: why the readiness check finds the SQLite store unwritable.
    from app.store.sqlite import UNWRITABLE

    assert set(UNWRITABLE.values()) - set(described["reason"]["enum"]) == set()


def test_session_operations_name_each_401_they_send_as_an_example():
    # createAPIKey keeps the vendor's own 401 (a single, unnamed example); the operations this
    # server added name each refusal of a session, so that `Prefer: example=` can force it.
    document = spec()
    for operation in operations(document):
        if operation.get("security") != [{"CookieAuth": []}] or operation["operationId"] == "createAPIKey":
            continue
        examples = resolved(document, operation["responses"]["401"])["content"]["application/json"]["examples"]
        codes = {example["value"]["error"]["code"] for example in examples.values()}
        assert codes == {"missing_session", "invalid_session", "anonymous_session"}, operation["operationId"]


# The codes each status can carry on any operation that documents it (app.web.errors,
# app.web.refusals, app.web.transport); 400, 401, 403, 404 and 409 depend on the operation.
SENT_BY_ANY = {
    "400": {"invalid_parameter", "invalid_json", "bad_request"},
    "408": {"request_timeout"},
    "413": {"payload_too_large"},
    "414": {"uri_too_long"},
    "415": {"unsupported_media_type"},
    "421": {"host_not_allowed"},
    "429": {"rate_limit_exceeded"},
    "431": {"request_header_fields_too_large"},
    "500": {"internal_error"},
    "503": {"service_unavailable"},
}
# What the handlers' domain calls raise as 409 (app.domain.keys: check_room_for_key, refuse_roll,
# roll_over_cap).
CONFLICTS = {
    "createAPIKey": {"duplicate_name", "key_limit_reached"},
    "rollAPIKey": {"key_not_rollable", "key_limit_reached"},
    "updateAPIKey": {"duplicate_name", "scope_not_granted"},  # check_name_free, granted_scopes
}


def codes_sent(document: dict, path: str, method: str, operation: dict, status: str) -> set[str]:
    """The error codes the server can answer `operation` with under `status`, from the code's rules."""
    from app.web.contract import ContractIndex
    from app.web.csrf import STATE_CHANGING

    cookie_operations = ContractIndex(document).cookie_operations

    security = operation.get("security") or []
    sends = set(SENT_BY_ANY.get(status, ()))
    if status == "401" and operation["operationId"] in cookie_operations:
        sends |= {"missing_session", "invalid_session", "anonymous_session"}  # app.domain.sessions
    if status == "401" and any(name != "CookieAuth" for requirement in security for name in requirement):
        sends |= {"missing_api_key", "invalid_api_key", "expired_api_key", "revoked_api_key"}  # KeyService.use
    if status == "403" and operation["operationId"] in cookie_operations and method.upper() in STATE_CHANGING:
        sends.add("origin_not_allowed")  # app.web.csrf
    if status == "403" and any(name != "CookieAuth" for requirement in security for name in requirement):
        sends.add("ip_not_allowed")  # KeyService.use, for a key with an allowlist
    if status == "403" and any(scopes for requirement in security for scopes in requirement.values()):
        sends.add("insufficient_scope")  # KeyService.authorize, for an operation that requires a scope
    parameters = [*document["paths"][path].get("parameters", []), *operation.get("parameters", [])]
    if status == "404" and any(resolved(document, p).get("name") == "key_id" for p in parameters):
        sends.add("key_not_found")
    if status == "404" and operation["operationId"] == "getMetrics":
        sends.add("not_found")  # outside METRICS_ALLOW, /metrics answers as no such path
    if status == "409":
        sends |= CONFLICTS.get(operation["operationId"], set())
    if operation["operationId"] == "checkRequest":  # reads the key itself (app.web.gateway)
        if status == "401":
            sends |= {"missing_api_key", "invalid_api_key", "expired_api_key", "revoked_api_key"}
        if status == "403":
            sends |= {"insufficient_scope", "route_not_mapped", "proxy_not_allowed", "ip_not_allowed"}
            # With refusal=header (nginx), every refusal but a 401 is a 403 carrying its own code.
            sends |= set().union(*SENT_BY_ANY.values())
    return sends


def test_every_example_error_code_is_one_the_operation_can_send():
    document = spec()
    wrong = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                if operation["operationId"] == "createAPIKey" and status == "401":
                    continue  # the vendor's own example (`missing_api_key`), kept word for word
                media = resolved(document, response).get("content", {}).get("application/json", {})
                shown = {name: example["value"] for name, example in media.get("examples", {}).items()}
                if "example" in media:
                    shown["(example)"] = media["example"]
                sends = codes_sent(document, path, method, operation, status)
                assert sends, (operation["operationId"], status)  # documented, so something is sent
                for name, value in shown.items():
                    if value["error"]["code"] not in sends:
                        wrong[(operation["operationId"], status, name)] = value["error"]["code"]
    assert wrong == {}
