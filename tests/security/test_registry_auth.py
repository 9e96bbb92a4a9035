"""An authenticated registry (issue 13): a real `mlflow server --app-name basic-auth` with the compose stack's config.

The server reads deploy/mlflow/basic_auth.ini (only its user store moved to a temporary
folder), users are created by the real `python -m worker registry-users` command, and every
request goes over HTTP with the credentials a service of the stack would have.
"""

from __future__ import annotations

import base64
import configparser
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from tests.reliability.services import MlflowServer
from tests.support import REPO_ROOT, unique_model_name
from worker.lifecycle.training import train_and_register
from worker.model.registry import ModelCache, configure_mlflow, load_version
from worker.model.training import ForestParams
from worker.settings import Settings

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-secret-4f1e9a"  # MLflow wants 12+ characters
READER_PASSWORD = "reader-secret-8c2d7b"
TRAINER_PASSWORD = "trainer-secret-3a6e0f"
SMALL = ForestParams(n_estimators=3, max_depth=6, min_samples_leaf=10)


@pytest.fixture(autouse=True)
def _credentials_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure_mlflow puts a user's credentials into os.environ (where MLflow's client reads
    them); take them out again after each test, so later tests and their workers start clean."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow-auth")
    ini = configparser.ConfigParser()
    ini.read(REPO_ROOT / "deploy" / "mlflow" / "basic_auth.ini")
    ini["mlflow"]["database_uri"] = f"sqlite:///{folder / 'basic_auth.db'}"
    config = folder / "basic_auth.ini"
    with open(config, "w") as handle:
        ini.write(handle)
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret",
    }
    with MlflowServer(auth_env=env) as server:
        yield server


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    return {"MODEL_NAME": unique_model_name("auth"), "MLFLOW_EXPERIMENT": unique_model_name("auth-experiment")}


def run_registry_users(auth_server: MlflowServer, names: dict[str, str], home: Path) -> subprocess.CompletedProcess:
    """`python -m worker registry-users`, as the compose stack's one-shot service runs it."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LOCAL_DIR": str(home / "local"),
        "MLFLOW_TRACKING_URI": auth_server.uri,
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_READER_PASSWORD": READER_PASSWORD,
        "MLFLOW_TRAINER_PASSWORD": TRAINER_PASSWORD,
        **names,
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "registry-users"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def provisioned(auth_server: MlflowServer, names: dict[str, str], tmp_path_factory) -> subprocess.CompletedProcess:
    return run_registry_users(auth_server, names, tmp_path_factory.mktemp("home"))


def settings_for(server: MlflowServer, names: dict[str, str], tmp_path: Path, user: str = "", password: str = ""):
    from tests.conftest import with_record

    return with_record(
        Settings(
            MLFLOW_TRACKING_URI=server.uri,
            LOCAL_DIR=tmp_path / f"local-{user or 'anonymous'}",
            MODEL_URI="",
            MLFLOW_TRACKING_USERNAME=user,
            MLFLOW_TRACKING_PASSWORD=password,
            **names,
        )
    )


def http_status(url: str, user: str | None = None, password: str | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def forbidden(call) -> str:
    with pytest.raises(MlflowException) as raised:
        call()
    assert "403" in str(raised.value), raised.value
    return str(raised.value)


def test_registry_users_creates_both_users_and_is_idempotent(auth_server, names, provisioned, tmp_path):
    out = provisioned.stdout
    assert "created user taxi-reader" in out and "created user taxi-trainer" in out
    assert f"taxi-reader: READ on experiment {names['MLFLOW_EXPERIMENT']}" in out
    assert f"taxi-trainer: EDIT on experiment {names['MLFLOW_EXPERIMENT']}" in out
    assert ADMIN_PASSWORD not in out + provisioned.stderr and READER_PASSWORD not in out + provisioned.stderr
    # The admin cannot be used without its password; wrong passwords are 401 like none.
    get_model = f"{auth_server.uri}/api/2.0/mlflow/registered-models/get?name={names['MODEL_NAME']}"
    assert http_status(get_model, "admin", "wrong-password-123") == 401
    assert http_status(get_model, "admin", ADMIN_PASSWORD) == 200


def test_registry_users_runs_again_and_puts_a_changed_grant_back(auth_server, names, provisioned, tmp_path):
    """Every `docker compose up` runs the one-shot again (and a password rotation does on purpose):
    a second run succeeds, and a grant someone changed in between is set back to the configured one."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"starlette\.middleware\.wsgi is deprecated")
        from mlflow.server.auth.client import AuthServiceClient

    from worker.cli.registry_access import admin_credentials

    admin = Settings(MLFLOW_TRACKING_URI=auth_server.uri, MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
    with admin_credentials(admin):
        auth = AuthServiceClient(auth_server.uri)
        auth.revoke_user_permission("taxi-reader", "registered_model", names["MODEL_NAME"])
        auth.grant_user_permission("taxi-reader", "registered_model", names["MODEL_NAME"], "MANAGE")

    again = run_registry_users(auth_server, names, tmp_path)
    assert "user taxi-reader exists; password set to the configured one" in again.stdout
    assert f"taxi-reader: READ on experiment {names['MLFLOW_EXPERIMENT']}" in again.stdout
    with admin_credentials(admin):
        held = AuthServiceClient(auth_server.uri).get_user_permission(
            "taxi-reader", "registered_model", names["MODEL_NAME"]
        )
    assert held.permission == "READ"
    get_model = f"{auth_server.uri}/api/2.0/mlflow/registered-models/get?name={names['MODEL_NAME']}"
    assert http_status(get_model, "taxi-reader", READER_PASSWORD) == 200


def test_anonymous_requests_get_401(auth_server, names, provisioned):
    uri = auth_server.uri
    assert http_status(f"{uri}/health") == 200  # the healthcheck stays open
    assert http_status(f"{uri}/api/2.0/mlflow/registered-models/get?name={names['MODEL_NAME']}") == 401
    assert http_status(f"{uri}/api/2.0/mlflow/registered-models/search") == 401
    assert http_status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=10") == 401
    alias = f'{{"name": "{names["MODEL_NAME"]}", "alias": "production", "version": "1"}}'.encode()
    assert http_status(f"{uri}/api/2.0/mlflow/registered-models/alias", body=alias) == 401
    assert http_status(f"{uri}/api/2.0/mlflow-artifacts/artifacts") == 401
    assert http_status(f"{uri}/api/2.0/mlflow/registered-models/search", "taxi-reader", "not-its-password") == 401


def test_trainer_registers_and_moves_the_alias_reader_only_loads(auth_server, names, provisioned, tmp_path, new_stack):
    trainer = settings_for(auth_server, names, tmp_path, "taxi-trainer", TRAINER_PASSWORD)
    reader = settings_for(auth_server, names, tmp_path, "taxi-reader", READER_PASSWORD)
    anonymous = settings_for(auth_server, names, tmp_path)

    first = train_and_register(trainer, rides=3000, seed=1, params=SMALL)
    assert first.promoted and first.version == "1"

    # The reader loads the production model, as the workers do (registry lookup, artifact download).
    cache = ModelCache(reader)
    loaded = cache.current()
    assert (loaded.name, loaded.version) == (names["MODEL_NAME"], "1")
    assert load_version(names["MODEL_NAME"], "1") is not None  # configure_mlflow(reader) set the credentials

    # ... but can neither register a version nor move (or delete) the alias.
    client = configure_mlflow(reader)
    run_id = client.get_model_version(names["MODEL_NAME"], "1").run_id
    source = client.get_model_version(names["MODEL_NAME"], "1").source
    forbidden(lambda: client.create_model_version(names["MODEL_NAME"], source, run_id))
    forbidden(lambda: client.set_registered_model_alias(names["MODEL_NAME"], "production", "1"))
    forbidden(lambda: client.delete_registered_model_alias(names["MODEL_NAME"], "production"))
    forbidden(lambda: client.delete_registered_model(names["MODEL_NAME"]))
    forbidden(lambda: train_and_register(reader, rides=2000, seed=2, params=SMALL))  # no run in its experiment
    assert [str(v.version) for v in client.search_model_versions(f"name='{names['MODEL_NAME']}'")] == ["1"]

    # Without credentials, nothing at all.
    with pytest.raises(MlflowException, match="401"):
        configure_mlflow(anonymous).get_registered_model(names["MODEL_NAME"])

    # The trainer registers a second version and moves the alias; it cannot delete the model.
    second = train_and_register(trainer, rides=2000, seed=3, params=SMALL, force=True)
    assert second.promoted and second.version == "2"
    trainer_client = configure_mlflow(trainer)
    assert str(trainer_client.get_model_version_by_alias(names["MODEL_NAME"], "production").version) == "2"
    trainer_client.set_registered_model_alias(names["MODEL_NAME"], "production", "1")
    trainer_client.set_registered_model_alias(names["MODEL_NAME"], "production", "2")
    forbidden(lambda: trainer_client.delete_registered_model(names["MODEL_NAME"]))

    # A real worker process with the reader's credentials (from its environment, like the compose
    # stack's) serves the production version.
    stack = new_stack(
        MLFLOW_TRACKING_URI=auth_server.uri,
        MLFLOW_TRACKING_USERNAME="taxi-reader",
        MLFLOW_TRACKING_PASSWORD=READER_PASSWORD,
        **names,
    )
    try:
        stack.start_worker("reader", concurrency=1)
        out = stack.client().send_task("worker.tasks.run_batch", kwargs={"rides": 25}).get(timeout=120)
        assert out["status"] == "succeeded" and out["model_version"] == "2" and out["rows_written"] == 25
    finally:
        stack.close()
