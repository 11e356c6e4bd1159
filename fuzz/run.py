"""`make fuzz`: Schemathesis against the live production server, every check and phase.

Starts `python -m app serve` (gunicorn, 2 uvicorn workers) on a free port with its database
in a temporary folder, makes the fuzzing account pro and mints a pro key of another account
for whoami, then runs, twice,

    st --config-file fuzz/schemathesis.toml run URL/openapi.json --checks all --mode all
       --phases examples,coverage,fuzzing,stateful --max-examples 1000

with the credentials given per security scheme (fuzz/schemathesis.toml):

1. `credentials-generated`: Schemathesis treats each credential as an input like any other,
   so negative cases leave it out or garble it, and the scheme's block means a credential
   left out is really not sent. Most negative cases then end at the 401.
2. `credentials-fixed` (--generation-with-security-parameters false): every case carries the
   credentials, so the negative cases reach the validation of the body, query and path.
   The ignored_auth check still sends each operation without and with wrong credentials.

Key management is allowed far more requests than Schemathesis sends, and an account far
more active keys, so that requests are processed rather than refused with 429 or 409 (the
tests cover those limits). Prints the figures of each pass (test cases per operation,
responses by status, checks run, failed checks), leaves Schemathesis's JUnit and NDJSON
reports in fuzz/out/PASS/, stops the server, removes the database, and exits non-zero if
any pass failed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import LiveServer

OUT = ROOT / "fuzz" / "out"
CONFIG = ROOT / "fuzz" / "schemathesis.toml"
FUZZ_USER = "fuzz-user"
KEY_OWNER = "key-owner"
PASSES = {
    "credentials-generated": [],
    "credentials-fixed": ["--generation-with-security-parameters", "false"],
}
SERVER_SETTINGS = {
    "APP_ENV": "production",
    "WEB_CONCURRENCY": "2",
    "KEY_MANAGEMENT_LIMIT_PER_MINUTE": "100000000",
    "KEY_MANAGEMENT_LIMIT_PER_DAY": "1000000000",
    "MAX_ACTIVE_KEYS": "100000000",
    "LOG_LEVEL": "WARNING",  # an access line per request is not needed here
}


def app_command(env: dict[str, str], *args: str) -> str:
    """Run `python -m app ARGS` as an operator would; return what it prints."""
    result = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=1000, help="test cases per operation (default 1000)")
    parser.add_argument("--seed", type=int, help="Schemathesis's random seed, to repeat a run")
    # One by default: with two, Hypothesis parses source in two threads at once, which trips
    # CPython 3.11's "AST constructor recursion depth mismatch" (python/cpython#106905) and
    # ends an operation's run in a runtime error that is Schemathesis's, not the server's.
    parser.add_argument("--workers", default="1", help="Schemathesis's concurrent workers (default 1)")
    parser.add_argument("--only", choices=sorted(PASSES), help="run one pass only")
    args = parser.parse_args(argv)

    outcomes: dict[str, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="keys-fuzz-") as tmp:
        settings = {**SERVER_SETTINGS, "SUPABASE_JWT_SECRET": secrets.token_urlsafe(32)}
        with LiveServer("serve", Path(tmp), env=settings) as server:
            for user in (FUZZ_USER, KEY_OWNER):
                app_command(server.env, "set-tier", "--create", user, "pro")  # not signed in yet
            session = app_command(server.env, "dev-token", FUZZ_USER, "--ttl", str(24 * 3600))
            owner = app_command(server.env, "dev-token", KEY_OWNER, "--ttl", "600")
            status, _, body = server.request("POST", "/api/v1/keys", {"name": "fuzz-whoami"},
                                             {"Cookie": f"sb-access-token={owner}"})
            if status != 201:
                print(f"could not mint the whoami key: {status} {body}", file=sys.stderr)
                return 2
            credentials = {"FUZZ_SESSION_TOKEN": session, "FUZZ_API_KEY": body["data"]["key"]}
            for name, extra in PASSES.items():
                if args.only and name != args.only:
                    continue
                outcomes[name] = run_pass(name, extra, server.base, credentials, args)
            logged = [line for line in server.output().splitlines() if "Traceback" in line or " ERROR " in line or "[ERROR]" in line]
        print(f"\nserver stopped; its temporary database {server.database_path} removed with its folder")
    for name, (returncode, elapsed) in outcomes.items():
        summarise(name, OUT / name / "events.ndjson", elapsed, returncode)
    print(f"fuzz: the server logged {len(logged)} errors" + (f"; first: {logged[0]}" if logged else ""))
    return max((returncode for returncode, _ in outcomes.values()), default=0) or (1 if logged else 0)


def run_pass(name: str, extra: list[str], base: str, credentials: dict[str, str],
             args: argparse.Namespace) -> tuple[int, float]:
    """Run one Schemathesis pass; return its exit status and duration in seconds."""
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG),
        "run", f"{base}/openapi.json",
        "--checks", "all", "--mode", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(args.max_examples), "--workers", args.workers, *extra,
        "--report", "junit,ndjson", "--report-junit-path", str(out / "junit.xml"),
        "--report-ndjson-path", str(out / "events.ndjson"),
        *(["--seed", str(args.seed)] if args.seed is not None else []),
    ]
    print(f"\n== {name}\n$ " + " ".join(command), flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, check=False, env={**os.environ, **credentials})
    return result.returncode, time.monotonic() - started


def summarise(name: str, events: Path, elapsed: float, returncode: int) -> None:
    """Print test cases per operation, responses by status, checks run and failed, from the events."""
    statuses: Counter[int] = Counter()
    cases: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for line in events.read_text().splitlines() if events.exists() else []:
        finished = json.loads(line).get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        cases[recorder["label"]] += len(recorder.get("cases", {}))
        for interaction in recorder.get("interactions", {}).values():
            if interaction.get("response"):
                statuses[interaction["response"]["status_code"]] += 1
        for results in recorder.get("checks", {}).values():
            for check in results:
                checks[check["name"]] += 1
                if check["status"] == "failure":
                    failed[check["name"]] += 1
    print(f"\nfuzz {name}: exit {returncode}, {elapsed / 60:.1f} min, {sum(cases.values())} test cases, "
          f"{sum(statuses.values())} responses")
    print("  test cases per operation: " + ", ".join(f"{op} {n}" for op, n in sorted(cases.items())))
    print(f"  responses by status: {dict(sorted(statuses.items()))}")
    print(f"  checks run: {len(checks)} ({', '.join(sorted(checks))})")
    print(f"  failed checks: {dict(failed) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
