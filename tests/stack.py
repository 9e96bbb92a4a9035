"""Real services for pipeline and reliability tests: a fresh PostgreSQL database, Redis db
numbers, and `celery worker` / `celery beat` / Flower subprocesses run from the repository root.

The fixtures are registered in tests/conftest.py, so every test folder can use them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, text

from tests.support import REPO_ROOT, stop_process_group
from worker.store.database import migrate

PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
REDIS_HOST = "127.0.0.1"
CELERY = Path(sys.executable).parent / "celery"
WORKER_READY_SECONDS = 60.0


def create_database() -> tuple[str, str]:
    name = f"ctb_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(**PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    conn = psycopg2.connect(**PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@contextmanager
def migrated_database() -> Iterator[str]:
    """A new PostgreSQL database with the project's schema, dropped afterwards."""
    name, url = create_database()
    try:
        migrate(url)
        yield url
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One database for the session's shared stack."""
    with migrated_database() as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A database for one test."""
    with migrated_database() as url:
        yield url


# The db numbers this session's open stacks hold. Emptiness alone is not a claim: a live stack's db
# once read as empty in CI (emptied by something not found), and a second stack then shared the
# session worker's broker, which took its batches.
_CLAIMED: set[int] = set()


def _free_redis_dbs(count: int) -> list[int]:
    """Redis db numbers that hold no keys now and no open stack of this session holds."""
    chosen = []
    for db in range(15, 1, -1):
        if db not in _CLAIMED and redis.Redis(host=REDIS_HOST, db=db).dbsize() == 0:
            chosen.append(db)
        if len(chosen) == count:
            return chosen
    holders = ", ".join(f"{s.logs.name} {s.redis_dbs}" for s in _OPEN_STACKS if s.redis_dbs) or "none of ours"
    raise RuntimeError(f"no empty Redis databases left for the tests (held by stacks: {holders})")


@dataclass
class Stack:
    """The environment of one set of pipeline processes, and the processes themselves."""

    env: dict[str, str]
    db_url: str
    redis_dbs: list[int]
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def broker_url(self) -> str:
        return self.env["CELERY_BROKER_URL"]

    def client(self) -> Celery:
        """A plain Celery client on the same broker: sends by task name, like a remote caller."""
        return Celery("test-client", broker=self.env["CELERY_BROKER_URL"], backend=self.env["CELERY_RESULT_BACKEND"])

    def start(self, *args: str, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(CELERY), "-A", "worker", *args],
                cwd=REPO_ROOT,
                env={**self.env, **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_worker(
        self,
        name: str = "w1",
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        queues: str | None = None,
    ):
        """A `celery worker`; `queues` (e.g. "training") narrows it with -Q, else it serves every queue."""
        process = self.start(
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            "--without-gossip",
            "--without-mingle",
            *([f"--queues={queues}"] if queues else []),
            name=f"worker-{name}",
            extra_env=extra_env,
        )
        self.wait_for_log(f"worker-{name}", "ready.", WORKER_READY_SECONDS, process)
        return process

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, needle: str, seconds: float, process: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if needle in self.log_text(name):
                return
            if process is not None and process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{name} did not log {needle!r} in {seconds:.0f}s:\n{self.log_text(name)[-4000:]}")

    def stop(self, process: subprocess.Popen) -> None:
        stop_process_group(process)
        if process in self.processes:
            self.processes.remove(process)

    def cli(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            cwd=REPO_ROOT,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sql(self, query: str, **params) -> list:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query), params))
        finally:
            engine.dispose()

    def sql_exec(self, statement: str, **params) -> None:
        """Run a statement (or several, without parameters) and commit."""
        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                if params:
                    conn.execute(text(statement), params)
                else:  # straight to psycopg2, which then leaves % signs (PL/pgSQL's RAISE) alone
                    with conn.connection.dbapi_connection.cursor() as cursor:
                        cursor.execute(statement)
        finally:
            engine.dispose()

    def queue_length(self) -> int:
        return redis.Redis.from_url(self.broker_url).llen("celery")

    def close(self) -> None:
        for process in list(self.processes):
            self.stop(process)
        for db in self.redis_dbs:
            redis.Redis(host=REDIS_HOST, db=db).flushdb()
            _CLAIMED.discard(db)
        self.redis_dbs.clear()  # handed back: a second close must not flush numbers another stack took since


# Every Stack not yet closed, oldest first: what a test made is closed when that test ends (below).
_OPEN_STACKS: list[Stack] = []


@pytest.fixture(autouse=True)
def _close_the_tests_own_stacks(request) -> Iterator[None]:
    """A Stack made in a test's body holds two of the fourteen Redis db numbers until it is closed; a
    test that forgets (or fails before its own close) must not starve the rest of the session. Stacks
    of module and session fixtures were made before this snapshot and are theirs to close."""
    before = len(_OPEN_STACKS)
    yield
    for stack in _OPEN_STACKS[before:]:
        stack.close()
    del _OPEN_STACKS[before:]


@pytest.fixture(scope="session")
def make_stack(trained_model, tmp_path_factory) -> Iterator[Callable[..., Stack]]:
    """Builds Stacks sharing the session's MLflow server and trained model; closes them all at the end."""
    settings, _ = trained_model
    stacks: list[Stack] = []

    def factory(db_url: str, **overrides: str) -> Stack:
        dbs = _free_redis_dbs(2)
        _CLAIMED.update(dbs)
        for db in dbs:
            redis.Redis(host=REDIS_HOST, db=db).set("ctb-test-claim", "1")  # keeps later stacks off; flushed at close
        local = tmp_path_factory.mktemp("stack")
        env = {
            # Not what this process inherited or MLflow set in it (set_registry_uri exports MLFLOW_REGISTRY_URI).
            **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLOWER_", "MLFLOW_"))},
            "CELERY_BROKER_URL": f"redis://{REDIS_HOST}:6379/{dbs[0]}",
            "CELERY_RESULT_BACKEND": f"redis://{REDIS_HOST}:6379/{dbs[1]}",
            "DATABASE_URL": db_url,
            "MLFLOW_TRACKING_URI": settings.MLFLOW_TRACKING_URI,
            "MODEL_NAME": settings.MODEL_NAME,
            "MODEL_REFRESH_SECONDS": "1",
            "LOCAL_DIR": str(local),
            "CHUNK_SIZE": "2000",
            "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO_ROOT),
            **overrides,
        }
        stack = Stack(env=env, db_url=db_url, redis_dbs=dbs, logs=local)
        stacks.append(stack)
        _OPEN_STACKS.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.close()


@pytest.fixture
def new_stack(make_stack, fresh_pg_url) -> Iterator[Callable[..., Stack]]:
    """make_stack on the test's own database, closed (processes stopped, Redis dbs freed) after the test."""
    made: list[Stack] = []

    def factory(**env: str) -> Stack:
        made.append(make_stack(fresh_pg_url, **env))
        return made[-1]

    yield factory
    for stack in made:
        stack.close()


@pytest.fixture(scope="session")
def stack(make_stack, pg_url) -> Stack:
    """The session's shared pipeline: one worker on its own Redis dbs and PostgreSQL database."""
    shared = make_stack(pg_url)
    shared.start_worker("shared")
    return shared
