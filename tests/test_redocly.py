"""Redocly CLI's `recommended` rules find nothing in openapi.json: no error, no warning.

Beside Spectral (tests/test_spectral.py), a second linter with rules of its own (a 4xx on every
operation, no response body on HEAD, ...). Redocly CLI is a Node.js tool, pinned in
tools/package-lock.json; `make test` installs it into tools/node_modules with `npm ci` whenever
npm is on the machine. Its configuration is redocly.yaml; nothing is sent over the network.
"""

from __future__ import annotations

import json
import os
import subprocess

from tests.live import ROOT, node_tool

# No usage data, no update check against the npm registry.
QUIET = {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true", "REDOCLY_SUPPRESS_NOTIFICATIONS": "true"}


def test_redocly_recommended_rules_find_no_error_or_warning_in_the_contract():
    redocly = node_tool("redocly", "Redocly CLI")
    result = subprocess.run(
        [str(redocly), "lint", "openapi.json", "--config", "redocly.yaml", "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **QUIET},
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    problems = [
        f"{p['severity']} {p['ruleId']} at {', '.join(loc['pointer'] for loc in p['location'])}: {p['message']}"
        for p in report["problems"]
    ]
    assert report["totals"]["errors"] == report["totals"]["warnings"] == 0, "\n".join(problems)
    assert not problems, "\n".join(problems)
