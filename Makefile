# The project's vocabulary: the README and CI use these targets.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Development server on HOST:PORT (default 127.0.0.1:8000), SQLite in data/keys.db.
run: $(STAMP)
	$(PY) -m app run

## Production: gunicorn with WEB_CONCURRENCY (default 2) uvicorn workers; needs SUPABASE_JWT_SECRET.
serve: $(STAMP)
	APP_ENV=production $(PY) -m app serve

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check app handlers tests
	$(VENV)/bin/mypy app handlers

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
