"""A stand-in for the Threat Intelligence API behind a gateway: canned IOCs, and an echo of
what it received (method, URI, headers), so that tests see what the proxy let through.

`python -m tests.standin PORT` serves it on 127.0.0.1:PORT (the bench runs it so).
`nginx_command` renders an nginx template as the README says, for the tests and the bench.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IOCS = [
    {"type": "ipv4", "value": "203.0.113.66", "first_seen": "2026-12-01T08:00:00Z", "sources": 4},
    {"type": "domain", "value": "update-check.example", "first_seen": "2026-12-02T11:30:00Z", "sources": 2},
    {"type": "sha256", "value": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "sources": 1},
]


class StandIn(BaseHTTPRequestHandler):
    """Answers every request 200 with the canned IOCs and what it received."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body are two writes: without this, each answer on a kept-alive
        # connection waits for the proxy's delayed ACK (some 40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self) -> None:
        body = json.dumps(
            {
                "data": IOCS,
                "received": {
                    "method": self.command,
                    "uri": self.path,
                    "headers": [[name, value] for name, value in self.headers.items()],
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read the echo instead
        pass


def nginx_command(template: str, prefix: Path, env: dict[str, str]) -> list[str]:
    """Render `template` into `prefix`/nginx.conf as the README says (envsubst with the three
    names, from `env`), and return the command that runs it unprivileged in the foreground."""
    rendered = subprocess.run(
        ["envsubst", "${LISTEN_PORT} ${KEYS_SERVICE} ${UPSTREAM}"],
        input=template,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (prefix / "nginx.conf").write_text(rendered)
    return ["nginx", "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"]


def serve(port: int = 0) -> ThreadingHTTPServer:
    """Start the stand-in on 127.0.0.1:`port` (0: a free one) in a daemon thread; return the server."""
    server = ThreadingHTTPServer(("127.0.0.1", port), StandIn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), StandIn).serve_forever()
