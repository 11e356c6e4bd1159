"""Export and import (`python -m app export` / `import`): every column, and exports of earlier versions."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app.domain.keys import KeyService
from app.store import open_store
from app.store.transfer import FORMAT, VERSION, TransferError, export_rows, import_rows

# Tests taking `settings` run on SQLite and PostgreSQL.
ENGINES = ("sqlite", "postgresql")
NOW = 1_795_000_000.0
US = 1_795_000_000_000_000


def revoked_two_ways(settings):
    """A store holding a key its owner revoked, a leaked one and an active one; their records."""
    store = open_store(settings)
    try:
        keys = KeyService(store, lambda: NOW)
        dropped, leaked, kept = (
            keys.mint("alice", name, None, f"req_{name}") for name in ("dropped", "leaked", "kept")
        )
        keys.revoke("alice", dropped.record.id, "req_revoke")
        keys.report_leaks([leaked.secret], None, "req_leak")
        return {r.name: r for r in store.list_keys("alice", 10, None, include_revoked=True)}
    finally:
        store.close()


def test_an_export_imported_keeps_why_each_key_was_revoked(settings, tmp_path):
    before = revoked_two_ways(settings)
    assert (before["dropped"].revoked_reason, before["leaked"].revoked_reason) == ("owner", "leaked")
    path = str(tmp_path / "keys.jsonl")
    export_rows(settings, path)
    with open(path) as exported:
        header, *rows = (json.loads(line) for line in exported)
    assert header["version"] == VERSION
    assert {r["row"]["name"]: r["row"]["revoked_reason"] for r in rows if r["table"] == "api_keys"} == {
        "dropped": "owner",
        "leaked": "leaked",
        "kept": None,
    }
    target = replace(settings, database_path=tmp_path / "target.db", database_url="")  # into SQLite, from either
    import_rows(target, path)
    store = open_store(target)
    try:
        after = {r.name: r for r in store.list_keys("alice", 10, None, include_revoked=True)}
    finally:
        store.close()
    assert after == before


def version_2_export(path) -> None:
    """An export as version 2 wrote it: no revoked_reason; one key revoked by a leak report, one by its owner."""
    key = {
        "user_id": "alice",
        "preview": "sk_live_Ab12••••••••",
        "created_us": US,
        "expires_us": None,
        "total_requests": 3,
        "last_used_us": US,
        "replaced_by": None,
    }
    event = {"user_id": "alice", "key_preview": "sk_live_Ab12••••••••", "details": "{}"}
    lines = [
        {"format": FORMAT, "version": 2, "engine": "sqlite"},
        {"table": "accounts", "row": {"user_id": "alice", "tier": "free", "created_us": US}},
        {
            "table": "api_keys",
            "row": {
                **key,
                "id": "6e1d2c3b-4a59-4f68-8b7a-9c0d1e2f3a4b",
                "name": "leaked",
                "digest": "a" * 64,
                "revoked_us": US + 1,
            },
        },
        {
            "table": "api_keys",
            "row": {
                **key,
                "id": "0b6f3c1e-4a5d-4e2f-9c8b-7a6d5e4f3b2a",
                "name": "dropped",
                "digest": "b" * 64,
                "revoked_us": US + 2,
            },
        },
        {
            "table": "api_keys",
            "row": {
                **key,
                "id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                "name": "kept",
                "digest": "c" * 64,
                "revoked_us": None,
            },
        },
        {
            "table": "key_events",
            "row": {
                **event,
                "id": "e1",
                "key_id": "6e1d2c3b-4a59-4f68-8b7a-9c0d1e2f3a4b",
                "type": "leaked",
                "key_name": "leaked",
                "request_id": "req_1",
                "occurred_us": US + 1,
            },
        },
        {
            "table": "key_events",
            "row": {
                **event,
                "id": "e2",
                "key_id": "0b6f3c1e-4a5d-4e2f-9c8b-7a6d5e4f3b2a",
                "type": "revoked",
                "key_name": "dropped",
                "request_id": "req_2",
                "occurred_us": US + 2,
            },
        },
    ]
    with open(path, "w") as out:
        out.writelines(json.dumps(line) + "\n" for line in lines)


def test_an_export_of_version_2_imports_with_each_revoked_keys_reason_from_its_events(settings, tmp_path):
    path = tmp_path / "v2.jsonl"
    version_2_export(path)
    counts = import_rows(settings, str(path))
    assert counts == {"accounts": 1, "api_keys": 3, "key_events": 2, "rate_windows": 0}
    store = open_store(settings)
    try:
        listed = {r.name: (r.revoked_reason, r.total_requests) for r in store.list_keys("alice", 10, None, True)}
    finally:
        store.close()
    assert listed == {"leaked": ("leaked", 3), "dropped": ("owner", 3), "kept": (None, 3)}


def test_an_export_of_a_newer_version_is_refused(settings, tmp_path):
    path = tmp_path / "future.jsonl"
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION + 1, "engine": "sqlite"}) + "\n")
    with pytest.raises(TransferError, match="not an export of this service"):
        import_rows(settings, str(path))


def test_an_export_imported_keeps_each_keys_scopes_and_allowlist(settings, tmp_path):
    store = open_store(settings)
    try:
        keys = KeyService(store, lambda: NOW)
        keys.mint("alice", "narrow", None, "req_1", scopes=["iocs:read"], allowed_ips=["198.51.100.0/24"])
        keys.mint("alice", "wide", None, "req_2")
        before = {r.name: r for r in store.list_keys("alice", 10, None)}
    finally:
        store.close()
    path = str(tmp_path / "keys.jsonl")
    export_rows(settings, path)
    target = replace(settings, database_path=tmp_path / "target.db", database_url="")
    import_rows(target, path)
    store = open_store(target)
    try:
        after = {r.name: r for r in store.list_keys("alice", 10, None)}
    finally:
        store.close()
    assert after == before
    assert (after["narrow"].scopes, after["narrow"].allowed_ips) == (("iocs:read",), ("198.51.100.0/24",))
    assert (after["wide"].scopes, after["wide"].allowed_ips) == (None, None)


def test_an_export_of_version_3_imports_its_keys_unrestricted(settings, tmp_path):
    path = tmp_path / "v2.jsonl"
    version_2_export(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["version"] = 3
    for line in lines[1:]:
        if line["table"] == "api_keys":
            line["row"]["revoked_reason"] = "owner" if line["row"]["revoked_us"] else None
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    import_rows(settings, str(path))
    store = open_store(settings)
    try:
        listed = store.list_keys("alice", 10, None, True)
    finally:
        store.close()
    assert {(r.scopes, r.allowed_ips) for r in listed} == {(None, None)}


BAD_ROWS = [
    ("accounts", "tier", "gold"),
    ("accounts", "created_us", "x"),
    ("accounts", "created_us", 2**63),
    ("api_keys", "total_requests", None),
    ("api_keys", "total_requests", -1),
    ("api_keys", "created_us", True),
    ("api_keys", "digest", "not-a-digest"),
    ("api_keys", "revoked_reason", "lost"),
    ("api_keys", "scopes", '["iocs:write"]'),
    ("api_keys", "allowed_ips", '["0.0.0.0/0"]'),
    ("api_keys", "allowed_ips", '["10.0.0.1/24"]'),
    ("api_keys", "name", ""),
    ("key_events", "details", "not json"),
    ("key_events", "occurred_us", 1.5),
    ("rate_windows", "count", None),
    ("rate_windows", "window", "hour"),
]


@pytest.mark.parametrize(("table", "column", "value"), BAD_ROWS)
def test_an_import_refuses_a_row_the_service_could_not_serve_in_one_line_writing_nothing(
    settings, tmp_path, table, column, value
):
    path = str(tmp_path / "keys.jsonl")
    source = replace(settings, database_path=tmp_path / "source.db", database_url="")
    store = open_store(source)
    try:
        keys = KeyService(store, lambda: NOW)
        minted = keys.mint("alice", "kept", None, "req_1")
        keys.use(minted.secret, None, "req_2")
    finally:
        store.close()
    export_rows(source, path)
    with open(path) as exported:
        lines = [json.loads(line) for line in exported]
    number = next(i for i, line in enumerate(lines) if line.get("table") == table)
    lines[number]["row"][column] = value
    with open(path, "w") as out:
        out.writelines(json.dumps(line) + "\n" for line in lines)
    with pytest.raises(TransferError) as refused:
        import_rows(settings, path)
    message = str(refused.value)
    assert "\n" not in message
    assert f"line {number + 1}" in message
    assert f"{table}.{column}" in message
    store = open_store(settings)
    try:
        assert store.list_keys("alice", 10, None, True) == []
    finally:
        store.close()


def test_an_import_refuses_a_key_id_twice(settings, tmp_path):
    path = tmp_path / "v2.jsonl"
    version_2_export(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[3]["row"]["id"] = lines[2]["row"]["id"]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(TransferError, match="line 4: api_keys.id .* appears twice"):
        import_rows(settings, str(path))
