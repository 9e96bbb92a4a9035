"""One definition per number: `status --json`, the exporter and the report read the same database and
say the same thing about missed slots, a batch's duration and production's accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from tests.support import REPO_ROOT
from worker.cli.batches import table_rows
from worker.monitor.overview import ModelAliases, collect
from worker.store import history, writes
from worker.store.database import build_engine, migrate
from worker.store.schema import (
    batch_runs,
    daily_accuracy,
    model_aliases,
    ride_outcomes,
    ride_predictions,
    slot_refusals,
)
from worker.store.snapshot import read_batches

INTERVAL = 300.0


def test_status_the_exporter_and_the_report_count_the_same_missed_slots_and_durations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    migrate(url)
    engine = build_engine(url)
    now = datetime.now(UTC)
    settled = history.settled_until(now, INTERVAL)
    # Beat ran for two hours up to the settled cut-off, but for four slots; the current slot and the one
    # before it are beat's still (one of them even written).
    slots = [settled - timedelta(seconds=INTERVAL * k) for k in range(1, 25)]
    missing = set(slots[5:9])
    day_ago = now - timedelta(days=1, hours=1)
    rows = [
        {"batch_id": f"schedule-{s.isoformat()}", "trigger": "schedule", "rides_requested": 10, "rows_written": 10,
         "status": "succeeded", "slot": s, "sent_by": "beat", "started_at": s + timedelta(seconds=1),
         "attempt_started_at": s + timedelta(seconds=1), "finished_at": s + timedelta(seconds=4)}
        for s in slots if s not in missing
    ] + [
        {"batch_id": f"schedule-{settled.isoformat()}", "trigger": "schedule", "rides_requested": 10,
         "rows_written": 10, "status": "succeeded", "slot": settled, "sent_by": "beat",
         "started_at": settled + timedelta(seconds=1), "finished_at": settled + timedelta(seconds=2)},
        # Failed a day ago, rerun a minute ago in 3 s: a 3-second batch, not a day-long one.
        {"batch_id": "adhoc-rerun", "trigger": "adhoc", "rides_requested": 10, "rows_written": 10,
         "status": "succeeded", "started_at": day_ago, "attempt_started_at": now - timedelta(minutes=1),
         "finished_at": now - timedelta(minutes=1) + timedelta(seconds=3), "seed": "1"},
    ]  # fmt: skip
    with engine.begin() as conn:
        for row in rows:
            conn.execute(insert(batch_runs).values(**row))
        # Production v2, its recent outcomes 3 min off against a held-out 2.0: degraded.
        conn.execute(insert(model_aliases).values(model_name="m", alias="production", version="2"))
        conn.execute(
            insert(daily_accuracy).values(
                day=now.date(), model_version="2", outcomes=600, mae=3.0, rmse=3.0, bias=0.0, heldout_mae=2.0
            )
        )
        trips = [f"00000000-0000-4000-8000-{k:012d}" for k in range(600)]
        conn.execute(insert(ride_predictions), [
            {"trip_id": t, "trip_start_timestamp": datetime(2026, 12, 1, 9), "fare": 9.0, "trip_miles": 2.0,
             "predicted_duration": 13.0, "model_name": "m", "model_version": "2", "batch_id": "adhoc-rerun"}
            for t in trips
        ])  # fmt: skip
        conn.execute(insert(ride_outcomes), [
            {"trip_id": t, "actual_duration": 10.0, "observed_at": datetime(2026, 12, 1, 9, 13), "source": "file",
             "known_at": now - timedelta(minutes=5)}
            for t in trips
        ])  # fmt: skip
    expected = sorted(missing)
    # One missing slot's message expired in the queue (no worker ran): it says why. A slot that has its
    # batch keeps its error there, so a refusal is not recorded for it.
    refused = expected[1]
    why = "TaskRevoked: expired in the queue before a worker ran it"
    assert writes.record_refusal(engine, f"schedule-{refused.isoformat()}", refused, why, "beat")
    assert not writes.record_refusal(engine, f"schedule-{slots[0].isoformat()}", slots[0], why, "beat")
    with engine.begin() as conn:  # refused once, then backfilled: not missed, so its old reason is not shown
        conn.execute(
            insert(slot_refusals).values(batch_id=f"schedule-{slots[2].isoformat()}", slot=slots[2], error="old")
        )

    status = subprocess.run(
        [sys.executable, "-m", "worker", "status", "--json"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "DATABASE_URL": url,
             "BATCH_INTERVAL_SECONDS": str(INTERVAL), "MODEL_NAME": "m", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    said = json.loads(status.stdout)["database"]["missed_slots_24h"]
    exported = read_batches(engine, now, INTERVAL)
    report = collect(engine, now, timedelta(hours=24), INTERVAL, settled, ModelAliases("m", "production", "challenger"))
    assert said == [s.isoformat() for s in expected]
    assert exported.missed_slots_last_day == len(expected)
    assert exported.refused_slots_last_day == 1
    assert report.missed == expected
    assert json.loads(status.stdout)["database"]["refused_slots_24h"] == {refused.isoformat(): why}
    assert report.refused == {refused: why}
    (missed_alert,) = [a for a in report.alerts if a.kind == "missed"]
    assert "(1 refused by a worker)" in missed_alert.text, missed_alert
    assert sum(f"({refused.isoformat()}): refused by a worker: {why}" in line for line in missed_alert.items) == 1

    # The rerun's duration: 3 s in `batches`, in the exporter and in the Pipeline dashboard's SQL.
    (shown,) = [row for row in table_rows(history.list_batches(engine, last=50)) if row[0] == "adhoc-rerun"]
    assert shown[7] == "3.0s"
    assert exported.last_duration_seconds["adhoc"] == 3.0
    pipeline = (REPO_ROOT / "deploy" / "grafana" / "dashboards" / "pipeline.json").read_text()
    assert "finished_at - coalesce(attempt_started_at, started_at)" in pipeline
    assert "finished_at - started_at" not in pipeline

    # Production degraded, by the one rule: the report's accuracy warning is the policy's and the alert's.
    assert report.production is not None and report.production.outcomes == 600
    assert [a.kind for a in report.alerts].count("accuracy") == 1
    # `status` shows that figure too (the registry is down here: the version and held-out MAE on record).
    recent = json.loads(status.stdout)["monitoring"]["production_recent"]
    shown = {key: recent[key] for key in ("version", "outcomes", "mae", "heldout_mae", "degraded")}
    assert shown == {"version": "2", "outcomes": 600, "mae": 3.0, "heldout_mae": 2.0, "degraded": True}
    assert recent == report.production.as_dict()
    human = subprocess.run(
        [sys.executable, "-m", "worker", "status"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "DATABASE_URL": url,
             "BATCH_INTERVAL_SECONDS": str(INTERVAL), "MODEL_NAME": "m", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        "production v2: live MAE 3.00 min over its 600 most recently known outcomes, +50% against its held-out "
        "2.00: DEGRADED (over 25%: TaxiLiveMaeWorseThanHeldout)"
    ) in human.stdout, human.stdout
    engine.dispose()
