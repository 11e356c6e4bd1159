"""The README against the code: every error code, scope and setting is documented."""

from __future__ import annotations

from pathlib import Path

from app.domain import errors
from app.domain.tiers import TIERS
from app.web import errors as http_errors

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_documents_every_error_code():
    codes = {code for _, code in http_errors.DOMAIN_ERRORS.values()}
    assert all(cls in http_errors.DOMAIN_ERRORS for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.ServiceError))
    codes |= set(http_errors.STATUS_CODES.values())
    assert codes - {"bad_request"} <= {c for c in codes if f"`{c}`" in README}
    assert "`bad_request`" in README


def test_readme_tables_every_scope_of_every_tier():
    for tier in TIERS.values():
        for scope in tier.scopes:
            assert f"| `{scope}` |" in README, scope


def test_readme_lists_every_setting_read_from_the_environment():
    source = (Path(__file__).resolve().parent.parent / "app" / "config.py").read_text()
    import re

    for name in set(re.findall(r'"([A-Z][A-Z_]+)"', source)) - {"INFO"}:
        assert f"`{name}`" in README, name


def test_pro_scopes_are_a_strict_superset_of_free():
    assert set(TIERS["free"].scopes) < set(TIERS["pro"].scopes)


def test_readme_limits_table_states_the_bounds_the_code_enforces():
    from app.config import Settings
    from app.web.limits import MAX_BODY_BYTES, HeadLimits

    section = README.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    rows = {cells[1].strip(): cells[2].strip() for cells in (line.split("|") for line in section.splitlines())
            if len(cells) > 3 and cells[2].strip() not in ("Value", "------:")}
    limits, timeout = HeadLimits(), Settings.__dataclass_fields__["request_read_timeout"].default

    def kib(n: int) -> str:
        return f"{n // 1024} KiB"

    assert rows["Request target: path and query, as sent"] == kib(limits.request_target)
    assert rows["One header: name and value"] == kib(limits.header)
    assert rows["All headers: names and values"] == kib(limits.headers)
    assert rows["Number of headers"] == str(limits.header_count)
    assert rows["Request head as sent: request line, header lines, separators"] == kib(limits.head)
    assert limits.read_timeout == timeout
    assert rows[next(r for r in rows if r.startswith("Head read time"))] == f"{timeout} s (`REQUEST_READ_TIMEOUT`)"
    assert rows["Body size, chunked or not"] == kib(MAX_BODY_BYTES)
    assert rows["Body read time: from the end of the head"] == f"{timeout} s (`REQUEST_READ_TIMEOUT`)"
    fields = Settings.__dataclass_fields__
    assert rows["Open connections, per worker process"] == f"{fields['max_connections'].default:,} (`MAX_CONNECTIONS`)"
    per_client = next(r for r in rows if r.startswith("Open connections from one client address"))
    assert rows[per_client] == f"{fields['max_connections_per_client'].default:,} (`MAX_CONNECTIONS_PER_CLIENT`)"


def test_readme_roll_example_answers_with_the_name_of_the_key_it_minted():
    import re

    section = README.split("### Rotating a key without downtime")[1].split("\n### ")[0]
    block = section.split("```sh")[1].split("```")[0]
    minted = re.search(r"""-d '\{"name": "([^"]+)"\}'""", block)
    answered = re.search(r'# \{"data": \{[^}]*"name": "([^"]+)"', block)
    assert minted and answered and minted.group(1) == answered.group(1)


def test_readme_commands_heading_counts_the_commands_it_shows():
    import re

    number, body = re.search(r"\n## (\w+) commands\n(.*?)\n## ", README, re.DOTALL).groups()
    block = body.split("```sh\n")[1].split("```")[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert {"One": 1, "Two": 2, "Three": 3, "Four": 4, "Five": 5}.get(number) == len(commands), commands


def test_readme_calling_it_walkthrough_runs_as_pasted_against_the_development_server(tmp_path):
    import os
    import re
    import shutil
    import subprocess
    import time

    import pytest

    from app.domain.sessions import issue_token
    from tests.live import ROOT, LiveServer

    if shutil.which("curl") is None:
        pytest.skip("the README's curl walkthrough did NOT run: curl is not installed")
    section = README.split("\n## Calling it\n", 1)[1].split("\n## ", 1)[0]
    script = "\n".join(block.split("```", 1)[0] for block in section.split("```sh\n")[1:])
    with LiveServer("run", tmp_path) as server:
        script, moved = re.subn(r"^BASE=\S+", f"BASE={server.base}", script, flags=re.MULTILINE)
        assert moved == 1, "the walkthrough no longer sets BASE"
        env = {k: v for k, v in os.environ.items() if k not in ("APP_ENV", "SUPABASE_JWT_SECRET")}
        env["DATABASE_URL"] = server.env["DATABASE_URL"]  # dev-token signs with the server's secret
        walk = subprocess.run(
            ["sh", "-eu", "-c", script + '\nprintf "\\ncaptured key id: %s\\n" "$ID"\n'],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert walk.returncode == 0, walk.stderr
        key_id = walk.stdout.rsplit("captured key id: ", 1)[1].strip()
        secret = (tmp_path / "live" / ".supabase-jwt-secret").read_text().strip()
        owner = {"Cookie": f"sb-access-token={issue_token(secret, 'dev-user', time.time(), 3600)}"}
        status, _, body = server.request("GET", "/api/v1/keys?include_revoked=true", headers=owner)
    assert status == 200, body
    minted = [key for key in body["data"] if key["id"] == key_id]
    assert minted, f"{key_id!r} is not a key the walkthrough minted: {walk.stdout}"
    # The three ways of using the key each counted, then the revoke took it.
    assert (minted[0]["status"], minted[0]["total_requests"]) == ("revoked", 3)
    assert '"revoked_api_key"' in walk.stdout


def test_readme_tables_every_command_of_the_command_line():
    import argparse

    from app.__main__ import parser

    subcommands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(subcommands.choices)
    assert {"run", "serve", "mock", "migrate", "set-tier", "export"} <= commands
    for command in commands:
        assert f"| `{command}" in README, command
