"""Every reach into a third-party package's internals sits inside the fence.

A private import (`from uvicorn._x import`, `from jsonschema import _keywords`), the use of a
private attribute an upstream object defines (`self._resolve_func()`), or an override of an
upstream class's private method (`def _get_verify_func`) is a bet on one version of that
package. Such bets live only in the fenced packages (`app.compat.FENCED_PACKAGES`), where
each override names the upstream code and version it replaces, where the tuned-against-plain
tests run them beside the untouched upstream code, and whose packages the start-up check
(`app.compat.check_upstream`) and pyproject.toml hold to the versions they were run on.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

import app
import handlers
from app.compat import FENCED_PACKAGES
from tests.live import ROOT

OWN = ("app", "handlers")
FENCED_PATHS = tuple(ROOT.joinpath(*name.split(".")) for name in FENCED_PACKAGES)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _fenced(path: Path) -> bool:
    return any(path.is_relative_to(fence) for fence in FENCED_PATHS)


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for folder in OWN:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top not in OWN and top not in sys.stdlib_module_names


def private_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, what) for each import of a private module or name of a third-party package."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _third_party(alias.name) and any(_private(part) for part in alias.name.split(".")):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _third_party(node.module):
            names = [alias.name for alias in node.names]
            if any(_private(part) for part in node.module.split(".")) or any(_private(n) for n in names):
                found.append((node.lineno, f"from {node.module} import {', '.join(names)}"))
    return found


def defined_names(trees: list[ast.Module]) -> set[str]:
    """Every name the project's own code defines: functions, classes, attributes, variables, arguments."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
    return names


def foreign_private_attributes(tree: ast.Module, own: set[str]) -> list[tuple[int, str]]:
    """(line, expression) for each `x._name` where nothing in the project defines `_name`: an upstream private."""
    return [
        (node.lineno, ast.unparse(node))
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own
    ]


def _modules() -> Iterator[object]:
    for package in (app, handlers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name == "app.__main__":
                continue
            yield importlib.import_module(info.name)


def private_overrides() -> list[str]:
    """`module.Class._name` for each private method or attribute a project class redefines over a third-party base."""
    found = []
    for module in _modules():
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            upstream = [base for base in cls.__mro__[1:] if _third_party(base.__module__)]
            for name in vars(cls):
                if _private(name) and any(name in vars(base) for base in upstream):
                    found.append(f"{module.__name__}.{cls.__qualname__}.{name}")
    return found


def test_no_private_import_from_a_third_party_package_outside_the_fence():
    outside = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path, tree in _sources()
        if not _fenced(path)
        for line, what in private_imports(tree)
    ]
    assert outside == []


def test_no_upstream_private_attribute_is_used_outside_the_fence():
    sources = list(_sources())
    own = defined_names([tree for path, tree in sources if not _fenced(path)])
    outside = [
        f"{path.relative_to(ROOT)}:{line}: {expression}"
        for path, tree in sources
        if not _fenced(path)
        for line, expression in foreign_private_attributes(tree, own)
    ]
    assert outside == []


def test_no_upstream_private_method_is_overridden_outside_the_fence():
    outside = [
        name for name in private_overrides() if not any(name.startswith(package + ".") for package in FENCED_PACKAGES)
    ]
    assert outside == []


def test_the_fence_test_sees_a_private_import_and_attribute():
    tree = ast.parse(
        "from jsonschema import _keywords\nimport uvicorn._types\nfrom app import _x\n"
        "from connexion.security import ApiKeySecurityHandler\nApiKeySecurityHandler._get_function\n"
    )
    assert private_imports(tree) == [(1, "from jsonschema import _keywords"), (2, "import uvicorn._types")]
    assert foreign_private_attributes(tree, defined_names([tree])) == [(5, "ApiKeySecurityHandler._get_function")]


def test_the_fenced_packages_use_upstream_internals():
    # Otherwise the fence would guard nothing, and the tests above would prove nothing.
    fenced = [(path, tree) for path, tree in _sources() if _fenced(path)]
    assert {path.parent.relative_to(ROOT).as_posix().replace("/", ".") for path, _ in fenced} == set(FENCED_PACKAGES)
    assert any(private_imports(tree) for _, tree in fenced)
    assert any(name.startswith(FENCED_PACKAGES) for name in private_overrides())
