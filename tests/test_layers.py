"""The folders are the architecture: web -> domain <- store, and nothing imports in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("flask", "connexion", "starlette", "werkzeug", "a2wsgi", "uvicorn", "gunicorn", "sqlite3", "sqlite_utils")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Return every module `path` imports, at any depth (function bodies included)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for folder in ("app", "handlers") for p in (ROOT / folder).rglob("*.py")}


def project_imports(name: str) -> set[str]:
    return {i for i in imports(MODULES[name]) if i in MODULES and i != name}


def test_the_domain_imports_no_framework_and_no_database_driver():
    for name, path in MODULES.items():
        if name.startswith("app.domain"):
            foreign = {i for i in imports(path) if i.split(".")[0] in FRAMEWORKS}
            assert not foreign, f"{name} imports {sorted(foreign)}"
            assert not {i for i in project_imports(name) if not i.startswith("app.domain")}, name


def test_the_store_knows_the_domain_but_not_the_web():
    for name in MODULES:
        if name.startswith("app.store"):
            assert not {i for i in project_imports(name) if i.startswith(("app.web", "handlers"))}, name


# The one handler that is HTTP through and through: the gateway check's inputs are a proxy's
# headers and its refusal has nginx's form (app.web.gateway); the handler only binds the operation.
HTTP_HANDLERS = {"handlers.gateway": {"app.web", "app.web.gateway"}}


def test_handlers_reach_the_web_layer_only_through_its_context():
    for name in MODULES:
        if name.startswith("handlers"):
            allowed = ("handlers", "app.domain", "app.services")
            # The context reads and writes the request's one typed state object (app.web.state).
            exempt = HTTP_HANDLERS.get(name, set()) | ({"app.web", "app.web.state"} if name == "handlers.context" else set())
            assert all(i.startswith(allowed) or i in exempt for i in project_imports(name)), (name, project_imports(name))


def test_the_services_know_the_domain_but_not_the_web():
    for name in MODULES:
        if name == "app.services":
            foreign = {i for i in imports(MODULES[name]) if i.split(".")[0] in FRAMEWORKS}
            assert not foreign, f"{name} imports {sorted(foreign)}"
            assert not {i for i in project_imports(name) if i.startswith(("app.web", "handlers"))}, name


def test_the_tuning_is_imported_only_by_the_factory():
    for name in MODULES:
        if not name.startswith(("app.web.connexion_tuning", "app.web.factory")):
            assert not {i for i in project_imports(name) if i.startswith("app.web.connexion_tuning")}, name


def test_no_module_imports_itself_through_a_circle():
    graph = {name: project_imports(name) for name in MODULES}
    # A package's __init__ re-exporting its own modules is not a circle through that module.
    for name in graph:
        graph[name] = {i for i in graph[name] if not (name.startswith(i + ".") and MODULES[i].name == "__init__.py")}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for nxt in graph[name]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_a_handler_can_be_imported_alone():
    import subprocess
    import sys

    for module in ("handlers.keys", "handlers.context", "app.services", "app.domain.keys"):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
