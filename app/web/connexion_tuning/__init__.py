"""Everything that reaches into Connexion's (and a2wsgi's) internals, for speed, in one place.

Profiling a loaded worker showed Connexion's per-request rebuilding costing more than the
service's own work. What this package changes, each piece headed by the upstream code and
version it replaces:

- `binding`: Flask runs inline on the event loop instead of a2wsgi's thread pool, and each
  operation's argument binding and response building is worked out once, not per request.
- `stack`: Connexion's middleware list, layer for layer, with request validators built once
  per operation and the Swagger UI layer consulted only for the paths it serves; without
  response validation, its pass-through layer is left out.
- `security`: security handlers inspect the security function's signature once.

Written against, and checked with, connexion 3.3.0 (`SUPPORTED_CONNEXION`): `check_version`
refuses any other minor series, whose internals may differ. `create_app(..., tuned=False)`
builds the same app without any of this, and tests/test_connexion_tuning.py holds the same
conversation with both and requires identical answers.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from app.web.connexion_tuning.binding import tune_flask_side
from app.web.connexion_tuning.security import signature_once
from app.web.connexion_tuning.stack import middlewares

SUPPORTED_CONNEXION = "3.3"

__all__ = ["SUPPORTED_CONNEXION", "check_version", "middlewares", "signature_once", "tune"]


class UnsupportedConnexion(RuntimeError):
    """The installed Connexion is not the minor series the tuning was written against."""


def check_version(installed: str | None = None) -> None:
    """Raise UnsupportedConnexion unless Connexion is of the SUPPORTED_CONNEXION series."""
    installed = installed or version("connexion")
    if installed.split(".")[:2] != SUPPORTED_CONNEXION.split("."):
        raise UnsupportedConnexion(
            f"connexion {installed} is installed, but this service's Connexion tuning is written for "
            f"connexion {SUPPORTED_CONNEXION}.x; install the locked versions (make install)"
        )


def tune(app: Any) -> None:
    """Apply the Flask-side changes to a FlaskApp before it serves its first request."""
    tune_flask_side(app)
