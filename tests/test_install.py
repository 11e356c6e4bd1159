"""The installed environment against uv.lock and pyproject.toml.

`make install` runs `uv sync --locked`: this checks it did its job (every package at the
locked version, nothing else), that every import the code makes is a declared dependency,
and that the production install (`uv sync --no-dev`) carries no development tool.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import distributions, packages_distributions

from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.live import ROOT

LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]
DEV_TOOLS = {"pytest", "schemathesis", "hypothesis", "ruff", "mypy", "pip-audit", "bandit"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(entry: dict) -> bool:
    return "marker" not in entry or Marker(entry["marker"]).evaluate({"extra": ""})


def locked_closure(groups: Iterable[str]) -> dict[str, str]:
    """Name -> version of every locked package this platform installs for the project and `groups`."""
    packages = {(p["name"], p.get("version")): p for p in LOCK["package"]}
    by_name: dict[str, list[dict]] = {}
    for package in LOCK["package"]:
        by_name.setdefault(package["name"], []).append(package)

    def resolve(entry: dict) -> dict:
        candidates = by_name[entry["name"]]
        if "version" in entry:
            return packages[(entry["name"], entry["version"])]
        assert len(candidates) == 1, f"{entry['name']} is locked at several versions: say which"
        return candidates[0]

    root = by_name[PROJECT][0]
    pending = list(root.get("dependencies", []))
    for group in groups:
        pending += root.get("dev-dependencies", {})[group]
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    while pending:
        entry = pending.pop()
        if not _applies(entry):
            continue
        package = resolve(entry)
        found[package["name"]] = package["version"]
        for extra in [None, *entry.get("extra", [])]:
            if (package["name"], extra or "") in seen:
                continue
            seen.add((package["name"], extra or ""))
            pending += package.get("dependencies", []) if extra is None else package["optional-dependencies"][extra]
    return found


def installed() -> dict[str, str]:
    return {normalise(d.metadata["Name"]): d.version for d in distributions()}


def test_the_environment_is_exactly_the_lock_file():
    """`make test` ran `uv sync --locked`: every locked package at its version, and nothing else."""
    assert installed() == locked_closure(PYPROJECT["dependency-groups"])


def test_the_production_install_carries_no_development_tool():
    runtime = locked_closure([])
    assert "connexion" in runtime and "gunicorn" in runtime
    assert not DEV_TOOLS & set(runtime)
    assert set(locked_closure(["dev"])) >= DEV_TOOLS


def test_connexion_is_locked_in_the_series_the_tuning_was_written_against():
    from app.compat import SUPPORTED_SERIES

    connexion = next(p for p in LOCK["package"] if p["name"] == "connexion")
    assert tuple(int(part) for part in connexion["version"].split(".")[:2]) == SUPPORTED_SERIES
    (declared,) = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("connexion")]
    assert not declared.specifier.contains("3.2.0") and not declared.specifier.contains("3.4.0")
    assert declared.specifier.contains(connexion["version"])


def _imports(folder: str) -> set[str]:
    """Top-level modules imported anywhere under `folder` (inside functions too)."""
    modules: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if {"venv", "node_modules"} & set(parts) or any(part.startswith(".") for part in parts):
            continue  # installed tools, not the project's code
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"__future__", "app", "handlers", "tests", "bench", "fuzz"}


def _declared(requirements: Iterable[str]) -> set[str]:
    return {normalise(Requirement(r).name) for r in requirements}


def _distributions_of(modules: set[str]) -> dict[str, set[str]]:
    owners = packages_distributions()
    return {module: {normalise(d) for d in owners.get(module, [module])} for module in modules}


def test_every_import_of_the_service_is_a_runtime_dependency():
    runtime = _declared(PYPROJECT["project"]["dependencies"])
    undeclared = {
        module: dists for module, dists in _distributions_of(_imports("app") | _imports("handlers")).items()
        if not dists & runtime
    }
    assert not undeclared


def test_every_import_of_the_tests_and_tools_is_declared():
    everything = _declared(PYPROJECT["project"]["dependencies"]) | _declared(PYPROJECT["dependency-groups"]["dev"])
    modules = set().union(*(_imports(folder) for folder in ("tests", "bench", "fuzz", "tools") if (ROOT / folder).is_dir()))
    undeclared = {module: dists for module, dists in _distributions_of(modules).items() if not dists & everything}
    assert not undeclared


def test_the_lock_file_pins_every_package_with_hashes():
    for package in LOCK["package"]:
        if package["name"] == PROJECT:
            continue
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files and all(f["hash"].startswith("sha256:") for f in files), package["name"]
