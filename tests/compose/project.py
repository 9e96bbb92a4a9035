"""One running compose project of the real docker-compose.yaml, and what the scenarios do to it.

Everything goes through the real Docker Compose v2 CLI or the Docker API (docker-py), both talking
to Podman's Docker-compatible socket, except what Podman 4.3's API gets wrong (unpause: see the
README). The postgres container is read through a port the test override publishes on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import psycopg2

from tests.compose.engine import podman

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
OVERRIDE_FILE = Path(__file__).resolve().parent / "compose.test.yaml"
# The Celery worker's healthcheck asks the node by this name.
APP_UID = "10001"
STAGING_COPY = "COPY ride_predictions_staging%"
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):")
# A Celery worker's log line about a task: its time (UTC in the containers), task id and what happened.
TASK_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^]]*\] Task [\w.]+\[([0-9a-f-]{36})\] (received|succeeded)"
)


class CommandFailed(AssertionError):
    pass


@dataclass
class Project:
    name: str
    env: dict[str, str]  # the docker compose process's environment (DOCKER_HOST, the override's variables)
    env_file: Path
    settings: dict[str, str]  # what the test .env holds
    postgres_port: int
    mlflow_port: int
    flower_port: int
    measured: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ commands

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        command = [
            "docker", "compose", "-p", self.name, "--env-file", str(self.env_file),
            "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE_FILE), *args,
        ]  # fmt: skip
        done = subprocess.run(command, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise CommandFailed(
                f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def api(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.env["DOCKER_HOST"], version="auto", timeout=60)

    def containers(self, service: str | None = None, every: bool = False) -> list[dict]:
        """podman's view of the project's containers (inspect documents), optionally of one service."""
        labels = ["--filter", f"label=com.docker.compose.project={self.name}"]
        if service:
            labels += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = podman("ps", "-q", *(["-a"] if every else []), *labels).stdout.split()
        return json.loads(podman("inspect", *ids).stdout) if ids else []

    def container(self, service: str) -> dict:
        found = self.containers(service)
        assert len(found) == 1, f"expected one running {service} container, found {len(found)}"
        return found[0]

    def exec(self, service: str, *command: str, timeout: float = 120) -> str:
        return self.compose("exec", "-T", service, *command, timeout=timeout).stdout

    def logs(self, container: str) -> str:
        done = podman("logs", container, check=False, timeout=60)
        return done.stdout + done.stderr

    def keep_logs(self, label: str) -> Path:
        """Write every container's log to a folder that outlives the test; returns the folder."""
        folder = Path(tempfile.mkdtemp(prefix=f"ctb-compose-logs-{label[:40]}-"))
        for container in self.containers(every=True):
            (folder / f"{container['Name'].lstrip('/')}.log").write_text(self.logs(container["Id"]))
        sys.stderr.write(f"\n[compose] {label}: container logs kept in {folder}\n")
        return folder

    def task_log(self, container: str) -> dict[str, dict[str, list[float]]]:
        """Per task id, the epoch seconds at which this worker logged it `received` and `succeeded`."""
        tasks: dict[str, dict[str, list[float]]] = {}
        for line in self.logs(container).splitlines():
            match = TASK_LINE.match(line)
            if match:
                stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
                tasks.setdefault(match[2], {"received": [], "succeeded": []})[match[3]].append(stamp)
        return tasks

    def retries_since(self, since: float) -> int:
        """How many `Retry in` lines the worker containers logged at or after `since` (epoch seconds)."""
        count = 0
        for container in self.containers("worker"):
            for line in self.logs(container["Id"]).splitlines():
                match = LOG_TIME.match(line)
                if match and "Retry in" in line:
                    stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
                    count += stamp >= since
        return count

    def log_events(self, container: str, since: float, needles: tuple[str, ...]) -> list[tuple[float, str]]:
        """(seconds after `since`, needle) for each log line of the container at or after `since` naming one."""
        found = []
        for line in self.logs(container).splitlines():
            match = LOG_TIME.match(line)
            if not match:
                continue
            stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
            for needle in needles:
                if stamp >= since and needle in line:
                    found.append((round(stamp - since, 1), needle))
        return found

    @staticmethod
    def in_flight(victim_log: dict[str, dict[str, list[float]]], since: float) -> dict[str, float]:
        """The tasks a worker received after `since` and had not finished, each with when it got it."""
        return {
            task: events["received"][0]
            for task, events in victim_log.items()
            if events["received"] and events["received"][0] >= since - 1 and not events["succeeded"]
        }

    def wait_tasks_ended(self, container: str, tasks: set[str], seconds: float) -> dict[str, str]:
        """Wait until this worker's own log says how its delivery of each task ended: Celery's line for it
        (`Task NAME[ID] succeeded/retry:/raised .../rejected`, anything but `received`; the task's own log
        lines read `NAME[ID]: ...`), or the hard time limit's kill. Returns each task's first such line."""
        ends = {
            task: re.compile(
                rf"Task [\w.]+\[{task}\] (?!received)|Hard time limit \(.*\) exceeded for [\w.]+\[{task}\]"
            )
            for task in tasks
        }
        deadline = time.monotonic() + seconds
        while True:
            ended: dict[str, str] = {}
            for line in self.logs(container).splitlines():
                for task in tasks - ended.keys():
                    if ends[task].search(line):
                        ended[task] = line[:300]
            if ended.keys() == tasks:
                return ended
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the worker's log never said how {sorted(tasks - ended.keys())} ended in {seconds:.0f}s:\n"
                    + self.logs(container)[-3000:]
                )
            time.sleep(1)

    def late_deliveries(self) -> list[str]:
        """Messages in Redis that could still write rows of a batch that may already be written: a
        chunk (`predict_chunk`, `score_rides`) or a retried task, whether queued or delivered and not
        yet acknowledged (running, or held by a worker until its retry's countdown ends)."""
        found = []
        for command in (("lrange", "celery", "0", "-1"), ("hvals", "unacked")):
            for message in self.exec("redis", "redis-cli", *command).splitlines():
                if re.search(r"worker\.tasks\.(predict_chunk|score_rides)|\"retries\":\s*[1-9]", message):
                    found.append(message[:200])
        return found

    def redeliveries(
        self, victim_log: dict[str, dict[str, list[float]]], victim_id: str, since: float
    ) -> dict[str, dict]:
        """The tasks the victim received after `since` and had not finished, each with when the victim
        got it and when, and by which other worker, it was received again."""
        in_flight = self.in_flight(victim_log, since)
        found: dict[str, dict] = {
            task: {"first": first, "again": None, "by": None} for task, first in in_flight.items()
        }
        for container in self.containers("worker"):
            if container["Id"] == victim_id:
                continue
            for task, events in self.task_log(container["Id"]).items():
                if task in found and events["received"]:
                    found[task].update(again=events["received"][0], by=self.hostname(container))
        return found

    # ------------------------------------------------------------------ state

    def health(self, container: dict) -> str | None:
        state = container["State"]
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status")

    def wait_healthy(self, services: list[str], seconds: float) -> float:
        """Every container of `services` running, and healthy where it has a healthcheck."""
        started = time.monotonic()
        while True:
            pending = []
            for service in services:
                found = self.containers(service)
                if not found:
                    pending.append(f"{service}: no container")
                for container in found:
                    has_check = bool((container["Config"].get("Healthcheck") or {}).get("Test"))
                    if container["State"]["Status"] != "running" or (has_check and self.health(container) != "healthy"):
                        pending.append(f"{container['Name']}: {container['State']['Status']}/{self.health(container)}")
            if not pending:
                return time.monotonic() - started
            if time.monotonic() - started > seconds:
                raise AssertionError(f"not healthy after {seconds:.0f}s: {pending}")
            time.sleep(1)

    def hostname(self, container: dict) -> str:
        return container["Config"]["Hostname"]

    def ip_of(self, container: dict) -> str | None:
        for network in (container.get("NetworkSettings", {}).get("Networks") or {}).values():
            if network.get("IPAddress"):
                return network["IPAddress"]
        return None

    @property
    def network(self) -> str:
        """The back network (data): where the workers reach Redis, PostgreSQL and MLflow."""
        return f"{self.name}_back"

    # ------------------------------------------------------------------ database

    def connect(self):
        return psycopg2.connect(
            host="127.0.0.1",
            port=self.postgres_port,
            user=self.settings["POSTGRES_USER"],
            password=self.settings["POSTGRES_PASSWORD"],
            dbname=self.settings["POSTGRES_DB"],
            connect_timeout=5,
            options="-c search_path=predictions",  # the application's schema (deploy/postgres-init)
        )

    def sql(self, query: str, *params: Any, seconds: float = 60) -> list[tuple]:
        """Run a read in its own connection; retried while PostgreSQL restarts."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                conn = self.connect()
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute(query, params)
                        return cur.fetchall() if cur.description else []
                finally:
                    conn.close()
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def batch(self, batch_id: str) -> dict | None:
        rows = self.sql(
            "SELECT status, rows_written, rides_requested, chunks_total, chunks_done, attempts, model_version, error "
            "FROM batch_runs WHERE batch_id = %s",
            batch_id,
        )
        keys = ("status", "rows_written", "rides_requested", "chunks_total", "chunks_done", "attempts", "model_version")
        return dict(zip((*keys, "error"), rows[0], strict=True)) if rows else None

    def wait_batch(self, batch_id: str, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            row = self.batch(batch_id)
            if row and row["status"] == "succeeded":
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"batch {batch_id} not written after {seconds:.0f}s: {row}")
            time.sleep(1)

    def chunks(self, batch_id: str) -> list[tuple[int, int, str, float]]:
        """(chunk_index, rows_written, hostname, written_at as epoch seconds) per ledger row."""
        return self.sql(
            "SELECT chunk_index, rows_written, hostname, extract(epoch FROM written_at)::float8 "
            "FROM batch_chunks WHERE batch_id = %s ORDER BY chunk_index",
            batch_id,
        )

    def assert_written_once(self, batch_id: str, rides: int) -> list[tuple[int, int, str, float]]:
        """Row count = rides, no trip_id twice, one ledger row per chunk, the batch succeeded."""
        row = self.batch(batch_id)
        assert row is not None and row["status"] == "succeeded", row
        count, distinct = self.sql(
            "SELECT count(*), count(DISTINCT trip_id) FROM ride_predictions WHERE batch_id = %s", batch_id
        )[0]
        assert count == distinct == rides, f"{batch_id}: {count} rows, {distinct} distinct trip ids, {rides} rides"
        chunks = self.chunks(batch_id)
        assert [c[0] for c in chunks] == list(range(row["chunks_total"])), chunks
        assert sum(c[1] for c in chunks) == rides, chunks
        assert row["rows_written"] == rides and row["chunks_done"] == row["chunks_total"], row
        return chunks

    def active_copy(self) -> tuple[int, str] | None:
        """(backend pid, client address) of a chunk's COPY into its staging table running now."""
        rows = self.sql(
            "SELECT pid, host(client_addr) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
            STAGING_COPY,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def backend(self, pid: int) -> tuple[str, str, str | None] | None:
        """(state, query start, wait event) of a backend, None once it is gone."""
        rows = self.sql(
            "SELECT state, left(query, 40), wait_event FROM pg_stat_activity WHERE pid = %s",
            pid,
        )
        return rows[0] if rows else None

    # ------------------------------------------------------------------ the app

    def dispatch(self, rides: int) -> str:
        """`python -m worker dispatch` inside the beat container; returns the batch id it printed."""
        out = self.exec("beat", "python", "-m", "worker", "dispatch", "--rides", str(rides))
        return next(line.split()[1] for line in out.splitlines() if line.startswith("batch "))

    def worker_of_copy(self, seconds: float) -> tuple[int, dict]:
        """Wait for a chunk's COPY; returns its backend pid and the worker container sending it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = self.active_copy()
            if found:
                pid, address = found
                for container in self.containers("worker"):
                    if self.ip_of(container) == address:
                        return pid, container
            time.sleep(0.05)
        raise AssertionError(f"no chunk COPY seen in {seconds:.0f}s")

    def http(self, url: str, auth: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(url)
        if auth:
            request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    @property
    def mlflow_reader(self) -> str:
        """user:password of the read-only MLflow user the workers use (anonymous requests get 401)."""
        return f"{self.settings.get('MLFLOW_READER_USERNAME', 'taxi-reader')}:{self.settings['MLFLOW_READER_PASSWORD']}"

    def production_version(self) -> str:
        name = "chicago-taxi-duration"
        status, body = self.http(
            f"http://127.0.0.1:{self.mlflow_port}/api/2.0/mlflow/registered-models/alias?name={name}&alias=production",
            auth=self.mlflow_reader,
        )
        assert status == 200, body
        return json.loads(body)["model_version"]["version"]

    def queue_length(self) -> int:
        return int(self.exec("redis", "redis-cli", "llen", "celery").strip())

    def cleanup(self) -> list[str]:
        """Down with volumes, then remove by label whatever is left; returns what had to be removed by hand."""
        for container in self.containers(every=True):
            if container["State"]["Status"] == "paused":
                podman("unpause", container["Id"], check=False)
        for container in self.containers(every=True):  # a cut-off worker: give it its network back for down
            if not container.get("NetworkSettings", {}).get("Networks"):
                podman("network", "connect", self.network, container["Id"], check=False)
        with contextlib.suppress(Exception):
            self.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300, check=False)
        return self.leftovers(remove=True)

    def leftovers(self, remove: bool = False) -> list[str]:
        label = f"label=com.docker.compose.project={self.name}"
        found = []
        for kind, listing, removal in (
            ("container", ["ps", "-a", "-q", "--filter", label], ["rm", "-f", "-v"]),
            ("volume", ["volume", "ls", "-q", "--filter", label], ["volume", "rm", "-f"]),
            ("network", ["network", "ls", "-q", "--filter", label], ["network", "rm", "-f"]),
        ):
            for item in podman(*listing, check=False).stdout.split():
                found.append(f"{kind} {item}")
                if remove:
                    podman(*removal, item, check=False)
        return found
