"""`python -m worker run` (what `make run` starts), in the embedded mode a newcomer gets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, free_port, wait_until

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()
    except OSError:
        return ""


def processes_with_env(entry: str) -> list[int]:
    """Pids whose environment holds `entry`: every child `run` started inherits its LOCAL_DIR."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def library_warnings(text: str) -> list[str]:
    """Warnings printed by libraries: logging WARNING records of loggers outside `worker`, and
    Python warnings (`SomethingWarning: ...`). The project's own warnings are meant for the user."""
    return [
        line
        for line in text.splitlines()
        if (re.search(r"\bWARNING\b", line) and not re.search(r"\bWARNING[/ ]\S*\s*worker[.:]", line))
        or re.search(r"\b[A-Z]\w*Warning: ", line)
    ]


def test_library_warnings_are_recognised():
    """The check below can fail: the two warnings a first run used to print are caught."""
    first_run_before = (
        "2026/11/27 11:45:21 WARNING mlflow.sklearn: Saving scikit-learn models in the pickle or cloudpickle format\n"
        "2026-11-27 11:54:44,447 WARNING kombu.connection: No hostname was supplied. Reverting to default 'localhost'\n"
        "/x/fastapi_app.py:23: StarletteDeprecationWarning: starlette.middleware.wsgi is deprecated\n"
        "2026-11-27 11:54:44,447 WARNING worker.model.registry: model registry unreachable\n"
        "done: 30 rows written\n"
    )
    assert len(library_warnings(first_run_before)) == 3


def test_run_sets_up_everything_runs_batches_and_stops_cleanly(tmp_path):
    port = free_port()
    exporter_port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LOCAL_DIR": str(tmp_path / "local"),
        "FLOWER_PORT": str(port),
        "EXPORTER_PORT": str(exporter_port),
        "BATCH_INTERVAL_SECONDS": "4",
        "RIDES_PER_BATCH": "30",
    }
    log = tmp_path / "run.out"
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--first-model-rides", "5000"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "Ctrl-C stops everything" not in log.read_text():
            assert run.poll() is None, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert "training a first one on generated rides" in text
        assert "done: 30 rows written with chicago-taxi-duration version 1" in text
        assert f"Flower       http://127.0.0.1:{port}" in text
        assert "report       .venv/bin/python -m worker report --since 24h" in text
        # A quiet first run: no library warning the user can do nothing about (issue 13).
        assert library_warnings(text) == [], text
        for name in ("worker", "monitor", "trainer", "beat"):
            assert "No hostname was supplied" not in (tmp_path / "local" / "logs" / f"{name}.log").read_text()
        assert f"exporter     http://127.0.0.1:{exporter_port}/metrics" in text

        # The exporter answers on the embedded stores too: SQLite, the filesystem broker, the local registry.
        metrics = wait_until(
            "the exporter to see the worker and the first batch",
            lambda: (
                (body := scrape(exporter_port))
                and 'taxi_batch_last_success_timestamp_seconds{trigger="adhoc"}' in body
                and "taxi_workers_online 3.0" in body  # scoring, monitoring and training: one process each
                and 'taxi_production_model_info{model_name="chicago-taxi-duration",model_version="1"} 1.0' in body
                and body
            ),
            60,
            every=1,
        )
        for up in ("taxi_database_up 1.0", "taxi_broker_up 1.0", "taxi_registry_up 1.0"):
            assert up in metrics, metrics
        assert 'taxi_rows_written_last_hour{trigger="adhoc"} 30.0' in metrics

        # Beat's batches follow, on the embedded broker and SQLite.
        deadline = time.monotonic() + 60
        report = {}
        while time.monotonic() < deadline:
            status = subprocess.run(
                [sys.executable, "-m", "worker", "status", "--json"],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            report = json.loads(status.stdout)
            last = report["database"].get("last_batch") or {}
            if last.get("batch_id", "").startswith("schedule-"):
                break
            time.sleep(1)
        assert report["ok"] is True, report
        assert report["database"]["last_batch"]["batch_id"].startswith("schedule-"), report
        assert set(report["broker"]["queues"]) == {"celery", "monitoring", "training"}
        # The monitoring worker (queue `monitoring`) monitored what the scoring worker wrote.
        monitored = wait_until(
            "a batch monitored by the monitoring worker",
            lambda: "Task worker.tasks.monitor_batch[" in (tmp_path / "local" / "logs" / "monitor.log").read_text(),
            60,
        )
        scoring_log = (tmp_path / "local" / "logs" / "worker.log").read_text()
        assert monitored and "Task worker.tasks.monitor_batch[" not in scoring_log
        assert report["broker"]["url"].startswith("filesystem://")

        # The report command it prints works on the embedded SQLite database, with the batches in it.
        made = subprocess.run(
            [sys.executable, "-m", "worker", "report", "--since", "24h"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        page = (tmp_path / "local" / "report.html").read_text()
        assert '<section class="chart" id="chart-batches" data-empty="false"' in page
        assert '<section class="chart" id="chart-versions" data-empty="false"' in page
    finally:
        run.send_signal(signal.SIGINT)  # what Ctrl-C sends
        run.wait(timeout=120)
    text = log.read_text()
    for part in ("worker", "monitor", "trainer", "beat", "flower", "exporter"):
        assert f"stopped {part}" in text
    assert run.returncode == 0, text
    assert processes_with_env(f"LOCAL_DIR={tmp_path / 'local'}") == [], "processes left running"

    # A second run reuses the model, schema and stores the first one made.
    second = subprocess.run(
        [sys.executable, "-m", "worker", "init"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert "registry already has chicago-taxi-duration version 1" in second.stdout
