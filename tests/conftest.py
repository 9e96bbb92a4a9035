"""Shared fixtures: a real MLflow tracking server, Settings pointing at it, a trained model.

Nothing is mocked. `mlflow_server` runs `mlflow server` as a subprocess (SQLite
backend store, proxied artifacts in a temporary folder); every test gets its
own registered-model name so that tests never see each other's versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import REAL_SAMPLE, free_port, stop_process_group, unique_model_name, wait_for_http
from worker.settings import Settings

if TYPE_CHECKING:  # training imports mlflow and scikit-learn; unit tests should not pay for that
    from worker.model.training import TrainResult

__all__ = ["free_port", "unique_model_name"]

# PostgreSQL, Redis and Celery process fixtures, for tests/integration and tests/reliability alike.
pytest_plugins = ["tests.stack"]

MLFLOW_STARTUP_SECONDS = 60.0
# Small enough to train in a second or two, good enough to predict sensibly.
SMALL_RIDES = 20_000
SMALL_FOREST = {"n_estimators": 10, "max_depth": 10, "min_samples_leaf": 10}


def with_record(settings: Settings) -> Settings:
    """Settings whose database (the embedded SQLite under LOCAL_DIR unless DATABASE_URL is set) has the
    tables, so that training can put its alias moves on the record (model_events), as `init` would."""
    if not settings.DATABASE_URL:
        from worker.store.database import migrate

        migrate(settings.database_url)
    return settings


MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_uris_stay_with_the_test() -> Iterator[None]:
    """`configure_mlflow` points MLflow's process-wide URIs (and, through set_registry_uri, the exported
    MLFLOW_REGISTRY_URI) at the test's server; a later test's bare MlflowClient would otherwise talk to
    a server that test stopped long ago. Put back what the test started with."""
    saved_env = {name: os.environ.get(name) for name in MLFLOW_URI_VARIABLES}
    loaded = "mlflow" in sys.modules
    if loaded:
        from mlflow.tracking._model_registry import utils as registry_uris
        from mlflow.tracking._tracking_service import utils as tracking_uris

        saved = (tracking_uris._tracking_uri, registry_uris._registry_uri)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        tracking, registry = saved if loaded else (None, None)
        if mlflow.tracking._tracking_service.utils._tracking_uri != tracking:
            mlflow.set_tracking_uri(tracking)
        mlflow.tracking._model_registry.utils._registry_uri = registry
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """A real MLflow tracking server on a free 127.0.0.1 port; yields its tracking URI."""
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    if not mlflow_exe.exists():
        pytest.fail(f"mlflow executable not found next to {sys.executable}")
    root = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    port = free_port()
    log_path = root / "server.log"
    env = dict(os.environ)
    # The server's job runner (huey) is not needed and would spawn a dozen more processes.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [
        str(mlflow_exe),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so the uvicorn child is stopped with it
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_http(f"{uri}/health", process, MLFLOW_STARTUP_SECONDS):
            output = log_path.read_text(errors="replace")[-5000:]
            state = f"exited with {process.returncode}" if process.poll() is not None else "did not answer"
            pytest.fail(f"mlflow server on port {port} {state} within {MLFLOW_STARTUP_SECONDS:.0f}s:\n{output}")
        yield uri
    finally:
        stop_process_group(process)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_settings(mlflow_server: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings(...) for the test's MLflow server, LOCAL_DIR in tmp_path and a model name of its own."""
    default_name = unique_model_name(request.node.name)

    def factory(**overrides) -> Settings:
        values = {
            "MLFLOW_TRACKING_URI": mlflow_server,
            "LOCAL_DIR": tmp_path / "local",
            "MODEL_NAME": default_name,
            "MODEL_URI": "",
            **overrides,
        }
        return with_record(Settings(**values))

    return factory


@pytest.fixture(scope="session")
def trained_model(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    """One small model trained on generated rides and promoted, shared by the whole session.

    Its MODEL_NAME has exactly one version (1) under MODEL_ALIAS; tests must not register
    or move the alias on this name (train on a make_settings() name of their own instead).
    """
    from worker.lifecycle.training import train_and_register
    from worker.model.training import ForestParams

    settings = with_record(
        Settings(
            MLFLOW_TRACKING_URI=mlflow_server,
            LOCAL_DIR=tmp_path_factory.mktemp("trained-model"),
            MODEL_NAME=unique_model_name("session-trained"),
            MODEL_URI="",
        )
    )
    result = train_and_register(settings, rides=SMALL_RIDES, seed=7, params=ForestParams(**SMALL_FOREST))
    assert result.promoted, result.reason
    return settings, result


@pytest.fixture(scope="session")
def real_sample_path() -> Path:
    """The shared real Chicago sample, read in place from ../shared/data (never copied)."""
    path = REAL_SAMPLE.resolve()
    if not path.is_file():
        pytest.fail(f"the real sample is missing: {path} (see the README next to it)")
    return path
