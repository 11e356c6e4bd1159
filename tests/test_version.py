"""One version, said the same everywhere: pyproject.toml, the CLI, /healthz, the changelog."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from app.version import __version__
from tests.live import ROOT


def test_the_version_is_the_one_pyproject_declares_and_the_changelog_heads():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {__version__} " in changelog


def test_version_flag_prints_it():
    result = subprocess.run([sys.executable, "-m", "app", "--version"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.strip() == f"socdefenders-keys {__version__}"
