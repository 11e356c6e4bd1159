"""The README against the code: every error code, scope and setting is documented."""

from __future__ import annotations

from pathlib import Path

from app import errors, http_errors
from app.tiers import TIERS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_documents_every_error_code():
    codes = {c.code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ServiceError)}
    codes |= set(http_errors.STATUS_CODES.values())
    assert codes - {"bad_request"} <= {c for c in codes if f"`{c}`" in README}
    assert "`bad_request`" in README


def test_readme_tables_every_scope_of_every_tier():
    for tier in TIERS.values():
        for scope in tier.scopes:
            assert f"| `{scope}` |" in README, scope


def test_readme_lists_every_setting_read_from_the_environment():
    source = (Path(__file__).resolve().parent.parent / "app" / "config.py").read_text()
    import re

    for name in set(re.findall(r'"([A-Z][A-Z_]+)"', source)) - {"INFO"}:
        assert f"`{name}`" in README, name


def test_pro_scopes_are_a_strict_superset_of_free():
    assert set(TIERS["free"].scopes) < set(TIERS["pro"].scopes)
