"""pip-audit on the locked requirements, with PyPI's project JSON for what it had to skip.

Usage: python tools/audit.py REQUIREMENTS   (`make audit` exports REQUIREMENTS from uv.lock)

pip-audit asks PyPI's per-release JSON (/pypi/NAME/VERSION/json) for each package's known
vulnerabilities. Some networks, this project's CI machines among them, serve PyPI's project
JSON (/pypi/NAME/json) but answer 404 for the per-release one, and pip-audit then skips the
package. For each package it skipped, this reads the project JSON instead: its
`vulnerabilities` are those of the project's latest release, so when the lock pins that
release they are its audit. A package neither could audit is named, with the reason.

Exit status: 1 if a known vulnerability affects a locked package (upgrade it: `make lock`,
raising its lower bound in pyproject.toml if need be), 2 if pip-audit failed, else 0.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_JSON = "https://pypi.org/pypi/{name}/json"


@dataclass
class Audit:
    """What is known about the locked packages."""

    audited: dict[str, str] = field(default_factory=dict)  # name -> how
    vulnerable: dict[str, list[str]] = field(default_factory=dict)  # name -> "ID (fixed in X)"
    unaudited: dict[str, str] = field(default_factory=dict)  # name -> why not


def pins(requirements: str) -> dict[str, str]:
    """Name -> version of every `name==version` line of a requirements file."""
    return {
        normalise(name): version
        for name, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", requirements, re.MULTILINE)
    }


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def describe(vulnerability: dict) -> str:
    fixed = ", ".join(vulnerability.get("fixed_in") or []) or "no fixed release"
    return f"{vulnerability['id']} (fixed in {fixed})"


def merge(report: dict, locked: dict[str, str], project_data: dict[str, dict | None]) -> Audit:
    """Combine pip-audit's JSON report with PyPI project JSON fetched for the packages it skipped."""
    audit = Audit()
    reported = {normalise(d["name"]) for d in report["dependencies"]}
    # pip-audit leaves out what this platform would not install (an environment marker):
    # audit those too, since another platform installs them from the same lock.
    left_out = [{"name": name, "skip_reason": "left out by pip-audit"} for name in sorted(set(locked) - reported)]
    for dependency in report["dependencies"] + left_out:
        name = normalise(dependency["name"])
        if "skip_reason" not in dependency:
            audit.audited[name] = "pip-audit"
            if dependency.get("vulns"):
                audit.vulnerable[name] = [
                    f"{v['id']} (fixed in {', '.join(v.get('fix_versions') or []) or 'no fixed release'})"
                    for v in dependency["vulns"]
                ]
            continue
        data = project_data.get(name)
        if data is None:
            audit.unaudited[name] = dependency["skip_reason"]
            continue
        latest = data["info"]["version"]
        if latest != locked[name]:
            audit.unaudited[name] = (
                f"{locked[name]} is locked; PyPI served no per-release data here, and its project data "
                f"describes only the latest release, {latest}"
            )
            continue
        audit.audited[name] = "PyPI project JSON (the latest release)"
        found = [describe(v) for v in data.get("vulnerabilities") or [] if not v.get("withdrawn")]
        if found:
            audit.vulnerable[name] = found
    return audit


def fetch_project(name: str) -> dict | None:
    try:
        with urllib.request.urlopen(PROJECT_JSON.format(name=name), timeout=30) as response:
            return json.load(response)
    except OSError as exc:
        print(f"  {name}: PyPI project JSON unavailable: {exc}", file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    requirements = Path(argv[1])
    locked = pins(requirements.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "pip-audit.json"
        result = subprocess.run(
            [sys.executable, "-m", "pip_audit", "--requirement", str(requirements), "--disable-pip",
             "--require-hashes", "--vulnerability-service", "pypi", "--progress-spinner", "off",
             "--format", "json", "--output", str(output)],
            check=False,
        )
        if result.returncode not in (0, 1) or not output.exists():
            print(f"pip-audit failed (exit {result.returncode})", file=sys.stderr)
            return 2
        report = json.loads(output.read_text())
    skipped = [normalise(d["name"]) for d in report["dependencies"] if "skip_reason" in d]
    skipped += sorted(set(locked) - {normalise(d["name"]) for d in report["dependencies"]})
    audit = merge(report, locked, {name: fetch_project(name) for name in skipped})

    by_how: dict[str, int] = {}
    for how in audit.audited.values():
        by_how[how] = by_how.get(how, 0) + 1
    print(f"{len(locked)} locked packages: " + ", ".join(f"{n} audited by {how}" for how, n in by_how.items()))
    for name, why in sorted(audit.unaudited.items()):
        print(f"NOT AUDITED {name} {locked.get(name, '?')}: {why}")
    for name, found in sorted(audit.vulnerable.items()):
        print(f"VULNERABLE {name} {locked.get(name, '?')}: {'; '.join(found)}")
    if audit.vulnerable:
        return 1
    print(f"No known vulnerabilities in {len(audit.audited)} audited packages ({len(audit.unaudited)} not audited).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
