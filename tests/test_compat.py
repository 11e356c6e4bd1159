"""The service refuses to start on a Connexion release outside the series its tuning copies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import compat, create_app
from tests.live import ROOT


@pytest.mark.parametrize("version", ["3.3.0", "3.3.9", "3.3.1rc1"])
def test_check_connexion_accepts_the_supported_series(monkeypatch, version):
    monkeypatch.setattr(compat, "connexion_version", lambda: version)
    compat.check_connexion()


@pytest.mark.parametrize("version", ["3.1.0", "3.2.0", "3.4.0", "4.0.0", "2.14.2", "33.0"])
def test_check_connexion_refuses_any_other_series_in_one_line(monkeypatch, version):
    monkeypatch.setattr(compat, "connexion_version", lambda: version)
    with pytest.raises(compat.UnsupportedConnexion) as refused:
        compat.check_connexion()
    message = str(refused.value)
    assert "\n" not in message
    assert f"connexion {version} is installed" in message
    assert "connexion 3.3.x" in message


def test_check_connexion_refuses_a_missing_connexion(monkeypatch):
    monkeypatch.setattr(compat, "connexion_version", lambda: None)
    with pytest.raises(compat.UnsupportedConnexion, match="connexion is not installed"):
        compat.check_connexion()


def test_the_installed_connexion_is_supported():
    compat.check_connexion()


def test_create_app_refuses_an_unsupported_connexion(monkeypatch, settings):
    monkeypatch.setattr(compat, "connexion_version", lambda: "3.2.0")
    with pytest.raises(compat.UnsupportedConnexion):
        create_app(settings)


def _fake_connexion(tmp_path: Path, version: str) -> dict[str, str]:
    """An environment in which importlib.metadata finds connexion `version` first."""
    info = tmp_path / "fake" / f"connexion-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: connexion\nVersion: {version}\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(tmp_path / "fake"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
        "SUPABASE_JWT_SECRET": "compat-test-secret-0123456789-0123456789",
        "PORT": "1",  # never reached: the command stops before listening
    }


@pytest.mark.parametrize("command", ["run", "serve"])
def test_the_entry_points_refuse_an_unsupported_connexion_in_one_line(tmp_path, command):
    env = _fake_connexion(tmp_path, "3.1.0")
    if command == "serve":
        env["APP_ENV"] = "production"
    result = subprocess.run([sys.executable, "-m", "app", command], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("connexion 3.1.0 is installed, but this service runs only on connexion 3.3.x")
