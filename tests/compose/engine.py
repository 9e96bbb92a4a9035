"""Podman standing in for Docker Engine: its Docker-compatible API on a socket of the test's own,
and the healthcheck timers that Podman would run through systemd, which this machine lacks.

Docker Compose v2 (the real one) talks to the socket through DOCKER_HOST. Podman reads the test's
own containers.conf (CONTAINERS_CONF), never the machine's. Images live in Podman's default store
(/var/lib/containers/storage), so stand-ins and build layers are reused by the next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from tests.support import stop_process_group

log = logging.getLogger(__name__)

CONTAINERS_CONF = Path(__file__).resolve().parent / "containers.conf"
SERVICE_START_SECONDS = 30.0
# How often a container that is not healthy yet is checked; a healthy one is checked at its own interval.
UNHEALTHY_EVERY = 3.0


def podman_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every podman and docker command of the test runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "CONTAINERS_"))}
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return {**env, **(extra or {})}


def missing_tools() -> list[str]:
    needed = ["podman", "runc", "debootstrap", "docker", "netavark"]
    found = {name: shutil.which(name) or Path(f"/usr/lib/podman/{name}").exists() for name in needed}
    return [name for name, present in found.items() if not present]


class PodmanService:
    """`podman system service` on a Unix socket in `root`; stopped, with every child, by stop()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "podman.sock"
        self.log = root / "podman-service.log"
        self.process: subprocess.Popen | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        # The classic builder: BuildKit (and compose's bake) would pull an image of their own.
        return podman_env({"DOCKER_HOST": self.docker_host, "DOCKER_BUILDKIT": "0", "COMPOSE_BAKE": "false"})

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                ["podman", "system", "service", "--time=0", self.docker_host],
                env=podman_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.socket.exists():
                done = subprocess.run(["docker", "version"], env=self.env(), capture_output=True, text=True)
                if done.returncode == 0:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"podman system service did not come up:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=check
    )


def _seconds(nanoseconds: object, default: float) -> float:
    return int(nanoseconds) / 1e9 if isinstance(nanoseconds, int | float) and nanoseconds else default


class HealthcheckDriver:
    """Runs `podman healthcheck run` for every running container of a compose project, the way
    Docker Engine's own timer would: a container still starting every few seconds, a healthy one
    at its healthcheck's interval. Paused and stopped containers are left alone."""

    def __init__(self, project: str) -> None:
        self.project = project
        self._stop = threading.Event()
        self._next: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="healthchecks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _containers(self) -> list[dict]:
        listed = podman("ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}", check=False)
        ids = listed.stdout.split()
        if not ids:
            return []
        inspected = podman("inspect", *ids, check=False)
        try:
            return json.loads(inspected.stdout or "[]")
        except json.JSONDecodeError:
            return []

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a container may vanish between listing and checking
                self._tick()
            self._stop.wait(1.0)

    def _tick(self) -> None:
        now = time.monotonic()
        for container in self._containers():
            config = container.get("Config", {}).get("Healthcheck") or {}
            state = container.get("State", {})
            if not config.get("Test") or state.get("Status") != "running":
                continue
            cid = container["Id"]
            if now < self._next.get(cid, 0.0):
                continue
            podman("healthcheck", "run", cid, check=False, timeout=_seconds(config.get("Timeout"), 30) + 30)
            healthy = (state.get("Health") or state.get("Healthcheck") or {}).get("Status") == "healthy"
            every = _seconds(config.get("Interval"), 30.0) if healthy else UNHEALTHY_EVERY
            self._next[cid] = time.monotonic() + every
