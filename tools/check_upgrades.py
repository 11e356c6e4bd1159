"""`make check-upgrades`: the fence tests on the newest versions pyproject.toml's ranges admit.

uv.lock pins what the tests ran on; a range may admit newer releases (a patch of a fenced
package, a minor of another). This resolves the newest each range admits (`uv lock --upgrade`
on a copy of pyproject.toml and uv.lock, in a scratch folder), installs that into a scratch
environment, and runs the fence tests there, so that a maintainer learns what an upgrade
breaks before bumping the lock. The repository's uv.lock and .venv are not touched.

Usage: python tools/check_upgrades.py [--uv UV] [--python PYTHON] [--keep]
Exit status: 0 if the fence tests pass on the newest versions, 1 if not, 2 if they could not be resolved or installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What reaches into upstream internals, and the tests that hold it to the plain upstream behaviour.
FENCE_TESTS = [
    "tests/test_fence.py",
    "tests/test_compat.py",
    "tests/test_connexion_tuning.py",
    "tests/test_uvicorn_tuning.py",
    "tests/test_transport.py",
]


def locked_versions(lock: Path) -> dict[str, str]:
    """Name -> version of every package `lock` pins (the project itself left out)."""
    packages = tomllib.loads(lock.read_text())["package"]
    return {p["name"]: p["version"] for p in packages if "source" in p and "virtual" not in p["source"]}


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line per package whose version differs, appears or goes."""
    lines = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name, "-"), after.get(name, "-")
        if old != new:
            lines.append(f"  {name:32} {old:>14} -> {new}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uv", default=str(ROOT / "tools/venv/bin/uv"), help="the uv to run (make's $(UV))")
    parser.add_argument("--python", default="python3", help="the Python to build the environment on")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder, and say where it is")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="socdefenders-keys-upgrades-"))
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(scratch / "venv"), "UV_PYTHON_DOWNLOADS": "never"}
    try:
        for name in ("pyproject.toml", "uv.lock"):
            shutil.copy(ROOT / name, scratch / name)
        steps = [
            [args.uv, "lock", "--upgrade", "--quiet", "--project", str(scratch), "--python", args.python],
            [args.uv, "sync", "--locked", "--quiet", "--project", str(scratch), "--python", args.python],
        ]
        for step in steps:
            if subprocess.run(step, env=env, check=False).returncode != 0:
                print(
                    f"check-upgrades: `{' '.join(step[:2])}` failed: the newest versions could not be "
                    "resolved or installed",
                    file=sys.stderr,
                )
                return 2
        moved = changes(locked_versions(ROOT / "uv.lock"), locked_versions(scratch / "uv.lock"))
        print("check-upgrades: the newest versions pyproject.toml's ranges admit, against uv.lock:")
        print("\n".join(moved) if moved else "  none: uv.lock already pins the newest version each range admits")
        tests = subprocess.run(
            [str(scratch / "venv/bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *FENCE_TESTS],
            cwd=ROOT,
            env={**os.environ},
            check=False,
        )
        verdict = "pass" if tests.returncode == 0 else "FAIL"
        print(
            f"check-upgrades: the fence tests {verdict} on these versions"
            + ("" if tests.returncode == 0 else ": fix what failed before `make lock` takes them")
        )
        return 0 if tests.returncode == 0 else 1
    finally:
        if args.keep:
            print(f"check-upgrades: the scratch environment is in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
