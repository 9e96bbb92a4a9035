"""Local stand-ins for the three base images the stack names: python:3.11-slim, redis:7, postgres:16.

This machine reaches Debian's package mirror but no image registry, so `make test-compose` builds
the base images itself: one `debootstrap --variant=minbase bookworm` root imported into Podman,
then a Containerfile per image (tests/compose/standins/NAME/) that installs Debian's packages and
keeps the official image's contract (documented at the top of each Containerfile). They are tagged
with the official names (docker.io/library/...), which is what the compose file and the Dockerfile
ask for, and labelled with a hash of their recipe: an image whose label matches is reused, so a
second run on the same machine builds nothing here.

Run by hand: `python -m tests.compose.standins` (as root, with Podman installed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent / "standins"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
BASE = "localhost/ctb-standin-debian:bookworm"
RECIPE_LABEL = "io.github.chicago-taxi-batch.standin-recipe"
# The machine's CA bundle: HTTPS from a container goes through the same proxy as the machine's own.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# image the stack names -> folder of its recipe
STANDINS = {
    "docker.io/library/python:3.11-slim": "python",
    "docker.io/library/redis:7": "redis",
    "docker.io/library/postgres:16": "postgres",
}

# What debuerreotype (the official debian images) puts in a root file system, so package
# scripts behave as they do in a container built FROM debian:bookworm.
POLICY_RC_D = "#!/bin/sh\n# no services start during package installation in an image\nexit 101\n"
SOURCES = (
    f"deb {MIRROR} {SUITE} main\n"
    f"deb {MIRROR} {SUITE}-updates main\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
)


def podman(*args: str, env: dict[str, str], check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=check)


def _label(image: str, env: dict[str, str]) -> str | None:
    found = podman(
        "image", "inspect", "--format", f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', image, env=env, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else None


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def base_recipe() -> str:
    return _digest(MIRROR.encode(), SUITE.encode(), POLICY_RC_D.encode(), SOURCES.encode())


def recipe(folder: str) -> str:
    files = sorted((HERE / folder).iterdir())
    return _digest(base_recipe().encode(), CA_BUNDLE.read_bytes(), *(f.name.encode() + f.read_bytes() for f in files))


def build_base(env: dict[str, str]) -> bool:
    """debootstrap a minimal bookworm and import it; False when the labelled image is already there."""
    wanted = base_recipe()
    if _label(BASE, env) == wanted:
        return False
    root = Path(tempfile.mkdtemp(prefix="ctb-debootstrap-"))
    try:
        rootfs = root / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR],
            check=True,
            capture_output=True,
            timeout=900,
        )
        (rootfs / "usr/sbin/policy-rc.d").write_text(POLICY_RC_D)
        (rootfs / "usr/sbin/policy-rc.d").chmod(0o755)
        (rootfs / "etc/apt/sources.list").write_text(SOURCES)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", 'CMD ["bash"]', "--change", f"LABEL {RECIPE_LABEL}={wanted}", "-", BASE],
            stdin=tar.stdout,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap root failed")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return True


def build_standin(image: str, folder: str, env: dict[str, str]) -> bool:
    """Build one stand-in from its recipe folder; False when the labelled image is already there."""
    wanted = recipe(folder)
    if _label(image, env) == wanted:
        return False
    with tempfile.TemporaryDirectory(prefix=f"ctb-{folder}-") as context:
        for item in (HERE / folder).iterdir():
            shutil.copy2(item, context)
        shutil.copy2(CA_BUNDLE, Path(context) / "ca-certificates.crt")
        podman("build", "--pull=never", "--label", f"{RECIPE_LABEL}={wanted}", "-t", image, context, env=env)
    return True


def ensure_standins(env: dict[str, str]) -> dict[str, float]:
    """Every stand-in present and current; returns the seconds spent on each one built (empty: all reused)."""
    built: dict[str, float] = {}
    started = time.monotonic()
    if build_base(env):
        built[BASE] = time.monotonic() - started
    for image, folder in STANDINS.items():
        started = time.monotonic()
        try:
            fresh = build_standin(image, folder, env)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"building the stand-in {image} failed:\n{exc.stdout[-3000:]}\n{exc.stderr[-3000:]}"
            ) from exc
        if fresh:
            built[image] = time.monotonic() - started
    for image, seconds in built.items():
        log.info("built %s in %.0f s", image, seconds)
    return built


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure_standins(dict(os.environ))
