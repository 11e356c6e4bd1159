"""`make bench`'s gateway row: the Threat Intelligence API through nginx with the gateway check
(deploy/nginx/gateway.conf.template, as shipped) beside nginx straight to the same stand-in
upstream, in one run, and the CPU the keys service spends per checked request beside whoami's.

    bench/run.py gateway    this part alone (`make bench BENCH=gateway`); rewrites only its
                            section of bench/RESULTS.md

The keys service is `python -m app serve` with one worker on CPU 1; nginx (one worker process)
and the stand-in upstream (nginx with canned IOCs) are unpinned; wrk runs on CPU 0. Keys are pro
keys, one per account, so no request is refused by a rate limit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run as bench  # noqa: E402
from tests.standin import nginx_command  # noqa: E402

HEADING = "## Behind a gateway"
TEMPLATE = ROOT / "deploy" / "nginx" / "gateway.conf.template"
URI = "/api/v1/iocs?limit=5"
# nginx straight to the upstream: the same process settings as the template, no check.
DIRECT = """worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 1024; }
http {
    access_log access.log;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    upstream intel_upstream { server ${UPSTREAM}; keepalive 32; }
    server {
        listen 127.0.0.1:${LISTEN_PORT};
        location / {
            proxy_pass http://intel_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""
# The stand-in upstream for the bench: nginx answering tests/standin.py's canned IOCs (Python's
# threading HTTP server, which the tests use to echo headers, caps out near 350 req/s here).
CANNED = """worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    server {
        listen 127.0.0.1:${LISTEN_PORT};
        default_type application/json;
        location / { return 200 '$canned'; }
    }
}
"""
LUA = """
dofile("{out}/keys-gw-keys.lua")
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "{uri}", {{["X-API-Key"] = keys[(i % #keys) + 1]}})
end
{delay}
"""


class Process:
    """A process started for the bench, in its own session, stopped at the end."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int) -> None:
        self.name, self.port = name, port
        self.log = open(bench.OUT / f"{name}.log", "wb")  # noqa: SIM115 -- closed by stop()
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while bench.get(f"http://127.0.0.1:{port}/ready-probe") == 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {bench.OUT / (name + '.log')}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        self.log.close()


def nginx(name: str, template: str, keys: int, upstream: int) -> Process:
    """nginx from `template` rendered as the README says (envsubst with the three names)."""
    prefix = bench.OUT / name
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    port = bench.free_port()
    env = {
        **os.environ,
        "LISTEN_PORT": str(port),
        "KEYS_SERVICE": f"127.0.0.1:{keys}",
        "UPSTREAM": f"127.0.0.1:{upstream}",
    }
    return Process(name, nginx_command(template, prefix, env), env, prefix, port)


def load(port: int, seconds: int, uri: str, keys_service: bench.Target, rate: float | None = None) -> dict:
    """One wrk run at 127.0.0.1:`port`, rotating the pro keys (at `rate` req/s, else as fast as
    answered); with the keys service's CPU time."""
    delay = ""
    if rate:  # independent arrivals, as bench/run.py's fixed-rate runs
        mean_ms = bench.CONNECTIONS * 1000.0 / rate
        delay = (
            f"math.randomseed(os.time())\ndelay = function() return -{mean_ms:.4f} * math.log(1 - math.random()) end"
        )
    script = bench.OUT / f"gateway-{port}.lua"
    script.write_text(LUA.format(out=bench.OUT, uri=uri, delay=delay) + bench.LUA_DONE)
    cpu_before = keys_service.cpu_seconds()
    result = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            f"-c{bench.CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = keys_service.cpu_seconds() - cpu_before
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    data = json.loads(line[len("RESULT ") :])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["keys_cpu_ms_per_req"] = 1000 * cpu / max(1, data["requests"])
    return data


def gateway_part() -> dict:
    """nginx with the check, nginx straight to the upstream, and whoami on the keys service: alternated, medians."""
    for tool in ("nginx", "envsubst", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install nginx gettext-base wrk")
    keys_service = bench.ours("gw-keys", 1, bench.OUT / "gw-keys.db", "1")
    started: list = []
    try:
        keys_service.start()
        started.append(keys_service)
        bench.prepare(keys_service, "gateway")
        from tests.standin import IOCS

        upstream = nginx("gw-upstream", CANNED.replace("$canned", json.dumps({"data": IOCS})), 0, 0)
        started.append(upstream)
        upstream_port = upstream.port
        checked = nginx("gw-nginx-check", TEMPLATE.read_text(), keys_service.port, upstream_port)
        started.append(checked)
        direct = nginx("gw-nginx-direct", DIRECT, keys_service.port, upstream_port)
        started.append(direct)
        setups = {
            "nginx + gateway check": (checked.port, URI),
            "nginx straight to upstream": (direct.port, URI),
            "whoami on the keys service": (keys_service.port, "/api/v1/whoami"),
        }
        runs: dict[str, list[dict]] = {label: [] for label in setups}
        for port, uri in setups.values():
            load(port, bench.WARMUP, uri, keys_service)
        for round_ in range(bench.ROUNDS):
            order = list(setups.items()) if round_ % 2 == 0 else list(reversed(setups.items()))
            for label, (port, uri) in order:
                result = load(port, bench.DURATION, uri, keys_service)
                runs[label].append(result)
                print(
                    f"round {round_ + 1} {label:28} {result['rps']:8.0f} req/s  p50 {result['p50_us'] / 1000:6.2f} ms  "
                    f"p99 {result['p99_us'] / 1000:6.2f} ms  keys service {result['keys_cpu_ms_per_req']:.2f} ms/req  "
                    f"errors {result['errors'] + result['status_errors']}",
                    flush=True,
                )
        # CPU per request at one offered load, the same for both: half what the check sustained.
        rate = statistics.median(r["rps"] for r in runs["nginx + gateway check"]) / 2
        same: dict[str, list[dict]] = {"nginx + gateway check": [], "whoami on the keys service": []}
        for round_ in range(bench.ROUNDS):
            for label in same if round_ % 2 == 0 else reversed(list(same)):
                port, uri = setups[label]
                same[label].append(load(port, bench.DURATION, uri, keys_service, rate=rate))
                print(
                    f"round {round_ + 1} at {rate:.0f} req/s {label:28} keys service "
                    f"{same[label][-1]['keys_cpu_ms_per_req']:.2f} ms/req",
                    flush=True,
                )
    finally:
        for process in reversed(started):
            process.stop()
    return {"runs": runs, "labels": list(setups), "same": same, "rate": rate}


def report_gateway(part: dict) -> str:
    """The gateway section of bench/RESULTS.md."""
    runs, med = part["runs"], lambda label, key: statistics.median(r[key] for r in part["runs"][label])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        HEADING,
        "",
        f"Commit `{commit}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. `GET {URI}` with a pro key "
        "(400 keys, one per account, rotated) through nginx as `deploy/nginx/gateway.conf.template` ships it, beside "
        "nginx straight to the same stand-in upstream (a third nginx answering `tests/standin.py`'s canned IOCs), and "
        "`GET /api/v1/whoami` on the keys service itself; in one run, alternated, "
        f"{bench.ROUNDS} rounds of {bench.DURATION} s after a {bench.WARMUP} s warm-up: medians. The keys service is "
        "`python -m app serve`, 1 worker on CPU 1, on SQLite; nginx (1 worker process) and the upstream unpinned; "
        f"wrk 1 thread, {bench.CONNECTIONS} connections, on CPU 0. Keys service CPU: its master and worker "
        "(/proc/PID/stat, utime + stime) per request answered.",
        "",
        "| path | req/s | p50 ms | p99 ms | errors | keys service CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in part["labels"]:
        errors = sum(r["errors"] + r["status_errors"] for r in runs[label])
        lines.append(
            f"| {label} | {med(label, 'rps'):,.0f} | {med(label, 'p50_us') / 1000:.2f} | "
            f"{med(label, 'p99_us') / 1000:.2f} | {errors} | {med(label, 'keys_cpu_ms_per_req'):.2f} |"
        )
    same = part["same"]
    check_cpu = statistics.median(r["keys_cpu_ms_per_req"] for r in same["nginx + gateway check"])
    whoami_cpu = statistics.median(r["keys_cpu_ms_per_req"] for r in same["whoami on the keys service"])
    through, direct = med("nginx + gateway check", "rps"), med("nginx straight to upstream", "rps")
    lines += [
        "",
        f"Through the check: {through / direct:.2f}× the requests per second of nginx straight to the upstream. "
        f"At one offered load for both ({part['rate']:,.0f} req/s, half what the check sustained; "
        f"{bench.ROUNDS} alternated rounds, medians), the check costs the keys service {check_cpu:.2f} ms of CPU "
        f"per request and whoami {whoami_cpu:.2f} ms ({check_cpu / whoami_cpu:.2f}×; target ≤ 1×): 1,000 checked "
        f"requests per second take {check_cpu:.2f} CPU cores of keys service.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    bench.OUT.mkdir(parents=True, exist_ok=True)
    for old in bench.OUT.glob("gw-keys.db*"):
        old.unlink()
    section = report_gateway(gateway_part())
    bench.write_results(section=section)
    print("\n" + section)
    for script in bench.OUT.glob("*.lua"):
        script.unlink()  # they hold the run's API keys


if __name__ == "__main__":
    main()
