# The production server: `python -m app serve` (what `make serve` runs), gunicorn with
# WEB_CONCURRENCY uvicorn workers, as an unprivileged user, the SQLite database on a volume.
#   docker build -t socdefenders-keys .
#   docker volume create keys-data
#   docker run --rm -v keys-data:/data socdefenders-keys python -m app migrate   # once
#   docker run -d -p 8000:8000 -v keys-data:/data -e SUPABASE_JWT_SECRET=... socdefenders-keys
# Podman stores the HEALTHCHECK only in Docker's image format: `podman build --format docker`.
# PYTHON_IMAGE: any Debian-like image with Python 3.11 or later on PATH as `python`, with pip
# and useradd (tests/test_container.py builds from a debootstrapped Debian bookworm, Python 3.11).
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}

# UV_SYSTEM_CERTS: uv trusts the image's certificate store (where a site behind a
# TLS-inspecting proxy adds its CA), as pip does and as the Makefile sets it.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy UV_SYSTEM_CERTS=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /srv/keys
# uv at the version the Makefile pins, hashes checked; then exactly what uv.lock pins (no dev),
# on the image's own Python.
COPY tools/uv.txt tools/uv.txt
RUN python -m pip install --no-cache-dir --require-hashes --no-deps -r tools/uv.txt
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project --python "$(command -v python)"
COPY openapi.json ./
COPY app app
COPY handlers handlers

RUN useradd --system --uid 10001 --home-dir /srv/keys keys && mkdir /data && chown keys /data
USER keys
VOLUME /data

ENV APP_ENV=production HOST=0.0.0.0 PORT=8000 WEB_CONCURRENCY=2 \
    DATABASE_URL=sqlite:////data/keys.db DOCS=off
EXPOSE 8000
# On the PORT the server listens on (`docker run -e PORT=9000 -p 9000:9000 ...` included).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os,sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=2).status != 200)"
# Exec form: the server is PID 1 and receives `docker stop`'s SIGTERM itself.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app", "serve"]
