"""`python -m app serve` with the SQLAlchemy Core store (bench/corestore.py), for `make bench BENCH=core`.

`python -m bench.coreserve` runs the product's own `serve` command (its checks, its gunicorn
command line and configuration, `app.gunicorn_config`, the same worker class) with one change:
each worker builds its app with `bench.coreserve:from_env()` in place of `app.asgi:from_env()`,
which is `app.asgi.from_env` with `CoreStore` opened where it opens the shipped store
(`PrebuiltCoreStore` with BENCH_CORE_STATEMENTS=once: statements built once). Nothing under app/
knows of it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHIPPED_ENTRY = "app.asgi:from_env()"
CORE_ENTRY = "bench.coreserve:from_env()"


def from_env() -> Any:
    """`app.asgi.from_env()`, with the Core store (called once in each gunicorn worker)."""
    import app.asgi
    from bench.corestore import CoreStore, PrebuiltCoreStore

    statements = os.environ.get("BENCH_CORE_STATEMENTS", "per-call")
    kind = {"per-call": CoreStore, "once": PrebuiltCoreStore}.get(statements)
    if kind is None:
        raise SystemExit(f"bench.coreserve: BENCH_CORE_STATEMENTS is per-call or once, not {statements!r}")

    def open_core_store(settings: Any, migrate: bool = True, create: bool | None = None) -> CoreStore:
        if settings.engine != "sqlite":
            raise SystemExit("bench.coreserve: the Core trial runs on SQLite only")
        return kind(settings.database_path, create=settings.create_database if create is None else create)

    app.asgi.open_store = open_core_store  # the name app.asgi.from_env opens its store with
    return app.asgi.from_env()


def main() -> int:
    from app import __main__ as cli

    execv = os.execv

    def serve_core(path: str, argv: list[str]) -> None:
        # `serve` ends by replacing itself with gunicorn; its command line names the app last.
        if argv[-1] != SHIPPED_ENTRY:
            raise SystemExit(f"bench.coreserve: `serve` no longer ends its command line with {SHIPPED_ENTRY}")
        execv(path, [*argv[:-1], CORE_ENTRY])

    os.execv = serve_core  # type: ignore[assignment]
    return cli.main(["serve"])


if __name__ == "__main__":
    sys.exit(main())
