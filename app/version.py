"""The service's version: `python -m app --version`, `/healthz` and the start-up log line."""

__version__ = "0.2.0"  # as pyproject.toml says (tests/test_version.py holds them together)
