"""Every setting the project reads, from the environment (or a `.env` file).

The defaults need no server: an embedded filesystem broker, SQLite for the
predictions and task results and a local MLflow store, all under LOCAL_DIR.
Set CELERY_BROKER_URL, CELERY_RESULT_BACKEND, DATABASE_URL and
MLFLOW_TRACKING_URI to run on Redis, PostgreSQL and an MLflow server.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
# The passwords .env.example shipped until it shipped none: anyone can read them, so no process
# accepts one (`python -m worker compose-env` writes real ones).
PLACEHOLDERS = frozenset({"change-me", "change-me-12-characters"})
# The longest interval or time limit a setting takes: beyond it nothing is scheduled in a useful time,
# and 1e308 seconds overflowed Celery's schedule (seconds to int) instead of naming the variable.
DAY = 86_400
# The furthest back any setting or command looks (RETENTION_DAYS, prune --older-than, --since durations).
CENTURY_DAYS = 36_500


class SettingsError(RuntimeError):
    """A malformed setting; the message names the environment variable."""


def _refuse_placeholder(password: str, value: str) -> str:
    if password in PLACEHOLDERS:
        raise ValueError(
            f"its password is {password!r}, a placeholder anyone can read; replace it "
            "(`python -m worker compose-env > .env` writes new secrets)"
        )
    return value


class Settings(BaseSettings):
    # allow_inf_nan=False: "inf" parsed as a float interval crashed Celery's schedule with an OverflowError.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True, allow_inf_nan=False)

    LOCAL_DIR: Path = Field(
        REPO_ROOT / ".local", description="Folder for the embedded broker, SQLite files and MLflow store."
    )
    CELERY_BROKER_URL: str = Field("filesystem://", description="Celery broker; filesystem:// is the embedded one.")
    CELERY_RESULT_BACKEND: str = Field("", description="Task results; empty means SQLite in LOCAL_DIR.")
    DATABASE_URL: str = Field(
        "", description="SQLAlchemy URL of the predictions database; empty means SQLite in LOCAL_DIR."
    )
    MLFLOW_TRACKING_URI: str = Field(
        "", description="MLflow tracking server or store; empty means SQLite in LOCAL_DIR."
    )
    DATABASE_READER_ROLE: str = Field(
        "", description="PostgreSQL role of Grafana and the exporter; migrate grants it SELECT on what they read."
    )
    MLFLOW_EXPERIMENT: str = Field("chicago-taxi-duration", description="Experiment that training runs log to.")
    MODEL_NAME: str = Field("chicago-taxi-duration", description="Registered model name.")
    MODEL_ALIAS: str = Field("production", description="Alias the workers load.")
    MODEL_URI: str = Field("", description="Overrides NAME@ALIAS, e.g. the legacy models:/NAME/Production.")
    MODEL_REFRESH_SECONDS: float = Field(
        60.0, ge=0, le=DAY, description="How often a worker checks whether the alias moved."
    )
    ALLOW_PICKLE_MODELS: bool = Field(
        False,
        description="Load pickle/cloudpickle model versions, which runs their code: only while migrating them to skops.",
    )
    MLFLOW_TRACKING_USERNAME: str = Field("", description="MLflow basic-auth user of this process; empty: none.")
    MLFLOW_TRACKING_PASSWORD: str = Field("", description="Password of MLFLOW_TRACKING_USERNAME.")
    MLFLOW_AUTH_ADMIN_USERNAME: str = Field("admin", description="MLflow admin, for `registry-users` only.")
    MLFLOW_AUTH_ADMIN_PASSWORD: str = Field("", description="Password of the MLflow admin, for `registry-users` only.")
    MLFLOW_READER_USERNAME: str = Field("taxi-reader", description="Read-only MLflow user of workers, beat, Flower.")
    MLFLOW_READER_PASSWORD: str = Field("", description="Its password, set by `registry-users`.")
    MLFLOW_TRAINER_USERNAME: str = Field(
        "taxi-trainer", description="MLflow user that may register versions and move the alias (init, train)."
    )
    MLFLOW_TRAINER_PASSWORD: str = Field("", description="Its password, set by `registry-users`.")
    # At least a second: 1e-300 passed `gt=0` and overflowed backfill's and status's slot arithmetic.
    BATCH_INTERVAL_SECONDS: float = Field(300.0, ge=1, le=DAY, description="Beat interval of run_batch.")
    RIDES_PER_BATCH: int | None = Field(
        None, ge=1, le=1 << 24, description="Fixed rides per scheduled batch; unset means Chicago's volume."
    )
    # At most 2**24: a trip id numbers the rides of a chunk in 24 bits (worker/rides/batch_rides.py).
    MAX_RIDES_PER_REQUEST: int = Field(
        1_000_000, ge=1, le=1 << 24, description="Largest batch or file a request may ask for."
    )
    CHUNK_SIZE: int = Field(
        50_000, ge=1, le=1 << 24, description="Rides per chunk; larger requests fan out across workers."
    )
    TASK_SOFT_TIME_LIMIT: float = Field(210.0, gt=0, le=DAY, description="Seconds before a task is asked to stop.")
    TASK_TIME_LIMIT: float = Field(240.0, gt=0, le=DAY, description="Seconds before a task's process is killed.")
    VISIBILITY_TIMEOUT: float = Field(
        900.0, gt=0, le=7 * DAY, description="Seconds before Redis redelivers an unacknowledged task."
    )
    MONITORING: bool = Field(
        True, description="Monitor each batch after its commit (drift, live accuracy); off only to measure its cost."
    )
    MONITOR_SAMPLE_ROWS: int = Field(
        20_000,
        ge=2_000,
        le=1 << 24,  # no batch is larger (MAX_RIDES_PER_REQUEST); a bigger number overflowed a query's LIMIT
        description="A batch with more rows is summarised and drift-tested on a uniform random sample of this many.",
    )
    SHADOW_SAMPLE_ROWS: int = Field(
        10_000,
        ge=1_000,
        le=1 << 24,
        description="A chunk with more rides has only this many, spread evenly over it, scored by the challenger.",
    )
    QUALITY_INTERVAL_SECONDS: float = Field(
        60.0, ge=1, le=DAY, description="How often beat asks for live accuracy from newly observed outcomes."
    )
    MODEL_POLICY: Literal["off", "advise", "auto"] = Field(
        "off",
        description="The model policy: off, advise (record what it would do) or auto (retrain, promote, roll back).",
    )
    POLICY_INTERVAL_SECONDS: float = Field(
        300.0, ge=1, le=DAY, description="How often beat runs a pass of the model policy."
    )
    POLICY_RETRAIN_COOLDOWN_SECONDS: float = Field(
        3600.0, ge=0, le=365 * DAY, description="The policy retrains at most once in this many seconds."
    )
    POLICY_WINDOW_OUTCOMES: int = Field(
        1000,
        ge=500,
        le=1_000_000,  # two weeks of Chicago's outcomes; a bigger number overflowed the window's LIMIT
        description="Live accuracy's rolling window: this many most recently known outcomes (alert, report, policy).",
    )
    WHATIF_BATCHES: Literal["include", "exclude"] = Field(
        "include",
        description="Batches sent with a world knob (speed or fare factor not 1): include them in production "
        "figures (live accuracy, drift windows and alerts, retraining, dashboards, report) or exclude them.",
    )
    TRAINING_SOFT_TIME_LIMIT: float = Field(
        600.0, gt=0, le=DAY, description="Seconds before a training task (the policy's pass) is asked to stop."
    )
    TRAINING_TIME_LIMIT: float = Field(
        660.0, gt=0, le=DAY, description="Seconds before a training task's process is killed."
    )
    RETENTION_DAYS: float | None = Field(
        None,
        gt=0,
        le=CENTURY_DAYS,
        description="Beat prunes batches older than this once a day; unset keeps everything.",
    )
    DATABASE_STATEMENT_TIMEOUT: float = Field(
        60.0,
        gt=0,
        description="Seconds a chunk write's statement, or a pause between its statements, may take before it fails.",
    )
    DATABASE_LOCK_TIMEOUT: float = Field(
        30.0, gt=0, description="Seconds a chunk write waits on a lock (the chunk's ledger key) before it fails."
    )
    FLOWER_BASIC_AUTH: str = Field("", description="user:password[,user2:password2] for Flower; empty means no auth.")
    FLOWER_ADDRESS: str = Field("127.0.0.1", description="Address Flower listens on.")
    FLOWER_PORT: int = Field(5555, ge=1, le=65535, description="Port Flower listens on.")
    EXPORTER_ADDRESS: str = Field("127.0.0.1", description="Address the Prometheus exporter listens on.")
    EXPORTER_PORT: int = Field(9810, ge=1, le=65535, description="Port of the Prometheus exporter (/metrics).")
    EXPORTER_TIMEOUT_SECONDS: float = Field(
        3.0, gt=0, le=30, description="Longest the exporter waits on the database, broker or registry per scrape."
    )
    LOG_LEVEL: str = Field("INFO", description="Python logging level.")

    @field_validator("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "MLFLOW_TRACKING_URI", "DATABASE_URL")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        # Not the value itself in these messages: nothing tells which part of it is a password.
        if value and not urlsplit(value).scheme:
            raise ValueError("it is not a URL: it has no scheme (expected scheme://...)")
        if value and info.field_name == "DATABASE_URL" and "://" not in value:
            raise ValueError("it is not a database URL (expected e.g. postgresql+psycopg2://user@host:5432/name)")
        misread = misread_password(info.field_name, value)
        if misread:
            raise ValueError(
                f"its password holds {misread}, which its client would misread (a part of it could then show "
                "in an error): percent-encode it (@ as %40, / as %2F, ? as %3F, # as %23)"
            )
        return _refuse_placeholder(url_password(info.field_name, value), value)

    @field_validator(
        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_READER_PASSWORD", "MLFLOW_TRAINER_PASSWORD"
    )
    @classmethod
    def _password(cls, value: str) -> str:
        return _refuse_placeholder(value, value)

    @field_validator("FLOWER_BASIC_AUTH")
    @classmethod
    def _basic_auth(cls, value: str) -> str:
        for pair in filter(None, value.split(",")):
            user, _, password = pair.partition(":")
            if not user or not password:
                raise ValueError("expected user:password pairs separated by commas")
            _refuse_placeholder(password, value)
        return value

    @field_validator("DATABASE_READER_ROLE")
    @classmethod
    def _role(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError("expected a PostgreSQL role name: lower-case letters, digits and _")
        return value

    @field_validator("LOG_LEVEL")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"{value!r} is not a logging level")
        return value.upper()

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.RIDES_PER_BATCH is not None and self.RIDES_PER_BATCH > self.MAX_RIDES_PER_REQUEST:
            # Every scheduled slot would be refused by the workers, each as a failed batch.
            raise ValueError(
                f"RIDES_PER_BATCH ({self.RIDES_PER_BATCH}) is more than MAX_RIDES_PER_REQUEST "
                f"({self.MAX_RIDES_PER_REQUEST}), which the workers would refuse for every slot"
            )
        try:
            existing = next((p for p in (self.LOCAL_DIR, *self.LOCAL_DIR.parents) if p.exists()), None)
        except OSError:  # a folder on the way this user may not look into: the first write will say so
            existing = None
        if existing is not None and not existing.is_dir():
            raise ValueError(f"LOCAL_DIR {self.LOCAL_DIR} is not a folder ({existing} is a file)")
        if self.TASK_SOFT_TIME_LIMIT >= self.TASK_TIME_LIMIT:
            raise ValueError("TASK_SOFT_TIME_LIMIT must be below TASK_TIME_LIMIT")
        if self.VISIBILITY_TIMEOUT <= self.TASK_TIME_LIMIT:
            raise ValueError("VISIBILITY_TIMEOUT must exceed TASK_TIME_LIMIT, or Redis redelivers running tasks")
        if self.TRAINING_SOFT_TIME_LIMIT >= self.TRAINING_TIME_LIMIT:
            raise ValueError("TRAINING_SOFT_TIME_LIMIT must be below TRAINING_TIME_LIMIT")
        # A training task may outlive VISIBILITY_TIMEOUT (a short one, in tests): its second delivery finds
        # the policy's lease taken (held for TRAINING_TIME_LIMIT + 60 s) and does nothing.
        for name in ("DATABASE_STATEMENT_TIMEOUT", "DATABASE_LOCK_TIMEOUT"):
            if getattr(self, name) >= self.TASK_SOFT_TIME_LIMIT:
                # A database wait must fail into a Celery retry; a time limit would kill the process instead,
                # and reject_on_worker_lost would requeue the same wait again and again.
                raise ValueError(f"{name} must be below TASK_SOFT_TIME_LIMIT")
        return self

    @model_validator(mode="after")
    def _mlflow_credentials(self) -> Settings:
        if bool(self.MLFLOW_TRACKING_USERNAME) != bool(self.MLFLOW_TRACKING_PASSWORD):
            raise ValueError("MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set together")
        return self

    # Resolved locations: the embedded defaults live under LOCAL_DIR.
    @property
    def broker_folder(self) -> Path:
        return self.LOCAL_DIR / "broker"

    @property
    def result_backend(self) -> str:
        return self.CELERY_RESULT_BACKEND or f"db+sqlite:///{self.LOCAL_DIR / 'results.db'}"

    @property
    def database_url(self) -> str:
        return self.DATABASE_URL or f"sqlite:///{self.LOCAL_DIR / 'predictions.db'}"

    @property
    def tracking_uri(self) -> str:
        return self.MLFLOW_TRACKING_URI or f"sqlite:///{self.LOCAL_DIR / 'mlflow.db'}"

    @property
    def local_artifact_root(self) -> Path:
        return self.LOCAL_DIR / "mlartifacts"

    @property
    def model_uri(self) -> str:
        return self.MODEL_URI or f"models:/{self.MODEL_NAME}@{self.MODEL_ALIAS}"


# scheme://user:PASSWORD@ anywhere in a text; the user part may be empty (redis://:PASSWORD@host).
# The password may hold a / (SQLAlchemy reads up to the first @); one with a space is found by the settings' own.
URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]+(?=@)")
HIDDEN = "***"


# SQLAlchemy's own reading of a URL's password: everything from the user's colon to the first @,
# a / or a space included (sqlalchemy.engine.url._parse_url). urlsplit stops at the first / instead.
SQLALCHEMY_PASSWORD = re.compile(r"[\w+]+://[^:/]*:(?P<password>[^@]*)@")


def url_password(name: str, url: str) -> str:
    """The password of a URL setting as written, read the way its client reads it."""
    if name == "DATABASE_URL":
        found = SQLALCHEMY_PASSWORD.match(url)
        return found.group("password") if found else ""
    return urlsplit(url).password or ""


def misread_password(name: str, url: str) -> str | None:
    """The raw character of a URL's password that its client would read as the end of the password,
    if any. An @ after the first one ends up in the host (SQLAlchemy) or is split on by the
    redaction's pattern; a /, ? or # ends the authority for urlsplit and kombu (the rest of the
    password was read as the port). SQLAlchemy reads a / inside a password as it is written."""
    written = SQLALCHEMY_PASSWORD.match(url)
    if written is None:
        return None
    host = re.split(r"[/?#]", url[written.end() :], maxsplit=1)[0]
    if "@" in host:
        return "an '@'"
    if name != "DATABASE_URL" and (urlsplit(url).password or "") != written.group("password"):
        return "a '/', '?' or '#'"
    return None


def named_secrets(settings: Settings) -> list[tuple[str, str]]:
    """(setting, password) for every password the settings hold: in the four URLs, MLflow's,
    and Flower's basic-auth users'."""
    found = []
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "MLFLOW_TRACKING_URI"):
        password = url_password(name, getattr(settings, name))
        if password:
            found.append((name, password))
    for name in (
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_READER_PASSWORD",
        "MLFLOW_TRAINER_PASSWORD",
    ):
        found.append((name, getattr(settings, name)))
    found.extend(("FLOWER_BASIC_AUTH", pair.partition(":")[2]) for pair in settings.FLOWER_BASIC_AUTH.split(","))
    return [(name, secret) for name, secret in found if secret]


def secrets_of(settings: Settings) -> set[str]:
    """Every password the settings hold, as written and (in URLs) percent-decoded."""
    return {variant for _, secret in named_secrets(settings) for variant in (secret, unquote(secret))}


def redact(text: str, settings: Settings | None = None) -> str:
    """`text` (a URL, an error message, a log line) with its passwords replaced by ***.

    The one function everything printed, logged, reported or stored goes through. It hides the
    password part of any URL in the text (scheme://user:***@host), and, given the settings, every
    secret they hold wherever it appears: a driver's error may quote a password without its URL.
    """
    text = URL_PASSWORD.sub(lambda match: match.group("head") + HIDDEN, text)
    if settings is not None:
        for secret in sorted(secrets_of(settings), key=len, reverse=True):  # longest first: no partial leftovers
            text = text.replace(secret, HIDDEN)
    return text


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error["loc"]) or "settings"
        parts.append(f"{name}: {error['msg']}")
    return "invalid setting " + "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
