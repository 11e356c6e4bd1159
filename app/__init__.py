"""SOC Defenders API-key service.

Layers: `app.domain` (the rules), `app.store` (where their records are kept), `app.services`
(the services wired once per app, with nothing HTTP in them) and `app.web` (the Connexion
app, with its performance tuning quarantined in `app.web.connexion_tuning`). The application
factory lives in `app.web.factory`; its names, and `build_services`, are re-exported here lazily,
so that light entry points (`python -m app serve`, `dev-token`, `set-tier`) and modules such
as `app.config` do not pay for importing Connexion.
"""

from __future__ import annotations

from typing import Any

_FACTORY_NAMES = {"SPEC_PATH", "create_app", "resolve_handler"}


def __getattr__(name: str) -> Any:
    if name in _FACTORY_NAMES:
        from app.web import factory

        return getattr(factory, name)
    if name == "build_services":
        from app import services

        return services.build_services
    raise AttributeError(f"module 'app' has no attribute {name!r}")
