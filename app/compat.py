"""The Connexion release series this service runs on, checked before it starts."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

# app/web/connexion_tuning/ overrides or copies Connexion internals as they are in 3.3, and
# app/web/security.py and app/web/validation.py extend its security handlers and validators.
# Other minor releases change them (3.1's _get_verify_func takes other arguments, its
# wrap_receive returns another shape, and its apiKey handlers receive no required_scopes),
# so no other series may run this code.
SUPPORTED_SERIES = (3, 3)


class UnsupportedConnexion(RuntimeError):
    """The installed Connexion is outside the series the service was written against."""


def connexion_version() -> str | None:
    """Return the installed Connexion version, or None if it is not installed."""
    try:
        return version("connexion")
    except PackageNotFoundError:
        return None


def check_connexion() -> None:
    """Raise UnsupportedConnexion, with a one-line message, unless Connexion 3.3.x is installed."""
    installed = connexion_version()
    match = re.match(r"(\d+)\.(\d+)", installed or "")
    if match and (int(match[1]), int(match[2])) == SUPPORTED_SERIES:
        return
    series = "{}.{}.x".format(*SUPPORTED_SERIES)
    found = f"connexion {installed} is installed" if installed else "connexion is not installed"
    raise UnsupportedConnexion(
        f"{found}, but this service runs only on connexion {series}: install the locked versions with `make install`"
    )

# Placeholder so the fence test can import before the fence exists.
FENCED_PACKAGES = ("app.web.connexion_tuning", "app.web.uvicorn_tuning")
