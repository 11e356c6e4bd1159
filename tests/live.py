"""Helpers to run the real server in a subprocess and talk to it over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """`python -m app <command>` on a free port, its output captured to a file."""

    def __init__(self, command: str, tmp: Path, env: dict[str, str] | None = None,
                 argv: list[str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{command}-{self.port}.log"
        self.database_path = tmp / "live" / "keys.db"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("APP_ENV", "SUPABASE_JWT_SECRET")},
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATABASE_URL": f"sqlite:///{self.database_path}",
            "PYTHONUNBUFFERED": "1",
            "CREATE_DATABASE": "on",  # each server starts on a fresh database
            **(env or {}),
        }
        self.command = command
        self.argv = argv or [sys.executable, "-m", "app", command]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LiveServer:
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.output()}")
            try:
                if self.request("GET", "/healthz")[0] == 200 and self._workers_started():
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def _workers_started(self) -> bool:
        """Under `serve`, every worker has built its app (one answering /healthz is not all)."""
        if self.command != "serve" or self.env.get("LOG_LEVEL", "info").lower() not in ("info", "debug"):
            return True  # the start-up line is an INFO one
        workers = int(self.env.get("WEB_CONCURRENCY", "2"))
        return self.output().count("starting (gunicorn worker)") >= workers

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # already gone: a test killed it
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status, response_headers = response.read(), response.status, response.headers
        except urllib.error.HTTPError as error:
            raw, status, response_headers = error.read(), error.code, error.headers
        return status, {k.lower(): v for k, v in response_headers.items()}, json.loads(raw) if raw else None


def node_tool(name: str, label: str) -> Path:
    """The Node.js tool `name` that `make test` installs into tools/node_modules (a linter of the
    contract); skipped, saying why, where it is not installed, and a failure under CI."""
    import pytest

    tool = ROOT / "tools" / "node_modules" / ".bin" / name
    if not tool.exists():
        message = (
            f"{label} is not installed, so the contract was not linted by it: install Node.js and npm "
            "(apt-get install nodejs npm), then run `make test`, which installs it into tools/node_modules"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return tool


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with `labels` in a Prometheus text page."""
    import re

    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total
