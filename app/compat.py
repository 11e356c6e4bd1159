"""The upstream releases this service runs on, checked before it starts.

The fenced packages (`FENCED_PACKAGES`) override or call other packages' internals, which
change between releases; elsewhere the code uses only public interfaces (tests/test_fence.py).
`FENCE` names each package whose internals are touched, the versions the code has been run
on, and the code that touches them. pyproject.toml admits exactly these ranges
(tests/test_compat.py), and `check_upstream` refuses to start, in one line, on anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

# The only packages that may reach into another package's internals.
FENCED_PACKAGES = ("app.web.connexion_tuning", "app.web.uvicorn_tuning")


@dataclass(frozen=True)
class Fence:
    """A package whose internals the code touches: the versions it was run on, and where."""

    package: str
    lowest: tuple[int, int]  # the series it was written against ...
    below: tuple[int, int]  # ... and the first series it may not run on
    code: str  # what touches the internals

    @property
    def specifier(self) -> str:
        """The range, as pyproject.toml writes it."""
        return ">={}.{},<{}.{}".format(*self.lowest, *self.below)

    def admits(self, installed: str) -> bool:
        """Whether version `installed` (of this package) is in the range."""
        match = re.match(r"(\d+)\.(\d+)", installed)
        if match is None:
            return False
        return self.lowest <= (int(match[1]), int(match[2])) < self.below


# Within one minor series (0.x: one minor) upstream keeps its internals; a new one may not.
FENCE = (
    Fence("connexion", (3, 3), (3, 4), "app/web/connexion_tuning (copies and overrides of its 3.3 internals)"),
    Fence("a2wsgi", (1, 10), (1, 11), "app/web/connexion_tuning/binding.py (a copy of a2wsgi.wsgi.build_environ)"),
    Fence(
        "flask",
        (3, 1),
        (3, 2),
        "app/web/connexion_tuning/binding.py (RequestContext.push matching only with a URL adapter; ensure_sync)",
    ),
    Fence(
        "werkzeug",
        (3, 1),
        (3, 2),
        "app/web/connexion_tuning/binding.py (what Response.get_wsgi_headers changes, and when)",
    ),
    Fence("starlette", (1, 10), (1, 11), "app/web/connexion_tuning/stack.py (what Router.app writes into the scope)"),
    Fence("uvicorn", (0, 54), (0, 55), "app/web/uvicorn_tuning (HttpToolsProtocol's private helpers)"),
    Fence("httptools", (0, 9), (0, 10), "app/web/uvicorn_tuning (the parser's exceptions and their context)"),
)


class UnsupportedUpstream(RuntimeError):
    """An installed package is outside the versions the service's fenced code was run on."""


def installed_version(package: str) -> str | None:
    """Return the installed version of `package`, or None if it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def check_upstream() -> None:
    """Raise UnsupportedUpstream, with a one-line message, unless every fenced package is in its range."""
    problems = []
    for fence in FENCE:
        installed = installed_version(fence.package)
        if installed is not None and fence.admits(installed):
            continue
        found = f"{fence.package} {installed} is installed" if installed else f"{fence.package} is not installed"
        one_series = fence.below == (fence.lowest[0], fence.lowest[1] + 1)
        series = "{}.{}.x".format(*fence.lowest) if one_series else fence.specifier
        problems.append(f"{found}, but this service runs only on {fence.package} {series}")
    if problems:
        raise UnsupportedUpstream("; ".join(problems) + ": install the locked versions with `make install`")
