"""Everything that reaches into Connexion's (and a2wsgi's, and Flask's) internals, for speed, in one place.

Profiling a loaded worker showed Connexion's per-request rebuilding costing more than the
service's own work. What this package changes, each piece headed by the upstream code and
version it replaces:

- `binding`: Flask runs inline on the event loop instead of a2wsgi's thread pool, each
  operation's argument binding and response building is worked out once, not per request,
  and Flask takes the rule Connexion's routing found instead of binding and matching its URL
  map a second time. The WSGI environ is built without a2wsgi's per-request lookups, a plain
  response is started without Werkzeug copying its headers, and whether a view is a coroutine
  function is asked once per function.
- `stack`: Connexion's middleware list, layer for layer, with an exact (method, path) table in
  front of the routing layer's regular expressions, request validators built once per
  operation, the Content-Type read without rebuilding a typing alias, and the Swagger UI layer
  consulted only for the paths it serves; without response validation, its pass-through layer
  is left out.

Written against, and checked with, connexion 3.3.0, a2wsgi 1.10, flask 3.1, werkzeug 3.1 and starlette 1.10:
`app.compat.check_upstream` refuses any other series, whose internals may differ, before the
app is built. `create_app(..., tuned=False)` builds the same app without any of this, and
tests/test_connexion_tuning.py holds the same conversation with both and requires identical
answers.
"""

from __future__ import annotations

from typing import Any

from app.web.connexion_tuning.binding import tune_flask_side
from app.web.connexion_tuning.stack import middlewares

__all__ = ["middlewares", "tune"]


def tune(app: Any) -> None:
    """Apply the Flask-side changes to a FlaskApp before it serves its first request."""
    tune_flask_side(app)
