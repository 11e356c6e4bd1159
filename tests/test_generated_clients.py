"""Clients generated from openapi.json (`make clients`) drive a key through its life against a live server.

The Python client is openapi-python-client's (pinned in uv.lock); the TypeScript one is
openapi-fetch with openapi-typescript's types (pinned in clients/package-lock.json), whose
program, tests/clients/lifecycle.ts, must compile under `tsc --strict` before node runs it.
Each test runs `make clients-python` or `make clients-typescript` first, which regenerates a
client only when openapi.json is newer; `make test` does the same beforehand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from app.domain.sessions import issue_token
from tests.conftest import SECRET
from tests.live import ROOT, LiveServer

PY_CLIENT = ROOT / "build" / "clients" / "python"
TS_CLIENT = ROOT / "build" / "clients" / "typescript" / "schema.d.ts"
TS_TOOLS = ROOT / "clients" / "node_modules"
LIFECYCLE_TS = ROOT / "tests" / "clients" / "lifecycle.ts"
# How the TypeScript program is checked and compiled: strict, for node, with the DOM's fetch types.
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "target": "ES2022",
        "module": "ES2022",
        "moduleResolution": "Bundler",
        "lib": ["ES2022", "DOM"],
        "types": ["node"],
        "outDir": "out",
    },
    "files": ["lifecycle.ts"],
}


def make(target: str) -> None:
    """Generate a client as `make clients` does (nothing is done when it is newer than openapi.json)."""
    result = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # The development server: it validates its own answers against the contract as it sends them.
    with LiveServer("run", tmp_path_factory.mktemp("clients"), {"SUPABASE_JWT_SECRET": SECRET}) as live:
        yield live


def session_token(user: str) -> str:
    return issue_token(SECRET, user, time.time(), 3600)


@pytest.fixture(scope="module")
def python_client(monkeypatch_module):
    make("clients-python")
    monkeypatch_module.syspath_prepend(str(PY_CLIENT))
    import socdefenders_keys_client

    return socdefenders_keys_client


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch
        for name in [n for n in sys.modules if n.startswith("socdefenders_keys_client")]:
            del sys.modules[name]


def test_python_client_walks_a_key_through_its_life(server, python_client):
    from socdefenders_keys_client import AuthenticatedClient, Client
    from socdefenders_keys_client.api.api_keys import (
        create_api_key,
        get_api_key,
        get_current_key,
        list_api_keys,
        list_key_events,
        report_leaked_keys,
        revoke_api_key,
        roll_api_key,
    )
    from socdefenders_keys_client.models import (
        CreateApiKeyBody,
        Error,
        ErrorDetailsReason,
        KeyEventType,
        ReportLeakedKeysBody,
        RollApiKeyBody,
    )

    # The session: the sb-access-token cookie, given to the client as a default cookie.
    owner = Client(base_url=server.base, cookies={"sb-access-token": session_token("python-client")})
    minted = [create_api_key.sync(client=owner, body=CreateApiKeyBody(name=name)) for name in ("feed-a", "feed-b")]
    a, b = (created.data for created in minted)
    assert a.key.startswith("sk_live_") and a.key == a.full_key

    pages, cursor = [], None
    while True:
        page = list_api_keys.sync(client=owner, limit=1, **({"cursor": cursor} if cursor else {}))
        pages.append([key.id for key in page.data])
        if not (cursor := page.meta.next_cursor):
            break
    assert pages == [[b.id], [a.id]]
    assert get_api_key.sync(client=owner, key_id=str(a.id)).data.name == "feed-a"

    # The key three ways: Bearer (AuthenticatedClient's token), X-API-Key and ?api_key= as defaults.
    ways = [
        AuthenticatedClient(base_url=server.base, token=a.key),
        Client(base_url=server.base, headers={"X-API-Key": a.key}),
        Client(base_url=server.base, httpx_args={"params": {"api_key": a.key}}),
    ]
    answers = [get_current_key.sync(client=client) for client in ways]
    assert [str(answer.data.id) for answer in answers] == [str(a.id)] * 3
    assert [answer.data.rate_limit.minute.remaining for answer in answers] == [9, 8, 7]

    rolled = roll_api_key.sync(client=owner, key_id=str(a.id), body=RollApiKeyBody(grace_period_minutes=0)).data
    refused = get_current_key.sync_detailed(client=ways[1])
    assert refused.status_code == 401 and isinstance(refused.parsed, Error)
    assert refused.parsed.error.code == "expired_api_key"
    assert refused.parsed.error.details.rolled is True and str(refused.parsed.error.details.replaced_by) == str(
        rolled.id
    )

    leak = report_leaked_keys.sync_detailed(
        client=Client(base_url=server.base),
        body=ReportLeakedKeysBody(keys=[rolled.key], source="https://example.com/x"),
    )
    assert leak.status_code == 202
    refused = get_current_key.sync(client=AuthenticatedClient(base_url=server.base, token=rolled.key))
    assert refused.error.code == "revoked_api_key" and refused.error.details.reason is ErrorDetailsReason.LEAKED

    assert revoke_api_key.sync_detailed(client=owner, key_id=str(b.id)).status_code == 204
    refused = get_current_key.sync(client=Client(base_url=server.base, httpx_args={"params": {"api_key": b.key}}))
    assert refused.error.details.reason is ErrorDetailsReason.OWNER
    assert refused.error.details.revoked_at.year >= 2026 and str(refused.error.details.key_id) == str(b.id)
    not_rollable = roll_api_key.sync(client=owner, key_id=str(b.id), body=RollApiKeyBody())
    assert (
        not_rollable.error.code == "key_not_rollable"
        and not_rollable.error.details.reason is ErrorDetailsReason.REVOKED
    )

    events = list_key_events.sync(client=owner).data
    assert [event.type_ for event in events] == [
        KeyEventType.REVOKED,
        KeyEventType.LEAKED,
        KeyEventType.MINTED,
        KeyEventType.ROLLED,
        KeyEventType.MINTED,
        KeyEventType.MINTED,
    ]
    assert events[1].details.source == "https://example.com/x"
    assert str(events[2].details.rolled_from) == str(a.id) and str(events[3].details.replaced_by) == str(rolled.id)


def test_python_client_restricts_a_key_and_narrows_it(server, python_client):
    from socdefenders_keys_client import Client
    from socdefenders_keys_client.api.api_keys import create_api_key, get_current_key, update_api_key
    from socdefenders_keys_client.models import (
        CreateApiKeyBody,
        CreateApiKeyBodyScopesItem,
        Error,
        UpdateApiKeyBody,
        UpdateApiKeyBodyScopesItem,
    )

    owner = Client(base_url=server.base, cookies={"sb-access-token": session_token("python-restricted")})
    body = CreateApiKeyBody(
        name="partner-acme-iocs",
        scopes=[CreateApiKeyBodyScopesItem.IOCSREAD, CreateApiKeyBodyScopesItem.LOOKUPREAD],
        allowed_ips=["198.51.100.0/24"],
    )
    key = create_api_key.sync(client=owner, body=body).data
    assert [s.value for s in key.granted_scopes] == key.scopes == ["iocs:read", "lookup:read"]
    assert key.allowed_ips == ["198.51.100.0/24"]
    # The client calls from 127.0.0.1, outside the allowlist.
    refused = get_current_key.sync_detailed(client=Client(base_url=server.base, headers={"X-API-Key": key.key}))
    assert refused.status_code == 403 and isinstance(refused.parsed, Error)
    assert refused.parsed.error.code == "ip_not_allowed"

    narrowed = update_api_key.sync(
        client=owner,
        key_id=str(key.id),
        body=UpdateApiKeyBody(scopes=[UpdateApiKeyBodyScopesItem.IOCSREAD], allowed_ips=None),
    ).data
    assert narrowed.scopes == ["iocs:read"] and narrowed.allowed_ips is None
    widened = update_api_key.sync_detailed(
        client=owner, key_id=str(key.id), body=UpdateApiKeyBody(scopes=[UpdateApiKeyBodyScopesItem.EXPORTCSV])
    )
    assert widened.status_code == 409 and widened.parsed.error.code == "scope_not_granted"
    assert get_current_key.sync(client=Client(base_url=server.base, headers={"X-API-Key": key.key})).data.scopes == [
        "iocs:read"
    ]


@pytest.fixture(scope="module")
def typescript_program(tmp_path_factory):
    if shutil.which("npm") is None or shutil.which("node") is None:
        message = (
            "npm is not installed, so the TypeScript client was not generated or run: install Node.js "
            "and npm (apt-get install nodejs npm), then run `make clients`"
        )
        if os.environ.get("CI"):  # .ci/run installs npm: there these tests must run
            pytest.fail(message)
        pytest.skip(message)
    make("clients-typescript")
    work = tmp_path_factory.mktemp("typescript")
    shutil.copy(LIFECYCLE_TS, work / "lifecycle.ts")
    shutil.copy(TS_CLIENT, work / "schema.d.ts")
    (work / "node_modules").symlink_to(TS_TOOLS / ".")
    (work / "package.json").write_text(json.dumps({"type": "module"}))
    (work / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    compiled = subprocess.run(
        [str(TS_TOOLS / ".bin" / "tsc"), "--project", str(work)], cwd=work, capture_output=True, text=True
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return work / "out" / "lifecycle.js"


def test_typescript_client_compiles_strictly_and_walks_a_key_through_its_life(server, typescript_program):
    result = subprocess.run(
        ["node", str(typescript_program), server.base, session_token("typescript-client")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout)
    a, b = seen["minted"]
    assert seen["pages"] == [[b], [a]] and seen["name"] == "client-feed-a"
    assert [way["status"] for way in seen["ways"]] == [200, 200, 200]
    assert [way["remaining"] for way in seen["ways"]] == [9, 8, 7]
    assert seen["afterRoll"] == {
        "status": 401,
        "code": "expired_api_key",
        "reason": None,
        "revoked_year": None,
        "rolled": True,
        "replaced_by": seen["replacement"],
        "key_id": a,
    }
    assert seen["leak"] == 202
    assert seen["afterLeak"]["code"] == "revoked_api_key" and seen["afterLeak"]["reason"] == "leaked"
    assert seen["revoke"] == 204
    assert seen["afterRevoke"]["reason"] == "owner" and int(seen["afterRevoke"]["revoked_year"]) >= 2026
    assert seen["rollRevoked"]["status"] == 409 and seen["rollRevoked"]["reason"] == "revoked"
    assert [event["type"] for event in seen["trail"]] == ["revoked", "leaked", "minted", "rolled", "minted", "minted"]
    assert seen["trail"][1]["source"] == "https://example.com/pasted"
    assert seen["trail"][2]["rolled_from"] == a and seen["trail"][3]["replaced_by"] == seen["replacement"]
