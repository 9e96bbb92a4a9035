"""Our own Redis, PostgreSQL and MLflow servers for fault injection, and a peak-memory runner.

The machine's shared PostgreSQL (5432) and Redis (6379) are never stopped: every test that
injects a fault into a service starts its own instance here, on a free port, in a temporary
folder, and stops and starts *that* one. Every class is a context manager that stops its
server and deletes its folder on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import redis

from tests.support import free_port, stop_process_group, wait_for_http

STARTUP_SECONDS = 60.0
NO_PERSISTENCE = ("--save", "", "--appendonly", "no", "--daemonize", "no")
# What the compose file runs, but fsync on every write so a test's kill -9 loses nothing by timing.
APPEND_ONLY = ("--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no")


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class RedisServer:
    """`redis-server` on a free 127.0.0.1 port, without persistence unless asked; crash it and start it again."""

    def __init__(self, append_only: bool = False) -> None:
        self.append_only = append_only
        self.root = Path(tempfile.mkdtemp(prefix="ctb-redis-"))
        self.port = free_port()
        self.log = self.root / "redis.log"
        self.process: subprocess.Popen | None = None

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    @property
    def command(self) -> list[str]:
        port, folder = str(self.port), str(self.root)
        persistence = APPEND_ONLY if self.append_only else NO_PERSISTENCE
        return ["redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", folder, *persistence]

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{_tail(self.log)}")

    def crash(self) -> None:
        """SIGKILL: no shutdown, no save; everything in memory (queue, results) is gone."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PostgresServer:
    """A throw-away PostgreSQL cluster run by the `postgres` OS user (it refuses to run as root).

    Listens on 127.0.0.1:<free port>, unix socket in its own folder, trust auth. `crash()` is
    `pg_ctl stop -m immediate` (no checkpoint: the next start runs crash recovery), `start()`
    brings it back on the same port and data directory.
    """

    def __init__(self, database: str = "ctb") -> None:
        self.bin = _pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="ctb-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.database = database
        os.chmod(self.root, 0o755)
        shutil.chown(self.root, "postgres", "postgres")
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", "postgres", "--", *args]
        if os.geteuid() != 0:  # already an unprivileged user: run it directly
            command = list(args)
        # Output to a file, not a pipe: the postmaster pg_ctl leaves behind must not hold our pipe open.
        with open(self.root / "pg_ctl.out", "ab") as out:
            result = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout, cwd=self.root
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{_tail(self.root / 'pg_ctl.out')}\n{_tail(self.log)}"
            )
        return result

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
            "start",
        )  # fmt: skip
        self.running = True

    def crash(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.running = False

    def create_database(self) -> None:
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()

    def __enter__(self) -> PostgresServer:
        self.init()
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.running or (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.crash()
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` (SQLite store, proxied artifacts) on a fixed free port; stop and start it again.

    With `auth_env` it runs MLflow's basic-auth app (`--app-name basic-auth`) with those extra
    environment variables (MLFLOW_AUTH_CONFIG_PATH, the admin's password, the Flask secret key).
    """

    def __init__(self, auth_env: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ctb-mlflow-"))
        self.port = free_port()
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None
        self.auth_env = auth_env

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(self.auth_env or {})}
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        if self.auth_env is not None:
            command += ["--app-name", "basic-auth"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not wait_for_http(f"{self.uri}/health", self.process, STARTUP_SECONDS):
            raise RuntimeError(f"mlflow server on port {self.port} did not start:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


# Runs the command as its own child and reports that child's peak RSS. Measuring the command as a
# direct child of pytest would not do: ru_maxrss survives exec, so a child forked from a 400 MB
# pytest starts with a 400 MB "peak" however small the command is. The wrapper is small when it forks.
_PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def run_measured(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> Measured:
    """Run a command to the end; its own peak resident memory (KiB from getrusage, exact per child)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), *command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        seconds = time.monotonic() - started
        return Measured(
            returncode=done.returncode,
            stdout=done.stdout,
            stderr=done.stderr,
            seconds=seconds,
            peak_rss_mb=int(peak_file.read_text()) / 1024,  # KiB on Linux
        )
