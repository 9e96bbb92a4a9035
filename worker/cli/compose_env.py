"""`python -m worker compose-env`: a .env for the compose stack with strong random secrets, and its check.

.env.example ships every secret empty, so `docker compose up` stops naming the first one
missing instead of running with passwords anyone can read. This command writes them:

    (umask 077 && python -m worker compose-env > .env)

`--keep FILE` reprints an existing .env and adds only the secrets it lacks (an upgrade: the
passwords already in the volumes must not change). `--check` is what the stack's one-shot
`check-secrets` service runs before anything else starts: every secret set, none of them a
placeholder the old example shipped.

These variables configure the compose stack's servers (PostgreSQL, Redis, MLflow, Flower,
Grafana), not this program, so they are read from the environment here and are not fields of
the settings object; the few the app also reads (MLflow's passwords, FLOWER_BASIC_AUTH) are
refused there too when they hold a placeholder.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from worker.cli.errors import UsageError
from worker.settings import PLACEHOLDERS

# 32 URL-safe characters (192 random bits): fit for URLs, .env files, Redis ACL files, basic auth
# (no ':' or ','), and over MLflow's 12-character minimum.
SECRET_BYTES = 24


@dataclass(frozen=True)
class ComposeSecret:
    name: str
    note: str
    user: str = ""  # FLOWER_BASIC_AUTH is user:password

    def generate(self) -> str:
        password = secrets.token_urlsafe(SECRET_BYTES)
        return f"{self.user}:{password}" if self.user else password

    def password(self, value: str) -> str:
        return value.partition(":")[2] if self.user else value


COMPOSE_SECRETS = (
    ComposeSecret("POSTGRES_PASSWORD", "PostgreSQL superuser, for administration only: no service connects as it"),
    ComposeSecret("POSTGRES_APP_PASSWORD", "role taxi_app: owns the predictions (worker, init)"),
    ComposeSecret("POSTGRES_MLFLOW_PASSWORD", "role mlflow: owns database mlflow (the MLflow server)"),
    ComposeSecret("POSTGRES_READER_PASSWORD", "role taxi_reader: reads what Grafana and the exporter show"),
    ComposeSecret("REDIS_PASSWORD", "Redis's default user: administration and the healthcheck, no service"),
    ComposeSecret("REDIS_WORKER_PASSWORD", "Redis user worker"),
    ComposeSecret("REDIS_BEAT_PASSWORD", "Redis user beat"),
    ComposeSecret("REDIS_FLOWER_PASSWORD", "Redis user flower"),
    ComposeSecret("REDIS_EXPORTER_PASSWORD", "Redis user exporter: reads the queue and heartbeats, sends nothing"),
    ComposeSecret("FLOWER_BASIC_AUTH", "Flower's login, user:password (a Flower user can stop workers)", user="admin"),
    ComposeSecret("GRAFANA_ADMIN_PASSWORD", "Grafana's admin (http://127.0.0.1:3000)"),
    ComposeSecret("MLFLOW_AUTH_ADMIN_PASSWORD", "MLflow's admin: only registry-users uses it"),
    ComposeSecret("MLFLOW_FLASK_SERVER_SECRET_KEY", "signs the MLflow UI's forms (CSRF)"),
    ComposeSecret("MLFLOW_READER_PASSWORD", "MLflow user taxi-reader: loads models (worker, exporter)"),
    ComposeSecret("MLFLOW_TRAINER_PASSWORD", "MLflow user taxi-trainer: registers versions, moves the alias (init)"),
)
NAMES = {"POSTGRES_USER": "taxi", "POSTGRES_DB": "taxi"}


def read_env_file(path: Path) -> dict[str, str]:
    """The variables an existing .env sets, parsed as Docker Compose and pydantic-settings do."""
    from dotenv import dotenv_values

    if not path.is_file():
        raise UsageError(f"--keep {path}: no such file")
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def problems(values: Mapping[str, str]) -> list[str]:
    """One line per secret that is missing, empty or a placeholder anyone can read."""
    found = []
    for secret in COMPOSE_SECRETS:
        value = values.get(secret.name, "")
        if not secret.password(value):
            found.append(f"{secret.name} is not set")
        elif secret.password(value) in PLACEHOLDERS:
            found.append(
                f"{secret.name} is {secret.password(value)!r}, the placeholder the old .env.example shipped: "
                "anyone can read it"
            )
    return found


def new_env(now: datetime | None = None) -> str:
    """A complete .env for the compose stack: the user names and a fresh value for every secret."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Written by `python -m worker compose-env` on {stamp}: random secrets for docker-compose.yaml.",
        "# Keep this file to yourself (chmod 600); never commit it. See .env.example for every other setting.",
        "# Start the monitoring services too (exporter, Prometheus, Alertmanager, Grafana):",
        "# COMPOSE_PROFILES=monitoring",
        "",
    ]
    lines += [f"{name}={value}" for name, value in NAMES.items()]
    for secret in COMPOSE_SECRETS:
        lines += [f"# {secret.note}", f"{secret.name}={secret.generate()}"]
    return "\n".join(lines) + "\n"


def kept_env(path: Path) -> str:
    """`path` as it is, followed by a fresh value for each secret it lacks."""
    values = read_env_file(path)
    stale = [line for line in problems(values) if not line.endswith("is not set")]
    if stale:
        raise UsageError(
            f"--keep {path}: {'; '.join(stale)}. Change these passwords first (README, Security: rotating a secret)"
        )
    text = path.read_text()
    missing = [secret for secret in COMPOSE_SECRETS if not secret.password(values.get(secret.name, ""))]
    if not missing:
        return text
    added = [f"# added by `python -m worker compose-env --keep` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"]
    for secret in missing:
        added += [f"# {secret.note}", f"{secret.name}={secret.generate()}"]
    return text + ("" if text.endswith("\n") or not text else "\n") + "\n".join(added) + "\n"


def check_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """What `compose-env --check` (the `check-secrets` service) finds wrong in the environment."""
    return problems(os.environ if environ is None else environ)
