"""The contract, walked once: one index, handed to every layer that asks it something."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app import SPEC_PATH
from app.web.contract import ContractIndex

ROOT = Path(__file__).resolve().parent.parent
SPEC = json.loads(SPEC_PATH.read_text())
INDEX = ContractIndex(SPEC)


def test_the_index_is_built_once_per_app_and_shared(make_app, monkeypatch):
    import app.web.contract as contract

    built: list[ContractIndex] = []
    original = contract.ContractIndex.__init__

    def counting(self, document):
        built.append(self)
        original(self, document)

    monkeypatch.setattr(contract.ContractIndex, "__init__", counting)
    make_app()
    assert len(built) == 1


def test_http_methods_are_defined_once():
    definitions = [
        str(path.relative_to(ROOT))
        for folder in ("app", "handlers")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"^HTTP_METHODS\s*=", path.read_text(), re.MULTILINE)
    ]
    assert definitions == ["app/web/contract.py"]


def test_cookie_and_key_operations_follow_each_operations_security():
    assert INDEX.cookie_operations == {
        "createAPIKey",
        "listAPIKeys",
        "getAPIKey",
        "revokeAPIKey",
        "listKeyEvents",
        "rollAPIKey",
        "updateAPIKey",
    }
    assert INDEX.key_operations == {"getCurrentKey"}


def test_routes_and_allowed_methods_come_from_the_path_templates():
    assert INDEX.route_of("/api/v1/keys/abc") == "/api/v1/keys/{key_id}"
    assert INDEX.route_of("/api/v1/keys/abc/def") is None
    assert INDEX.allowed_methods("/healthz") == "GET, HEAD"
    assert INDEX.allowed_methods("/api/v1/keys/abc") == "DELETE, GET, PATCH"
    assert INDEX.template_of("rollAPIKey") == "/api/v1/keys/{key_id}/roll"


def test_responses_have_their_references_resolved():
    documented = INDEX.responses("getCurrentKey")
    assert "401" in documented and "$ref" not in json.dumps(documented)
