"""`python -m worker exporter` as a real process, on SQLite and the embedded broker (no server needed).

The rows are written into a migrated database by hand so that every number the exporter must
report is known; the integration tests feed it real batches instead. Sick dependencies are
real too: a registry port nobody listens on, a broker port nobody listens on, and a "database"
that accepts the connection and then never says a word.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, insert

from tests.support import REPO_ROOT, free_port, required_tool, stop_process_group, wait_until
from worker.rides.generator import CHICAGO
from worker.store.database import migrate
from worker.store.schema import (
    batch_metrics,
    batch_runs,
    column_drift,
    daily_accuracy,
    model_aliases,
    model_events,
    model_policy,
    ride_outcomes,
    ride_predictions,
    window_column_drift,
    window_metrics,
)

INTERVAL = 300.0
TIMEOUT = 2.0  # EXPORTER_TIMEOUT_SECONDS in these tests
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, timeout: float = 30) -> tuple[str, float]:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        body = response.read().decode()
    return body, time.monotonic() - started


def samples(body: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in found, f"{name}{labels} missing; have {sorted(k for k in found if k[0] == name)}"
    return found[key]


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


@contextlib.contextmanager
def exporter(env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    port = free_port()
    log = tmp_path / f"exporter-{port}.log"
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LOCAL_DIR": str(tmp_path / "local"),
        "EXPORTER_PORT": str(port),
        "EXPORTER_TIMEOUT_SECONDS": str(TIMEOUT),
        "BATCH_INTERVAL_SECONDS": str(INTERVAL),
        **env,
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "exporter"],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            "the exporter to print its URL",
            lambda: process.poll() is not None or f"http://127.0.0.1:{port}/metrics" in log.read_text(),
            90,
        )
        assert process.poll() is None, log.read_text()
        yield port
    finally:
        stop_process_group(process)
        print(log.read_text()[-3000:])


def dead_port() -> int:
    """A port with nobody listening: connections are refused at once."""
    return free_port()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    migrate(url)
    yield url


def fill(url: str, now: datetime) -> dict:
    """Batches, drift and accuracy with known answers; returns the times the exporter must report."""
    hour = timedelta(hours=1)
    current_slot = datetime.fromtimestamp((now.timestamp() // INTERVAL) * INTERVAL, UTC)
    # 9 slots, none of the newest two; the oldest at most 55 minutes old, so that it is still in "the last
    # hour" however long the exporter takes to start (a slot at 59 minutes fell out of it in one run).
    slots = [current_slot - timedelta(seconds=INTERVAL * k) for k in range(2, 11)]
    missing = {slots[3], slots[6]}  # never ran: missed
    schedule_rows = []
    for k, slot in enumerate(sorted(set(slots) - missing)):
        schedule_rows.append(
            {
                "batch_id": f"schedule-{slot.isoformat()}",
                "trigger": "schedule",
                "rides_requested": 100 + k,
                "rows_written": 100 + k,
                "status": "succeeded",
                "slot": slot,
                "started_at": slot + timedelta(seconds=1),
                "finished_at": slot + timedelta(seconds=3 + k),
                "model_version": "2",
                "sent_by": "beat",
            }
        )
    # The newest slot was filled by a backfill (beat is dead): it is no heartbeat of beat's.
    schedule_rows[-1]["sent_by"] = "backfill"
    newest_schedule = max(schedule_rows, key=lambda row: row["finished_at"])
    other_rows = [
        # an ad-hoc batch that succeeded 2 hours ago: counts for "last", not for "last hour"
        {"batch_id": "adhoc-old", "trigger": "adhoc", "rides_requested": 5, "rows_written": 5, "status": "succeeded",
         "started_at": now - 2 * hour, "finished_at": now - 2 * hour + timedelta(seconds=7)},
        {"batch_id": "adhoc-failed", "trigger": "adhoc", "rides_requested": 9, "rows_written": 0, "status": "failed",
         "started_at": now - timedelta(minutes=20), "finished_at": now - timedelta(minutes=10), "attempts": 4},
        {"batch_id": "file-running", "trigger": "file", "rides_requested": 9, "status": "running",
         "started_at": now - timedelta(minutes=1)},
        {"batch_id": "adhoc-retrying", "trigger": "adhoc", "rides_requested": 9, "status": "retrying",
         "started_at": now - timedelta(minutes=2), "attempts": 2},
        # its challenger could not score it: written all the same, and counted
        {"batch_id": "file-shadow-failed", "trigger": "file", "rides_requested": 3, "rows_written": 3,
         "status": "succeeded", "started_at": now - timedelta(minutes=30), "finished_at": now - timedelta(minutes=29),
         "challenger_version": "4", "shadow_error": "challenger v4 failed to predict: ValueError: X"},
    ]  # fmt: skip
    moves = [
        {"model_name": "chicago-taxi-duration", "alias": "production", "action": "promoted", "from_version": "1",
         "to_version": "2", "actor": "alice", "status": "done", "at": now - 3 * hour},
        {"model_name": "chicago-taxi-duration", "alias": "production", "action": "rolled_back", "from_version": "2",
         "to_version": "1", "actor": "alice", "status": "done", "at": now - hour},
        {"model_name": "chicago-taxi-duration", "alias": "production", "action": "promoted", "from_version": "1",
         "to_version": "2", "actor": "bob", "status": "failed", "at": now - timedelta(minutes=5)},
        {"model_name": "chicago-taxi-duration", "alias": None, "action": "registered", "to_version": "3",
         "actor": "bob", "status": "done", "at": now - 2 * timedelta(days=1)},
    ]  # fmt: skip
    monitored = [
        {"batch_id": f"m{k}", "rows": 10, "monitor_status": "ok", "dataset_drift": k < 3, "monitored_at": now - timedelta(minutes=k)}
        for k in range(5)
    ] + [
        {"batch_id": "m-failed", "rows": 10, "monitor_status": "failed", "monitored_at": now - timedelta(minutes=9)},
        {"batch_id": "m-old", "rows": 10, "monitor_status": "ok", "dataset_drift": True, "monitored_at": now - 2 * hour},
    ]  # fmt: skip
    drift_rows = [
        {"batch_id": "m0", "column_name": "fare", "method": "wasserstein", "score": 0.31, "threshold": 0.1, "drifted": True},
        {"batch_id": "m0", "column_name": "pickup_community_area", "method": "chisquare", "score": 0.2, "threshold": 0.05, "drifted": False},
        {"batch_id": "m1", "column_name": "fare", "method": "wasserstein", "score": 0.01, "threshold": 0.1, "drifted": False},
    ]  # fmt: skip
    window_end = datetime(2026, 7, 1, 14, 0, tzinfo=CHICAGO).astimezone(UTC)  # windows are keyed by UTC instants
    in_progress = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + hour
    windows = [
        {"window_end": window_end - hour, "window_minutes": 60, "model_version": "2", "window_start": window_end - 2 * hour, "batches": 12, "rows": 900, "dataset_drift": True, "drifted_columns": 5},
        {"window_end": window_end, "window_minutes": 60, "model_version": "2", "window_start": window_end - hour, "batches": 12, "rows": 900, "dataset_drift": False, "drifted_columns": 1},
        {"window_end": window_end, "window_minutes": 60, "model_version": "3", "window_start": window_end - hour, "batches": 2, "rows": 90, "dataset_drift": True, "drifted_columns": 4},
        {"window_end": window_end, "window_minutes": 30, "model_version": "2", "window_start": window_end - hour / 2, "batches": 6, "rows": 450, "dataset_drift": True, "drifted_columns": 6},
        # The hour in progress (its end lies ahead): left out.
        {"window_end": in_progress, "window_minutes": 60, "model_version": "2", "window_start": in_progress - hour, "batches": 2, "rows": 90, "dataset_drift": False, "drifted_columns": 0},
    ]  # fmt: skip
    today = now.astimezone(CHICAGO).date()
    accuracy = [
        {"day": today, "model_version": "2", "outcomes": 700, "mae": 2.5, "rmse": 3.0, "bias": 0.1, "baseline_mae": 6.5, "heldout_mae": 1.9},
        {"day": today - timedelta(days=1), "model_version": "2", "outcomes": 9000, "mae": 9.9, "rmse": 3.0, "bias": 0.1, "heldout_mae": 1.9},
        {"day": today - timedelta(days=1), "model_version": "1", "outcomes": 50, "mae": 2.0, "rmse": 3.0, "bias": 0.1, "heldout_mae": None},
        {"day": today - timedelta(days=9), "model_version": "0", "outcomes": 50, "mae": 2.0, "rmse": 3.0, "bias": 0.1, "heldout_mae": 1.0},
    ]  # fmt: skip
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(batch_runs), schedule_rows)
        for row in other_rows:
            conn.execute(insert(batch_runs).values(**row))
        for row in monitored:
            conn.execute(insert(batch_metrics).values(**row))
        conn.execute(insert(column_drift), drift_rows)
        for row in windows:
            conn.execute(insert(window_metrics).values(**row))
        # The newest ended hour's predicted durations drifted for v3 (slower traffic, say).
        for version, moved in (("2", False), ("3", True)):
            conn.execute(
                insert(window_column_drift).values(
                    window_end=window_end, window_minutes=60, model_version=version,
                    column_name="predicted_duration", method="wasserstein", score=0.3 if moved else 0.01,
                    threshold=0.1, drifted=moved,
                )
            )  # fmt: skip
        for row in accuracy:
            conn.execute(insert(daily_accuracy).values(**row))
        for row in moves:
            conn.execute(insert(model_events).values(**row))
        # Production v2 on the record, 600 rides with known outcomes, each 3 minutes off; 20 not yet known.
        conn.execute(insert(model_aliases).values(model_name="chicago-taxi-duration", alias="production", version="2"))
        rides = [
            {"trip_id": f"00000000-0000-4000-8000-{k:012d}", "trip_start_timestamp": datetime(2026, 7, 1, 12, 0),
             "fare": 9.0, "trip_miles": 2.0, "predicted_duration": 13.0, "model_name": "chicago-taxi-duration",
             "model_version": "2", "batch_id": "m0"}
            for k in range(620)
        ]  # fmt: skip
        conn.execute(insert(ride_predictions), rides)
        conn.execute(
            insert(ride_outcomes),
            [
                {"trip_id": r["trip_id"], "actual_duration": 10.0, "observed_at": datetime(2026, 7, 1, 12, 10),
                 "source": "generated", "known_at": now - timedelta(minutes=5) if k < 600 else now + hour}
                for k, r in enumerate(rides)
            ],
        )  # fmt: skip
        conn.execute(
            insert(model_policy).values(
                model_name="chicago-taxi-duration", attention="recovery_failed", last_action="wait",
                last_pass_at=now - timedelta(minutes=2), last_retrain_at=now - 4 * hour,
            )
        )  # fmt: skip
    engine.dispose()
    return {
        "last_schedule": newest_schedule["finished_at"],
        "last_slot": max(row["slot"] for row in schedule_rows if row["sent_by"] == "beat"),
        "last_schedule_rows": newest_schedule["rows_written"],
        "last_schedule_seconds": (newest_schedule["finished_at"] - newest_schedule["started_at"]).total_seconds(),
        "window_end_utc": window_end,
        "batch_ids": {row["batch_id"] for row in schedule_rows + other_rows + monitored},
        "last_production_move": now - hour,
    }


def test_exporter_reports_batches_slots_drift_and_accuracy_from_the_database(database, tmp_path):
    # The exporter reads its clock seconds after fill() reads this one: a slot starting in between made
    # the unfilled one before it missed too (3, not 2, in a CI run at 01:25:00). Start clear of a boundary.
    left = INTERVAL - time.time() % INTERVAL
    if left < 30:
        time.sleep(left + 0.5)
    now = datetime.now(UTC)
    expected = fill(database, now)
    env = {"DATABASE_URL": database, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{dead_port()}"}
    with exporter(env, tmp_path) as port:
        body, _ = scrape(port)
    found = samples(body)

    assert value(found, "taxi_database_up") == 1
    assert value(found, "taxi_broker_up") == 1  # the embedded filesystem broker
    assert value(found, "taxi_registry_up") == 0  # nobody listens on its port
    assert value(found, "taxi_exporter_errors_total", source="registry") == 1
    assert value(found, "taxi_exporter_errors_total", source="database") == 0
    assert value(found, "taxi_batch_interval_seconds") == INTERVAL
    # Every series of the exporter that an alert rule reads is there (with this database's history):
    # a renamed gauge would leave its rule silent for good. TaxiNoBatchSucceeded's rule for an install
    # where no slot ever succeeded reads the exporter's start from the process collector.
    rules = (REPO_ROOT / "deploy" / "prometheus" / "rules" / "taxi-alerts.yml").read_text()
    read = set(re.findall(r"\b(taxi_[a-z_]+|process_start_time_seconds)\b", rules))
    read.discard("taxi_worker_up")  # only once a worker is heard: tests/integration/test_production_monitoring.py
    assert read and read <= names(found), sorted(read - names(found))
    assert time.time() - 600 < value(found, "process_start_time_seconds") < time.time()

    assert value(found, "taxi_batch_last_success_timestamp_seconds", trigger="schedule") == pytest.approx(
        expected["last_schedule"].timestamp()
    )
    assert value(found, "taxi_batch_last_slot_timestamp_seconds") == expected["last_slot"].timestamp()
    assert value(found, "taxi_batch_last_success_timestamp_seconds", trigger="adhoc") == pytest.approx(
        (now - timedelta(hours=2) + timedelta(seconds=7)).timestamp()
    )
    assert value(found, "taxi_batch_last_failure_timestamp_seconds", trigger="adhoc") == pytest.approx(
        (now - timedelta(minutes=10)).timestamp()
    )
    assert value(found, "taxi_batch_last_rows", trigger="schedule") == expected["last_schedule_rows"]
    assert value(found, "taxi_batch_last_duration_seconds", trigger="schedule") == pytest.approx(
        expected["last_schedule_seconds"]
    )
    assert value(found, "taxi_batches_finished_last_hour", status="succeeded", trigger="schedule") == 7
    assert value(found, "taxi_batches_finished_last_hour", status="succeeded", trigger="adhoc") == 0  # 2 h ago
    assert value(found, "taxi_batches_finished_last_hour", status="failed", trigger="adhoc") == 1
    assert value(found, "taxi_batches_finished_last_hour", status="failed", trigger="file") == 0
    assert value(found, "taxi_shadow_failures_last_hour") == 1
    assert value(found, "taxi_model_events_last_day", action="promoted") == 1  # the failed one does not count
    assert value(found, "taxi_model_events_last_day", action="rolled_back") == 1
    assert value(found, "taxi_model_events_last_day", action="registered") == 0  # two days ago
    assert value(found, "taxi_model_moves_failed_last_day") == 1
    # Production's rolling window: the 600 outcomes known by now (the 20 known later do not count yet).
    assert value(found, "taxi_live_recent_outcomes", model_version="2") == 600
    assert value(found, "taxi_live_mae_recent_seconds", model_version="2") == pytest.approx(180.0)
    assert "taxi_production_degraded" not in names(found)  # its held-out MAE is the registry's, which is down
    assert value(found, "taxi_policy_attention", reason="recovery_failed") == 1
    assert value(found, "taxi_policy_attention", reason="halted_after_rollback") == 0
    assert value(found, "taxi_policy_halted") == 0
    assert value(found, "taxi_policy_info", mode="off", last_action="wait") == 1
    assert value(found, "taxi_policy_last_retrain_timestamp_seconds") == pytest.approx(
        (now - timedelta(hours=4)).timestamp()
    )
    assert value(found, "taxi_model_last_production_move_timestamp_seconds") == pytest.approx(
        expected["last_production_move"].timestamp()
    )
    assert value(found, "taxi_rows_written_last_hour", trigger="schedule") == sum(100 + k for k in range(7))
    assert value(found, "taxi_rows_written_last_hour", trigger="file") == 3
    assert value(found, "taxi_batches_unfinished", status="running") == 1
    assert value(found, "taxi_batches_unfinished", status="retrying") == 1
    assert value(found, "taxi_missed_slots_last_day") == 2

    assert value(found, "taxi_monitored_batches_last_hour", status="ok") == 5
    assert value(found, "taxi_monitored_batches_last_hour", status="failed") == 1
    assert value(found, "taxi_monitored_batches_last_hour", status="waiting") == 0
    assert value(found, "taxi_drifted_batches_last_hour") == 3  # m0..m2; m-old is 2 h old
    assert value(found, "taxi_last_batch_dataset_drift") == 1  # m0, monitored last
    assert value(found, "taxi_last_batch_column_drift_score", column="fare", method="wasserstein") == 0.31
    assert value(found, "taxi_last_batch_column_drift_threshold", column="fare", method="wasserstein") == 0.1
    assert value(found, "taxi_last_batch_column_drifted", column="pickup_community_area", method="chisquare") == 0
    # The newest 60-minute window, any version drifted; its Chicago-local end as a true instant.
    assert value(found, "taxi_hour_window_dataset_drift") == 1
    assert value(found, "taxi_hour_window_drifted_columns") == 4
    assert value(found, "taxi_hour_window_prediction_drift") == 1
    assert value(found, "taxi_hour_window_end_timestamp_seconds") == expected["window_end_utc"].timestamp()
    assert expected["window_end_utc"].hour == 19  # 14:00 in Chicago in July is 19:00 UTC

    # Newest day per version, today or yesterday only; minutes become seconds.
    assert value(found, "taxi_live_mae_seconds", model_version="2") == pytest.approx(150.0)
    assert value(found, "taxi_live_outcomes", model_version="2") == 700
    assert value(found, "taxi_heldout_mae_seconds", model_version="2") == pytest.approx(114.0)
    assert value(found, "taxi_baseline_mae_seconds", model_version="2") == pytest.approx(390.0)
    assert value(found, "taxi_live_mae_seconds", model_version="1") == pytest.approx(120.0)
    assert ("taxi_heldout_mae_seconds", (("model_version", "1"),)) not in found  # unknown: registry down
    assert not any(labels == (("model_version", "0"),) for _, labels in found)  # 9 days old
    assert "taxi_production_model_info" not in names(found)  # registry down: no guess

    # The README lists every metric.
    readme = (REPO_ROOT / "README.md").read_text()
    for name in names(found):
        if name.startswith("taxi_"):
            assert f"`{name}`" in readme, f"{name} is not in the README's metric table"

    # No batch ids as label values, anywhere.
    label_values = {v for _, labels in found for _, v in labels}
    assert not label_values & expected["batch_ids"], label_values & expected["batch_ids"]


def test_exporter_output_passes_promtool_check_metrics(database, tmp_path):
    promtool = required_tool("promtool", "prometheus")
    fill(database, datetime.now(UTC))
    with exporter(
        {"DATABASE_URL": database, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{dead_port()}"}, tmp_path
    ) as port:
        body, _ = scrape(port)
    assert "taxi_last_batch_column_drift_score" in body and "taxi_live_mae_seconds" in body
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


class SilentServer:
    """A TCP server that accepts connections and never answers: a database hung mid-handshake."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def test_a_database_that_never_answers_costs_a_scrape_its_timeout_not_a_hang(tmp_path):
    silent = SilentServer()
    try:
        env = {
            "DATABASE_URL": f"postgresql+psycopg2://postgres@127.0.0.1:{silent.port}/ctb",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{dead_port()}",
        }
        with exporter(env, tmp_path) as port:
            first, first_seconds = scrape(port)
            second, second_seconds = scrape(port)
    finally:
        silent.close()
    for body, seconds in ((first, first_seconds), (second, second_seconds)):
        assert seconds < TIMEOUT + 1.5, f"scrape took {seconds:.1f} s"
        found = samples(body)
        assert value(found, "taxi_database_up") == 0
        assert value(found, "taxi_broker_up") == 1
        assert "taxi_batch_last_success_timestamp_seconds" not in names(found)  # unknown, not zero
    assert value(samples(second), "taxi_exporter_errors_total", source="database") == 2


def test_a_refused_broker_reports_broker_down_and_no_worker_series(database, tmp_path):
    env = {
        "DATABASE_URL": database,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{dead_port()}/0",
        "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{dead_port()}/1",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{dead_port()}",
    }
    with exporter(env, tmp_path) as port:
        body, seconds = scrape(port)
    found = samples(body)
    assert seconds < TIMEOUT + 1.5
    assert value(found, "taxi_broker_up") == 0
    assert value(found, "taxi_database_up") == 1
    assert value(found, "taxi_exporter_errors_total", source="workers") == 1
    assert not names(found) & {"taxi_queue_length", "taxi_workers_online", "taxi_worker_up"}


def test_a_taken_port_is_refused_naming_the_setting(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "worker", "exporter", "--port", str(port)],
            cwd=REPO_ROOT,
            env={"PATH": os.environ["PATH"], "LOCAL_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is already taken" in done.stderr
    assert "EXPORTER_PORT" in done.stderr
