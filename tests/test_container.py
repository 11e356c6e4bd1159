"""The Dockerfile, built with podman and run from the built image's files.

Needs root, `podman` and `debootstrap` (Debian: `apt-get install podman debootstrap`; .ci/run
installs them) and the network the build itself uses (a Debian mirror, PyPI); without root,
podman or debootstrap the tests are skipped and the skip says which is missing.

The registry's python:3.12-slim cannot be pulled here, so the image is built from a local base
instead (the Dockerfile's PYTHON_IMAGE): Debian bookworm made with debootstrap from the mirror
apt uses (/etc/apt/sources.list*), so Python 3.11, with this machine's CA bundle (a
TLS-inspecting proxy's CA included), pip allowed to install (`EXTERNALLY-MANAGED` removed) and
`python` linked to python3. The debootstrapped files are kept in /var/tmp/socdefenders-keys-base
and made on the first run only (a minute or two); each run imports them as an image, builds the
Dockerfile on it (`podman build --isolation chroot --format docker`, the format that keeps the
HEALTHCHECK), and removes both images at the end.

Containers cannot start in this sandbox (setrlimit is refused), so the built image's filesystem
is mounted (`podman create` plus `podman mount`) and its commands run in it with `chroot`, as the
user the image names (uid 10001), with exactly the image's environment: `python -m app migrate`,
then `python -m app serve` on a free loopback port, `/healthz`, and the image's HEALTHCHECK.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.version import __version__
from tests.live import ROOT, LiveServer

if os.geteuid() != 0:
    pytest.skip("the container tests did NOT run: podman mount and chroot need root", allow_module_level=True)
MISSING = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
if MISSING:
    pytest.skip(
        f"the container tests did NOT run: {' and '.join(MISSING)} not installed "
        "(`apt-get install podman debootstrap`; .ci/run does this)",
        allow_module_level=True,
    )

BASE_CACHE = Path("/var/tmp/socdefenders-keys-base")
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the official python images set; an imported file tree has no environment of its own.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SECRET = "container-secret-0123456789-0123456789-abcdef"
BUILD_TIMEOUT_S = 900  # a bound on a hung download, not a figure the test checks


def podman(*args: str, timeout: float = 120) -> str:
    """Run `podman args`; return its output, failing the test with podman's own message."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout.strip()


def debian_mirror() -> str:
    """The Debian mirror apt uses for the suite here, else Debian's own."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":  # deb822: stanzas of `Field: value`
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                match = re.match(rf"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", line)
                if match:
                    return match.group(1)
    return DEFAULT_MIRROR


def debian_base(tag: str) -> None:
    """Import Debian bookworm, as the Dockerfile's PYTHON_IMAGE, as the image `tag`.

    The debootstrapped tree is made once and kept in BASE_CACHE, under a lock, since several
    checkouts on one machine may run this at the same time.
    """
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = BASE_CACHE / SUITE
    with open(BASE_CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rootfs.is_dir():
            partial = BASE_CACHE / f"{SUITE}.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            done = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3,python3-pip,ca-certificates",
                    SUITE,
                    str(partial),
                    debian_mirror(),
                ],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
            )
            if done.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True)
                pytest.fail(f"debootstrap exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr}")
            partial.rename(rootfs)  # whole or not at all: a later run never finds half a tree
        # Each time, so that the base trusts the CA bundle the machine has now.
        if CA_BUNDLE.is_file():
            shutil.copyfile(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        python = rootfs / "usr/bin/python"
        if not python.is_symlink():
            python.symlink_to("python3")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imported = subprocess.run(
            ["podman", "import", "--change", f"ENV PATH={BASE_PATH}", "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        tar.stdout.close()
        assert tar.wait() == 0 and imported.returncode == 0, f"podman import failed:\n{imported.stderr}"


@dataclass(frozen=True)
class Built:
    """The image the Dockerfile built (or why it did not), its configuration and mounted files."""

    returncode: int
    log: str
    config: dict
    healthcheck: dict
    root: Path | None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    run = uuid.uuid4().hex[:12]
    base, image = f"localhost/socdefenders-keys-test-base:{run}", f"localhost/socdefenders-keys-test:{run}"
    container = ""
    try:
        debian_base(base)
        log_path = tmp_path_factory.mktemp("container") / "build.log"
        with open(log_path, "w") as log:
            build = subprocess.run(
                [
                    "podman",
                    "build",
                    "--isolation",
                    "chroot",
                    "--format",
                    "docker",
                    "--pull=never",
                    "--layers=false",
                    "--build-arg",
                    f"PYTHON_IMAGE={base}",
                    "-t",
                    image,
                    str(ROOT),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
            )
        output = log_path.read_text(errors="replace")
        if build.returncode != 0:
            yield Built(build.returncode, output, {}, {}, None)
            return
        inspected = json.loads(podman("image", "inspect", image))[0]
        # podman shows the HEALTHCHECK beside the image's configuration, docker inside it.
        healthcheck = inspected.get("Healthcheck") or inspected["Config"].get("Healthcheck") or {}
        container = podman("create", image)
        yield Built(0, output, inspected["Config"], healthcheck, Path(podman("mount", container)))
    finally:
        if container:
            podman("umount", container)
            podman("rm", container)
        subprocess.run(["podman", "rmi", "--force", image, base], capture_output=True, timeout=120)


def image_user(built: Built) -> tuple[int, int]:
    """The uid and gid of the user the image's USER names, from the image's own /etc/passwd."""
    assert built.root is not None
    for line in (built.root / "etc/passwd").read_text().splitlines():
        name, _, uid, gid, *_ = line.split(":")
        if name == built.config["User"] or uid == built.config["User"]:
            return int(uid), int(gid)
    raise AssertionError(f"the image's USER {built.config['User']!r} is not in its /etc/passwd")


def in_image(built: Built, argv: list[str], **env: str) -> list[str]:
    """`argv` as the image would run it: chroot into its files, as its USER, in its WORKDIR, its environment only."""
    assert built.root is not None, f"the image did not build:\n{built.log[-3000:]}"
    uid, gid = image_user(built)
    environment = dict(item.split("=", 1) for item in built.config["Env"]) | env
    return [
        shutil.which("chroot") or "/usr/sbin/chroot",
        f"--userspec={uid}:{gid}",
        str(built.root),
        "/usr/bin/env",
        "-i",
        *(f"{k}={v}" for k, v in environment.items()),
        "/bin/sh",
        "-c",
        'cd "$0" && exec "$@"',
        built.config["WorkingDir"],
        *argv,
    ]


@pytest.fixture(scope="module")
def served(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    migrate = subprocess.run(
        in_image(built, ["python", "-m", "app", "migrate"], SUPABASE_JWT_SECRET=SECRET, APP_ENV="production"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, f"migrate exited {migrate.returncode}:\n{migrate.stdout}{migrate.stderr}"
    assert "created the schema at version" in migrate.stdout  # a new volume
    server = LiveServer("serve", tmp_path_factory.mktemp("container-serve"))
    # The image's CMD, on a free loopback port instead of 0.0.0.0:8000.
    server.argv = in_image(
        built,
        built.config["Cmd"],
        HOST="127.0.0.1",
        PORT=str(server.port),
        SUPABASE_JWT_SECRET=SECRET,
        APP_ENV="production",
    )
    with server:
        yield server


def test_container_image_builds_on_a_debootstrapped_python_311_base(built):
    assert built.returncode == 0, f"podman build exited {built.returncode}:\n{built.log[-3000:]}"
    assert "Using CPython 3.11" in built.log


def test_container_image_runs_as_uid_10001(built):
    assert built.root is not None, f"the image did not build:\n{built.log[-3000:]}"
    assert image_user(built)[0] == 10001


def test_container_migrates_and_serves_healthz_as_the_unprivileged_user(built, served):
    status, _, body = served.request("GET", "/healthz")
    assert (status, body) == (200, {"status": "ok", "version": __version__})
    process = Path(f"/proc/{served.process.pid}/status").read_text()
    assert re.search(r"^Uid:\s+10001\s", process, re.MULTILINE), process
    assert (built.root / "data/keys.db").stat().st_uid == 10001
    assert served.request("GET", "/readyz")[0] == 200
    assert SECRET not in served.output()


def test_container_healthcheck_asks_the_port_the_server_listens_on(built, served):
    check = built.healthcheck
    assert check.get("Test", [None])[0] == "CMD-SHELL", f"no HEALTHCHECK in the image: {check}"
    assert served.port != 8000
    probe = subprocess.run(
        in_image(built, ["/bin/sh", "-c", check["Test"][1]], PORT=str(served.port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, (
        f"HEALTHCHECK exited {probe.returncode} with the server on PORT={served.port}:\n{probe.stderr}"
    )
