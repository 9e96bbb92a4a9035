"""The one compose project the scenarios share: brought up once, torn down whatever happens.

Bringing the stack up is the expensive part (stand-ins, the project image, MLflow, training), so
the scenarios in test_compose_up.py run in file order against the same project, each leaving it
healthy for the next. The teardown removes the project's containers, networks and volumes and
stops the Podman service, also when a scenario failed; on failure the containers' logs are kept
in a folder it names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.compose.engine import HealthcheckDriver, PodmanService, missing_tools, podman
from tests.compose.project import REPO, Project
from tests.compose.standins import ensure_standins
from tests.support import free_port

# The test's settings: beat every 15 s, small scheduled batches, chunks of 50,000 rides, and
# timeouts short enough that a fault resolves within about a minute (VISIBILITY_TIMEOUT 60 s).
# The time limits leave room for six pool processes loading the model and predicting on two
# shared cores: with a 20 s soft limit a cold chunk ran out of time here (load average 7).
SETTINGS = {
    "BATCH_INTERVAL_SECONDS": "15",
    "RIDES_PER_BATCH": "2000",
    "CHUNK_SIZE": "50000",
    "VISIBILITY_TIMEOUT": "60",
    "TASK_TIME_LIMIT": "50",
    "TASK_SOFT_TIME_LIMIT": "45",
    "DATABASE_STATEMENT_TIMEOUT": "20",
    "DATABASE_LOCK_TIMEOUT": "10",
    "MODEL_REFRESH_SECONDS": "10",
    "LOG_LEVEL": "INFO",
}
UP_SECONDS = 900.0  # a first build of the project image included


def _require_engine() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (rootful Podman)")
    missing = missing_tools()
    if missing:
        problems.append(f"missing {', '.join(missing)} (.ci/run installs them)")
    if problems:
        message = "docker compose test: " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """When a scenario fails, keep every container's log as it is at that moment."""
    outcome = yield
    report = outcome.get_result()
    stack = getattr(item, "funcargs", {}).get("project")
    if report.when == "call" and report.failed and isinstance(stack, Project):
        stack.keep_logs(item.name)


@pytest.fixture(scope="session")
def project(request: pytest.FixtureRequest) -> Iterator[Project]:
    _require_engine()
    root = Path(tempfile.mkdtemp(prefix="ctb-compose-"))
    service = PodmanService(root)
    name = f"ctb-test-{secrets.token_hex(4)}"
    driver = HealthcheckDriver(name)
    # The secrets as a user makes them (README, docker-compose): `python -m worker compose-env`.
    generated = subprocess.run(
        [sys.executable, "-m", "worker", "compose-env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    settings = {**{k: v or "" for k, v in dotenv_values(stream=io.StringIO(generated)).items()}, **SETTINGS}
    env_file = root / "test.env"
    env_file.write_text(generated + "".join(f"{key}={value}\n" for key, value in SETTINGS.items()))
    env_file.chmod(0o600)
    ports = [free_port() for _ in range(3)]
    # One image tag per checkout: build layers are reused by its next run, never swapped by another's.
    image = f"localhost/ctb-test-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}:latest"
    stack = Project(
        name=name,
        env={},
        env_file=env_file,
        settings=settings,
        postgres_port=ports[0],
        mlflow_port=ports[1],
        flower_port=ports[2],
    )
    try:
        service.start()
        stack.env = {
            **service.env(),
            "CTB_TEST_ENV_FILE": str(env_file),
            "CTB_TEST_IMAGE": image,
            "CTB_TEST_POSTGRES_PORT": str(ports[0]),
            "CTB_TEST_MLFLOW_PORT": str(ports[1]),
            "CTB_TEST_FLOWER_PORT": str(ports[2]),
        }
        started = time.monotonic()
        built = ensure_standins(service.env())
        stack.measured["standins_built"] = {image: round(seconds) for image, seconds in built.items()}
        stack.measured["standins_seconds"] = round(time.monotonic() - started)
        stack.measured["image_cached"] = podman("image", "exists", image, check=False).returncode == 0
        driver.start()
        started = time.monotonic()
        stack.compose("up", "-d", "--build", timeout=UP_SECONDS)
        stack.measured["up_build_seconds"] = round(time.monotonic() - started)
        yield stack
    finally:
        if request.session.testsfailed and service.log.exists():
            shutil.copy2(service.log, stack.keep_logs("teardown") / "podman-service.log")
        leftovers = stack.cleanup()
        driver.stop()
        service.stop()
        shutil.rmtree(root, ignore_errors=True)
        stack.measured["leftovers_removed_by_hand"] = leftovers
        sys.stdout.write("\n[compose] measured: " + json.dumps(stack.measured, indent=1, default=str) + "\n")
