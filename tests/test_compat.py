"""The service refuses to start on a release of a package its fenced code reaches into, outside the versions it was run on."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from app import compat, create_app
from tests.live import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
SUPPORTED = {
    "connexion": "3.3.0",
    "a2wsgi": "1.10.10",
    "flask": "3.1.3",
    "werkzeug": "3.1.9",
    "starlette": "1.10.0",
    "uvicorn": "0.54.0",
    "httptools": "0.9.0",
}


def versions(**changed: str | None):
    table = {**SUPPORTED, **changed}
    return lambda package: table[package]


def test_the_fence_names_every_package_the_fenced_code_imports():
    assert {fence.package for fence in compat.FENCE} == set(SUPPORTED)


@pytest.mark.parametrize("version", ["3.3.0", "3.3.9", "3.3.1rc1"])
def test_check_upstream_accepts_the_supported_series(monkeypatch, version):
    monkeypatch.setattr(compat, "installed_version", versions(connexion=version))
    compat.check_upstream()


@pytest.mark.parametrize(
    ("package", "version", "series"),
    [
        ("connexion", "3.1.0", "3.3.x"),
        ("connexion", "3.2.0", "3.3.x"),
        ("connexion", "3.4.0", "3.3.x"),
        ("connexion", "4.0.0", "3.3.x"),
        ("connexion", "2.14.2", "3.3.x"),
        ("connexion", "33.0", "3.3.x"),
        ("uvicorn", "0.55.0", "0.54.x"),
        ("uvicorn", "0.53.1", "0.54.x"),
        ("httptools", "0.10.0", "0.9.x"),
        ("httptools", "0.8.0", "0.9.x"),
        ("a2wsgi", "1.11.0", "1.10.x"),
        ("flask", "3.2.0", "3.1.x"),
        ("starlette", "1.11.0", "1.10.x"),
    ],
)
def test_check_upstream_refuses_any_other_series_in_one_line(monkeypatch, package, version, series):
    monkeypatch.setattr(compat, "installed_version", versions(**{package: version}))
    with pytest.raises(compat.UnsupportedUpstream) as refused:
        compat.check_upstream()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{package} {version} is installed, but this service runs only on {package} {series}")
    assert message.endswith("install the locked versions with `make install`")


def test_check_upstream_names_every_package_out_of_range_in_one_line(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", versions(uvicorn="0.60.0", httptools=None))
    with pytest.raises(compat.UnsupportedUpstream) as refused:
        compat.check_upstream()
    message = str(refused.value)
    assert "\n" not in message
    assert "uvicorn 0.60.0 is installed, but this service runs only on uvicorn 0.54.x" in message
    assert "httptools is not installed, but this service runs only on httptools 0.9.x" in message
    assert "connexion" not in message


def test_the_installed_packages_are_supported():
    compat.check_upstream()


def test_create_app_refuses_an_unsupported_release(monkeypatch, settings):
    monkeypatch.setattr(compat, "installed_version", versions(connexion="3.2.0"))
    with pytest.raises(compat.UnsupportedUpstream):
        create_app(settings)


def test_pyproject_admits_exactly_the_fenced_ranges_and_the_lock_is_inside_them():
    declared = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    locked = {p["name"]: p["version"] for p in LOCK["package"]}
    for fence in compat.FENCE:
        assert declared[fence.package].specifier == SpecifierSet(fence.specifier), fence.package
        assert fence.admits(locked[fence.package]), fence.package


def test_every_declared_range_has_a_floor_the_lock_meets_and_a_ceiling():
    # A range admits only what the code has been run on: no floor below the locked series, no open top.
    locked = {p["name"].lower(): p["version"] for p in LOCK["package"]}
    for text in PYPROJECT["project"]["dependencies"] + PYPROJECT["dependency-groups"]["dev"]:
        requirement = Requirement(text)
        version = locked[requirement.name.lower().replace("_", "-")]
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        ceilings = [s.version for s in requirement.specifier if s.operator == "<"]
        assert floors and ceilings, text
        series = ".".join(version.split(".")[:2])
        assert requirement.specifier.contains(version), text
        assert floors[0] == series, f"{text}: the floor is not the locked series {series}"
        # No higher than the next major release, or for a 0.x package the next minor (tighter is allowed).
        major, minor = (int(part) for part in version.split(".")[:2])
        widest = Version(f"0.{minor + 1}" if major == 0 else f"{major + 1}")
        assert Version(ceilings[0]) <= widest, f"{text}: the ceiling admits more than {widest}"


def _fake_package(tmp_path: Path, package: str, version: str) -> dict[str, str]:
    """An environment in which importlib.metadata finds `package` at `version` first."""
    info = tmp_path / "fake" / f"{package}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(tmp_path / "fake"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
        "SUPABASE_JWT_SECRET": "compat-test-secret-0123456789-0123456789",
        "PORT": "1",  # never reached: the command stops before listening
    }


def _python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run this Python with `args` in the project, as the service's entry points run."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("command", "package", "version", "series"),
    [
        ("run", "connexion", "3.1.0", "3.3.x"),
        ("serve", "connexion", "3.1.0", "3.3.x"),
        ("run", "uvicorn", "0.55.0", "0.54.x"),
        ("serve", "httptools", "0.10.0", "0.9.x"),
    ],
)
def test_the_entry_points_refuse_an_unsupported_release_in_one_line(tmp_path, command, package, version, series):
    env = _fake_package(tmp_path, package, version)
    if command == "serve":
        env["APP_ENV"] = "production"
    result = _python(env, "-m", "app", command)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"{package} {version} is installed, but this service runs only on {package} {series}"
    )


def test_the_gunicorn_entry_point_refuses_an_unsupported_release_in_one_line(tmp_path):
    env = _fake_package(tmp_path, "a2wsgi", "1.11.0")
    result = _python(env, "-c", "import app.asgi")
    assert result.returncode == 3  # gunicorn's "worker cannot boot": the master stops
    assert (
        result.stderr == "a2wsgi 1.11.0 is installed, but this service runs only on a2wsgi 1.10.x: "
        "install the locked versions with `make install`\n"
    )
