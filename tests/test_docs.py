"""The README against the code: every error code, scope and setting is documented."""

from __future__ import annotations

from pathlib import Path

from app.domain import errors
from app.domain.tiers import TIERS
from app.web import errors as http_errors

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_documents_every_error_code():
    codes = {code for _, code in http_errors.DOMAIN_ERRORS.values()}
    assert all(cls in http_errors.DOMAIN_ERRORS for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.ServiceError))
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
