"""Spectral's `spectral:oas` ruleset finds nothing in openapi.json: no error, no warning.

Spectral is a Node.js tool, pinned in tools/package-lock.json; `make test` installs it
into tools/node_modules with `npm ci` whenever npm is on the machine (`.ci/run` makes sure it is).
"""

from __future__ import annotations

import json
import subprocess

from tests.live import ROOT, node_tool

SEVERITIES = ["error", "warning", "info", "hint"]


def test_spectral_oas_ruleset_finds_no_error_or_warning_in_the_contract():
    spectral = node_tool("spectral", "Spectral")
    result = subprocess.run(
        [str(spectral), "lint", "openapi.json", "--ruleset", ".spectral.yaml", "--format", "json", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    findings = json.loads(result.stdout or "[]")
    problems = [
        f"{SEVERITIES[f['severity']]} {f['code']} at {'.'.join(map(str, f['path']))}: {f['message']}"
        for f in findings if f["severity"] <= 1
    ]
    assert not problems, "\n".join(problems)
