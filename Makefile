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

## Our server (1 and 2 workers) beside Prism's mock and a bare Starlette floor; writes bench/RESULTS.md.
PRISM := bench/.prism/node_modules/.bin/prism
bench: $(STAMP) $(PRISM)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/run.py

$(PRISM):
	npm install --prefix bench/.prism --no-audit --no-fund --loglevel=error @stoplight/prism-cli@5.16.0

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis bench/out bench/.prism
