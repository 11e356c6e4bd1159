# The project's vocabulary: the README and CI use these targets.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python

# Installs: uv puts exactly what uv.lock pins, hashes checked, into $(VENV), on the Python
# that $(PYTHON) names (never one it downloads). uv itself is bootstrapped with pip into
# tools/venv, from tools/uv.txt (UV_VERSION, with hashes; `make lock` writes it).
UV_VERSION := 0.13.9
UV         := tools/venv/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
# TLS: trust the machine's own certificate store (where a site adds its proxy's CA), as pip does.
export UV_SYSTEM_CERTS := 1
# Runtime packages only (make run, make serve); runtime and development packages (make test, ...).
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev

# Node.js tools the tests use (Spectral, Redocly CLI), pinned in tools/package-lock.json. Without
# npm their tests say they were skipped and how to install them; .ci/run installs npm.
SPECTRAL   := tools/node_modules/.bin/spectral

# Clients generated from openapi.json into build/clients/ (`make clients`): a Python package by
# openapi-python-client (pinned in uv.lock) and TypeScript types for openapi-fetch by
# openapi-typescript (pinned, with TypeScript, in clients/package-lock.json).
# tests/test_generated_clients.py drives each through a key's life against a live server.
PY_CLIENT  := build/clients/python/socdefenders_keys_client/__init__.py
TS_CLIENT  := build/clients/typescript/schema.d.ts
TS_TOOLS   := clients/node_modules/.bin/openapi-typescript
TEST_TOOLS := $(PY_CLIENT) $(if $(shell command -v npm),$(SPECTRAL) $(TS_CLIENT))

.PHONY: install lock check-upgrades run mock serve test lint audit fuzz bench bench-ab bench-instructions clean \
	clients clients-python clients-typescript

$(UV): tools/uv.txt
	$(PYTHON) -m venv tools/venv
	tools/venv/bin/python -m pip install --quiet --require-hashes --no-deps -r tools/uv.txt
	touch $@

# --locked: refuse a uv.lock that no longer matches pyproject.toml (run `make lock`).
# --inexact: leave development packages alone if a `make test` installed them.
$(RUNTIME_STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --locked --no-dev --inexact --python $(PYTHON)
	touch $@

# Exact: anything not in the lock is removed.
$(DEV_STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --locked --python $(PYTHON)
	touch $@ $(RUNTIME_STAMP)

$(SPECTRAL): tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	touch $@

install: $(DEV_STAMP)

## A Python client and TypeScript types (for openapi-fetch) generated from openapi.json, in build/clients/.
clients: clients-python clients-typescript
clients-python: $(PY_CLIENT)
clients-typescript: $(TS_CLIENT)

$(PY_CLIENT): openapi.json clients/openapi-python-client.yaml $(DEV_STAMP)
	rm -rf build/clients/python
	$(VENV)/bin/openapi-python-client generate --path openapi.json --config clients/openapi-python-client.yaml \
		--meta setup --output-path build/clients/python
	touch $@

$(TS_TOOLS): clients/package.json clients/package-lock.json
	npm ci --prefix clients --no-audit --no-fund --loglevel=error
	touch $@

$(TS_CLIENT): openapi.json $(TS_TOOLS)
	mkdir -p $(@D)
	$(TS_TOOLS) openapi.json --output $@

## Re-resolve uv.lock (and tools/uv.txt) to the newest versions pyproject.toml allows.
lock: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)
	echo "uv==$(UV_VERSION)" | $(UV) pip compile --universal --generate-hashes --quiet \
		--custom-compile-command "make lock" --python-version 3.11 - -o tools/uv.txt.new
	cmp -s tools/uv.txt.new tools/uv.txt && rm tools/uv.txt.new || mv tools/uv.txt.new tools/uv.txt

## The fence tests (tests/test_fence.py, test_compat, test_connexion_tuning, test_uvicorn_tuning,
## test_transport) on the newest versions pyproject.toml's ranges admit, resolved and installed in a
## scratch folder: what an upgrade breaks, learnt before `make lock`. uv.lock and $(VENV) stay as they are.
check-upgrades: | $(UV)
	$(PYTHON) tools/check_upgrades.py --uv $(UV) --python $(PYTHON)

## Development server on HOST:PORT (default 127.0.0.1:8000), SQLite in data/keys.db.
run: $(RUNTIME_STAMP)
	$(PY) -m app run

## Development server on a temporary database seeded with the demo account, removed on exit.
mock: $(RUNTIME_STAMP)
	$(PY) -m app mock

## Production: gunicorn with WEB_CONCURRENCY (default 2) uvicorn workers; needs SUPABASE_JWT_SECRET.
# exec: the recipe's shell becomes gunicorn's master, so the SIGTERM make passes on to its
# child reaches the server itself (a shell in between would die and leave gunicorn running).
serve: $(RUNTIME_STAMP)
	APP_ENV=production exec $(PY) -m app serve

test: $(DEV_STAMP) $(TEST_TOOLS)
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check app handlers tests tools/audit.py fuzz
	$(VENV)/bin/mypy app handlers

## pip-audit on every package uv.lock pins; bandit on app/ and handlers/ (a medium or high finding fails).
# Each finding accepted is justified where it is (`# nosec B608` and the reason above it). bandit
# warns "nosec encountered ... but no failed test" for the other strings on such a line: not findings.
audit: $(DEV_STAMP)
	$(UV) export --locked --all-groups --no-emit-project --format requirements-txt --quiet \
		-o $(VENV)/locked-requirements.txt
	$(PY) tools/audit.py $(VENV)/locked-requirements.txt
	$(VENV)/bin/bandit --quiet --recursive app handlers --severity-level medium

## Schemathesis against the live server: every check and phase, 1,000 examples per operation.
fuzz: $(DEV_STAMP)
	$(PY) fuzz/run.py

## Our server (1 and 2 workers) beside Prism's mock and a bare Starlette floor, then one and two
## instances on PostgreSQL beside SQLite, then nginx with the gateway check beside nginx straight
## to a stand-in upstream; writes bench/RESULTS.md. `make bench BENCH=pg`: the PostgreSQL part alone
## (BENCH_DATABASE_URL, default TEST_DATABASE_URL or the local test database); BENCH=gateway: the gateway part alone;
## BENCH=core: the store's whoami and mint paths in SQLAlchemy Core against the shipped store (bench/core.py,
## which needs the development packages).
PRISM := bench/.prism/node_modules/.bin/prism
BENCH ?= all
bench: $(if $(filter core,$(BENCH)),$(DEV_STAMP),$(RUNTIME_STAMP)) $(if $(filter pg gateway core,$(BENCH)),,$(PRISM))
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	command -v nginx >/dev/null && command -v envsubst >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx gettext-base)
	$(PY) bench/run.py $(BENCH)

$(PRISM):
	npm install --prefix bench/.prism --no-audit --no-fund --loglevel=error @stoplight/prism-cli@5.16.0

clean:
	rm -rf $(VENV) tools/venv tools/node_modules clients/node_modules build .pytest_cache .hypothesis bench/out bench/.prism fuzz/out

## This tree against earlier revisions in one window (REVS="rev ..."), one worker each, under wrk.
bench-ab: $(DEV_STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/ab.py $(REVS)

## Instructions per request (callgrind, in process) of this tree and earlier revisions (REVS="rev ...").
bench-instructions: $(DEV_STAMP)
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(PY) bench/instructions.py $(REVS)
