"""A stack whose every password is a marker string, then every place a password could leak searched (issue 18).

Real parts, set up as the compose stack sets them up, each on a free port of its own: PostgreSQL
with password authentication, its roles made by deploy/postgres-init (and logging every statement
it receives); Redis started by deploy/redis/start.sh with one ACL user per service; an MLflow
server with basic auth, its users made by `registry-users`; `celery worker`, `celery beat`,
Flower and the exporter, each with only the credentials its compose service gets. The worker
names its registry credentials inside the tracking URI (a supported spelling, and the one MLflow
quotes back in its errors); the exporter has them in MLFLOW_TRACKING_* as in compose.

Then the registry goes away, so that batches fail and monitoring waits with error texts that
quote the URI, and every output is collected: the CLI's (status, batches, report, dispatch,
migrate, registry-users, the init script), every log, the report's HTML, the exporter's
/metrics, Flower's task list (retried tasks' exceptions and tracebacks), the errors stored in
the database, and the machine's process list. No marker may be
in any of them, and the stored errors must show where a password was taken out (***).

The same stack shows each service working with its own Redis user, and the exporter's user
unable to send a task or a control message.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.reliability.services import MlflowServer, PostgresServer
from tests.security.test_postgres_roles import SCRIPT, password_checking_postgres, query, superuser
from tests.stack import Stack
from tests.support import REPO_ROOT, free_port, stop_process_group, unique_model_name, wait_for_http, wait_until

pytestmark = pytest.mark.integration

DB = "taxi"
REDIS_START = REPO_ROOT / "deploy" / "redis" / "start.sh"
INTERVAL = 4  # beat's interval, seconds


def marker(label: str) -> str:
    """A password nobody could mistake for anything else (and MLflow's 12 characters long)."""
    return f"MARK-{label}-{secrets.token_hex(6)}"


PASSWORDS = {
    name: marker(name.lower().replace("_", "-"))
    for name in (
        "POSTGRES_PASSWORD",
        "POSTGRES_APP_PASSWORD",
        "POSTGRES_MLFLOW_PASSWORD",
        "POSTGRES_READER_PASSWORD",
        "REDIS_PASSWORD",
        "REDIS_WORKER_PASSWORD",
        "REDIS_BEAT_PASSWORD",
        "REDIS_FLOWER_PASSWORD",
        "REDIS_EXPORTER_PASSWORD",
        "FLOWER_PASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_READER_PASSWORD",
        "MLFLOW_TRAINER_PASSWORD",
    )
}
P = PASSWORDS


@dataclass
class Marked:
    root: Path
    pg: PostgresServer
    redis_port: int
    redis_log: Path
    mlflow: MlflowServer
    names: dict[str, str]
    stack: Stack
    exporter_port: int
    flower_port: int
    outputs: dict[str, str] = field(default_factory=dict)  # surface -> text, collected by the tests
    processes: list[subprocess.Popen] = field(default_factory=list)

    def broker(self, user: str, db: int = 0) -> str:
        return f"redis://{user}:{P[f'REDIS_{user.upper()}_PASSWORD']}@127.0.0.1:{self.redis_port}/{db}"

    def database(self, role: str, password: str) -> str:
        return f"postgresql+psycopg2://{role}:{password}@127.0.0.1:{self.pg.port}/{DB}"

    @property
    def registry_with_credentials(self) -> str:
        return f"http://taxi-reader:{P['MLFLOW_READER_PASSWORD']}@127.0.0.1:{self.mlflow.port}"

    def base_env(self) -> dict[str, str]:
        """What every process shares: no credentials (each service adds its own, as in compose)."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLOWER_", "MLFLOW_", "REDIS"))}
        return {
            **keep,
            **self.names,
            "LOCAL_DIR": str(self.root / "local"),
            "PYTHONPATH": str(REPO_ROOT),
            "BATCH_INTERVAL_SECONDS": str(INTERVAL),
            "RIDES_PER_BATCH": "200",
            "QUALITY_INTERVAL_SECONDS": "5",
            "MODEL_REFRESH_SECONDS": "1",
            "LOG_LEVEL": "INFO",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        }

    def worker_env(self) -> dict[str, str]:
        return {
            **self.base_env(),
            "CELERY_BROKER_URL": self.broker("worker"),
            "CELERY_RESULT_BACKEND": self.broker("worker", 1),
            "DATABASE_URL": self.database("taxi_app", P["POSTGRES_APP_PASSWORD"]),
            "MLFLOW_TRACKING_URI": self.registry_with_credentials,
        }

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            cwd=REPO_ROOT,
            env=env or self.worker_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        text = done.stdout + done.stderr
        label = f"cli: {' '.join(args)}"
        runs = sum(1 for key in self.outputs if key.split(" #")[0] == label)
        self.outputs[f"{label} #{runs + 1}"] = text
        return text

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.exporter_port}/metrics", timeout=10) as response:
            return response.read().decode()

    def sql(self, statement: str) -> list[tuple]:
        conn = superuser(self.pg, DB)
        try:
            return query(conn, statement)
        finally:
            conn.close()


def run(command: list[str], env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def start_redis(root: Path, port: int, log: Path) -> subprocess.Popen:
    """deploy/redis/start.sh, as the compose service runs it (there through the image's entrypoint)."""
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_ACL_FILE": str(root / "users.acl"),
        **{name: P[name] for name in P if name.startswith("REDIS_")},
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["sh", str(REDIS_START), "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(root), "--save", "", "--appendonly", "no", "--logfile", str(log)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    admin = redis.Redis(port=port, password=P["REDIS_PASSWORD"], socket_connect_timeout=1)
    wait_until("redis with its users file", lambda: _pings(admin) or process.poll() is not None, 30)
    assert process.poll() is None, log.read_text()
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def marked() -> Iterator[Marked]:
    root = Path(tempfile.mkdtemp(prefix="ctb-marked-"))
    names = {"MODEL_NAME": unique_model_name("marked"), "MLFLOW_EXPERIMENT": unique_model_name("marked-exp")}
    outputs: dict[str, str] = {}
    redis_process = None
    with password_checking_postgres(log_statements=True) as pg:
        try:
            # PostgreSQL: the database, then the init script with the stack's environment.
            admin = superuser(pg)
            query(admin, f"CREATE DATABASE {DB}")
            admin.close()
            outputs["cli: init script"] = run(
                [str(SCRIPT)],
                {
                    "PATH": os.environ["PATH"], "POSTGRES_USER": "postgres", "POSTGRES_DB": DB,
                    "PGHOST": str(pg.root), "PGPORT": str(pg.port),
                    **{name: P[name] for name in P if name.startswith("POSTGRES_")},
                },
            )  # fmt: skip

            redis_port, redis_log = free_port(), root / "redis.log"
            redis_process = start_redis(root, redis_port, redis_log)

            folder = root / "mlflow-auth"
            folder.mkdir()
            ini = configparser.ConfigParser()
            ini.read(REPO_ROOT / "deploy" / "mlflow" / "basic_auth.ini")
            ini["mlflow"]["database_uri"] = f"sqlite:///{folder / 'basic_auth.db'}"
            with open(folder / "basic_auth.ini", "w") as handle:
                ini.write(handle)
            auth_env = {
                "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
                "MLFLOW_AUTH_ADMIN_PASSWORD": P["MLFLOW_AUTH_ADMIN_PASSWORD"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": P["MLFLOW_FLASK_SERVER_SECRET_KEY"],
            }
            with MlflowServer(auth_env=auth_env) as mlflow:
                m = Marked(root, pg, redis_port, redis_log, mlflow, names, None, free_port(), free_port(), outputs)  # type: ignore[arg-type]
                base = m.base_env()
                outputs["cli: registry-users"] = run(
                    [sys.executable, "-m", "worker", "registry-users"],
                    {**base, "MLFLOW_TRACKING_URI": mlflow.uri,
                     **{k: P[k] for k in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_READER_PASSWORD", "MLFLOW_TRAINER_PASSWORD")}},
                )  # fmt: skip
                # compose's `init`: migrate as taxi_app (granting the reader), first model as the trainer.
                outputs["cli: init"] = run(
                    [sys.executable, "-m", "worker", "init", "--rides", "3000"],
                    {**base, "DATABASE_URL": m.database("taxi_app", P["POSTGRES_APP_PASSWORD"]),
                     "DATABASE_READER_ROLE": "taxi_reader", "MLFLOW_TRACKING_URI": mlflow.uri,
                     "MLFLOW_TRACKING_USERNAME": "taxi-trainer", "MLFLOW_TRACKING_PASSWORD": P["MLFLOW_TRAINER_PASSWORD"]},
                    timeout=300,
                )  # fmt: skip

                m.stack = Stack(env=m.worker_env(), db_url=m.database("taxi_app", P["POSTGRES_APP_PASSWORD"]),
                                redis_dbs=[], logs=root)  # fmt: skip
                m.stack.start_worker("marked")
                m.stack.start(
                    "beat", "--loglevel=INFO", f"--schedule={root / 'beat-schedule'}", name="beat",
                    extra_env={**base, "CELERY_BROKER_URL": m.broker("beat"), "CELERY_RESULT_BACKEND": m.broker("beat", 1)},
                )  # fmt: skip
                flower = m.stack.start(
                    "flower", f"--port={m.flower_port}", "--address=127.0.0.1", name="flower",
                    extra_env={**base, "CELERY_BROKER_URL": m.broker("flower"),
                               "CELERY_RESULT_BACKEND": m.broker("flower", 1),
                               "FLOWER_BASIC_AUTH": f"admin:{P['FLOWER_PASSWORD']}"},
                )  # fmt: skip
                exporter_env = {
                    **base,
                    "CELERY_BROKER_URL": m.broker("exporter"),
                    "DATABASE_URL": m.database("taxi_reader", P["POSTGRES_READER_PASSWORD"]),
                    "MLFLOW_TRACKING_URI": mlflow.uri,
                    "MLFLOW_TRACKING_USERNAME": "taxi-reader",
                    "MLFLOW_TRACKING_PASSWORD": P["MLFLOW_READER_PASSWORD"],
                }
                with open(root / "exporter.log", "ab") as log:
                    exporter = subprocess.Popen(
                        [sys.executable, "-m", "worker", "exporter", "--port", str(m.exporter_port)],
                        cwd=REPO_ROOT, env=exporter_env, stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True,
                    )  # fmt: skip
                m.processes.append(exporter)
                assert wait_for_http(f"http://127.0.0.1:{m.flower_port}/healthcheck", flower, 90), m.stack.log_text(
                    "flower"
                )
                assert wait_for_http(f"http://127.0.0.1:{m.exporter_port}/metrics", exporter, 90), (
                    root / "exporter.log"
                ).read_text()
                yield m
        finally:
            if "m" in locals():
                for process in m.processes:
                    stop_process_group(process)
                if m.stack is not None:
                    m.stack.close()
            if redis_process is not None:
                stop_process_group(redis_process)
            shutil.rmtree(root, ignore_errors=True)


def succeeded_schedule_batches(m: Marked) -> int:
    return m.sql("SELECT count(*) FROM predictions.batch_runs WHERE trigger = 'schedule' AND status = 'succeeded'")[0][
        0
    ]


# ------------------------------------------------------------ every service on its own Redis user


def test_every_service_works_with_its_own_redis_user_and_the_exporter_hears_the_worker(marked: Marked):
    m = marked
    wait_until("two scheduled batches, written by the worker", lambda: succeeded_schedule_batches(m) >= 2, 120)
    body = wait_until(
        "the exporter to hear the worker's heartbeats",
        lambda: next((text for text in [m.scrape()] if "taxi_workers_online 1.0" in text), None),
        30,
    )
    for source in ("database", "broker", "registry"):
        assert f"taxi_{source}_up 1.0" in body, body
    assert 'taxi_worker_up{worker="marked@' in body
    assert "taxi_queue_length" in body
    # Flower, with its own user: it inspects the workers through the broker.
    request = urllib.request.Request(f"http://127.0.0.1:{m.flower_port}/api/workers?refresh=1")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{P['FLOWER_PASSWORD']}".encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        workers = json.loads(response.read())
    assert any(name.startswith("marked@") for name in workers), workers
    # Nobody was refused a command on the way: Redis's log of ACL denials is empty.
    admin = redis.Redis(port=m.redis_port, password=P["REDIS_PASSWORD"])
    assert admin.acl_log() == [], admin.acl_log()


def test_the_exporters_redis_user_can_neither_send_a_task_nor_a_control_message(marked: Marked):
    """What the exporter's credentials allow is what its service needs: read the queue, hear heartbeats."""
    from celery import Celery

    m = marked
    exporter = redis.Redis(port=m.redis_port, username="exporter", password=P["REDIS_EXPORTER_PASSWORD"])
    assert exporter.llen("celery") >= 0
    for refused in (
        lambda: exporter.lpush("celery", "{}"),
        lambda: exporter.publish("/0.celery.pidbox", "{}"),
        lambda: exporter.set("x", "1"),
        lambda: exporter.delete("celery"),
        lambda: exporter.flushdb(),
        lambda: exporter.execute_command("SELECT", "1"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    # Through Celery, as the exporter's process would: a shutdown broadcast and a task are both refused.
    client = Celery("exporter-credentials", broker=m.broker("exporter"))
    client.conf.broker_connection_retry = False
    with pytest.raises(Exception, match="no permissions"):
        client.control.broadcast("shutdown", destination=["marked@nowhere"])
    with pytest.raises(Exception, match="no permissions"):
        client.send_task("worker.tasks.run_batch", kwargs={"rides": 10}, retry=False)
    # The worker's user may not administer Redis either.
    worker = redis.Redis(port=m.redis_port, username="worker", password=P["REDIS_WORKER_PASSWORD"])
    for refused in (lambda: worker.flushall(), lambda: worker.config_get("*"), lambda: worker.acl_list()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    admin = redis.Redis(port=m.redis_port, password=P["REDIS_PASSWORD"])
    admin.acl_log_reset()


# ------------------------------------------------------------ no marker anywhere


def test_no_password_reaches_the_cli_logs_report_metrics_stored_errors_or_process_list(marked: Marked):
    m = marked
    wait_until("two scheduled batches", lambda: succeeded_schedule_batches(m) >= 2, 120)
    done = m.sql("SELECT batch_id FROM predictions.batch_runs WHERE status = 'succeeded' ORDER BY batch_id LIMIT 1")[0][
        0
    ]
    m.cli("dispatch", "--rides", "300", "--wait", "--timeout", "120")
    m.cli("status")
    m.cli("status", "--json")
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    m.outputs["process list, all running"] = processes

    # The registry goes away: batches of a worker without a cached model fail and retry, monitoring waits.
    m.mlflow.stop()
    m.stack.stop(m.stack.processes[0])  # the worker, which had the model cached
    m.stack.start_worker("marked2")
    wait_until(
        "a batch retried for want of the registry",
        lambda: m.sql(
            "SELECT 1 FROM predictions.batch_runs WHERE status = 'retrying' AND strpos(error, 'ModelUnavailable') > 0"
        ),
        90,
    )
    m.stack.client().send_task("worker.tasks.monitor_batch", kwargs={"batch_id": done})
    wait_until(
        "monitoring to wait for the registry",
        lambda: m.sql(
            f"SELECT 1 FROM predictions.batch_metrics WHERE batch_id = '{done}' AND monitor_status = 'waiting'"
        ),
        90,
    )
    m.cli("status")
    m.cli("status", "--json")
    m.cli("batches", "--last", "50")
    m.cli("batches", "--json", "--last", "50")
    report = m.root / "report.html"
    m.cli("report", "--since", "2h", "-o", str(report))
    m.outputs["report html"] = report.read_text()
    m.outputs["exporter /metrics"] = m.scrape()
    # Flower shows every task's events, a failed or retried one's exception and traceback included.
    request = urllib.request.Request(f"http://127.0.0.1:{m.flower_port}/api/tasks")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{P['FLOWER_PASSWORD']}".encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        m.outputs["flower /api/tasks"] = response.read().decode()
    # A setting mistyped without its scheme, and the secrets check of compose's one-shot service.
    m.cli("status", env={**m.worker_env(), "DATABASE_URL": f"taxi_app:{P['POSTGRES_APP_PASSWORD']}@db/taxi"})
    m.cli("compose-env", "--check", env={**m.base_env(), **P})

    stored = m.sql("SELECT coalesce(error, '') FROM predictions.batch_runs") + m.sql(
        "SELECT coalesce(monitor_error, '') FROM predictions.batch_metrics"
    )
    m.outputs["stored errors"] = "\n".join(row[0] for row in stored)
    for name in ("worker-marked", "worker-marked2", "beat", "flower"):
        m.outputs[f"log: {name}"] = m.stack.log_text(name)
    m.outputs["log: exporter"] = (m.root / "exporter.log").read_text()
    m.outputs["log: redis"] = m.redis_log.read_text()
    m.outputs["log: postgres (every statement)"] = m.pg.log.read_text()
    m.outputs["log: mlflow server"] = m.mlflow.log.read_text()
    m.outputs["process list, registry down"] = subprocess.run(
        ["ps", "-eo", "args"], capture_output=True, text=True, check=True
    ).stdout

    leaks = {
        surface: sorted(name for name, password in P.items() if password in text) for surface, text in m.outputs.items()
    }
    assert {surface: names for surface, names in leaks.items() if names} == {}
    # Not vacuous: the texts that used to carry a password are there, with the password taken out.
    assert "http://taxi-reader:***@127.0.0.1" in m.outputs["stored errors"], m.outputs["stored errors"]
    assert "Retry in" in m.outputs["log: worker-marked2"]
    assert '"uri": "http://taxi-reader:***@127.0.0.1' in m.outputs["cli: status --json #1"]  # registry up
    assert "http://taxi-reader:***@127.0.0.1" in m.outputs["cli: status --json #2"]  # registry down: its error
    assert "invalid setting DATABASE_URL" in m.outputs["cli: status #3"]
    assert "ModelUnavailable" in m.outputs["flower /api/tasks"] and "***@127.0.0.1" in m.outputs["flower /api/tasks"]
    assert len(m.outputs) >= 20
