"""What-if batches (sent with --speed-factor/--fare-factor) in production figures: counted by default,
left out with WHATIF_BATCHES=exclude, and marked wherever batches are summarised (issue 18, item 13).

One real PostgreSQL database holds an hour of three scheduled slots scored by a model that reads the
fare: two in the calibrated world and one backfilled with `--fare-factor 1.25` (same rides, dearer
fares, so its predictions err far more). Every expected figure is computed here in plain SQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from worker import batch
from worker.model.registry import LoadedModel
from worker.rides.generator import CHICAGO, RIDE_COLUMNS, Window, World, generate_rides
from worker.settings import get_settings
from worker.store import writes

WHATIF = "schedule-whatif-fare"
CALIBRATED = ("schedule-calibrated-1", "schedule-calibrated-2")


class FareReader:
    """A stand-in model whose prediction follows the fare, as the real one's does (its strongest clue)."""

    def predict(self, rides: pd.DataFrame) -> np.ndarray:
        return rides["fare"].to_numpy(dtype=float) * 0.6


def _reference() -> pd.DataFrame:
    rides = generate_rides(20_000, seed=3)
    frame = rides[list(RIDE_COLUMNS)].copy()
    frame["predicted_duration"] = frame["fare"] * 0.6
    frame["actual_duration"] = rides["trip_seconds"] / 60.0
    return frame


@pytest.fixture
def mode(monkeypatch):
    """Sets WHATIF_BATCHES for this process (the settings object is cached: cleared before and after)."""

    def use(value: str) -> None:
        monkeypatch.setenv("WHATIF_BATCHES", value)
        get_settings.cache_clear()

    yield use
    monkeypatch.delenv("WHATIF_BATCHES", raising=False)
    get_settings.cache_clear()


def _instant(local: datetime) -> datetime:
    """A Chicago wall time as the UTC instant slots and hour windows are keyed by."""
    return local.replace(tzinfo=CHICAGO).astimezone(UTC)


@pytest.fixture
def hour(fresh_pg_url):
    """The database, and the Chicago-local clock hour (start, end) holding the three slots: six hours ago,
    so every trip has ended and every outcome is known."""
    engine = create_engine(fresh_pg_url)
    start = (datetime.now(CHICAGO) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    model = LoadedModel(FareReader(), "m", "1")
    for k, (batch_id, world) in enumerate(
        [(CALIBRATED[0], World()), (CALIBRATED[1], World()), (WHATIF, World(fare_factor=1.25))]
    ):
        window = Window(start + timedelta(minutes=5 * k), start + timedelta(minutes=5 * (k + 1)))
        writes.start_batch(engine, batch_id=batch_id, trigger="schedule", rides_requested=300, chunks_total=1,
                           task_id=None, seed=k, window=(window.start, window.end), attempt=1,
                           fare_factor=world.fare_factor, sent_by="backfill",
                           slot=_instant(window.end))  # fmt: skip
        writes.pin_model(engine, batch_id, "m", "1", "alias")
        batch.run_generated_chunk(engine, model, batch_id=batch_id, chunk_index=0, rides=300, seed=k, window=window,
                                  world=world)  # fmt: skip
    from worker.monitor.batches import monitor_batch

    for batch_id in (*CALIBRATED, WHATIF):
        monitor_batch(engine, batch_id, lambda *_: _reference(), start + timedelta(days=2))
    yield engine, fresh_pg_url, start, start + timedelta(hours=1)
    engine.dispose()


def _expected(engine, calibrated_only: bool) -> tuple[int, float]:
    where = "WHERE b.speed_factor = 1 AND b.fare_factor = 1" if calibrated_only else ""
    with engine.connect() as conn:
        n, mae = conn.execute(
            text(
                "SELECT count(*), avg(abs(p.predicted_duration - o.actual_duration)) FROM ride_predictions p "
                f"JOIN ride_outcomes o ON o.trip_id = p.trip_id JOIN batch_runs b ON b.batch_id = p.batch_id {where}"
            )
        ).one()
    return int(n), float(mae)


def _figures(engine, start: datetime, end: datetime) -> dict:
    """Every production figure this item names, as the service's own readers compute them."""
    from worker.monitor.batches import monitor_window
    from worker.monitor.degradation import recent_accuracy
    from worker.monitor.quality import update_days
    from worker.store import evidence, monitoring

    now = datetime.now(UTC) + timedelta(hours=1)
    recent = recent_accuracy(engine, "1", 2.0, 1000, now)
    update_days(engine, [start.date()], start + timedelta(days=2), lambda *_: 2.0)
    monitor_window(engine, _instant(end - timedelta(minutes=50)), "m", "1", lambda *_: _reference())
    with engine.connect() as conn:
        day = conn.execute(
            text("SELECT outcomes, mae FROM daily_accuracy WHERE day = :d AND model_version = '1'"), {"d": start.date()}
        ).one()
        window = conn.execute(
            text("SELECT batches, rows FROM window_metrics WHERE window_end = :e"), {"e": _instant(end)}
        ).one()
    observed = evidence.observed_rides(engine, now - timedelta(days=2), now)
    return {
        "recent": (recent.outcomes, recent.mae),
        "day": (int(day.outcomes), float(day.mae)),
        "window": tuple(window),
        "retraining": (evidence.count_observed(engine, now - timedelta(days=2), now), set(observed["batch_id"])),
        "status_live_mae": monitoring.latest_summary(engine)["live_mae"],
    }


def test_what_if_batches_count_by_default_and_leave_every_production_figure_when_excluded(hour, mode):
    """Live accuracy (the rolling window of the alert, the report and the policy; each batch's and each
    day's), the hour window's drift, the retraining window and `status`'s live MAE."""
    from worker.monitor.quality import update_quality

    engine, _, start, end = hour
    mode("include")
    update_quality(engine, start + timedelta(days=2), lambda *_: 2.0, batch_ids=[*CALIBRATED, WHATIF])
    found = _figures(engine, start, end)
    n, mae = _expected(engine, calibrated_only=False)
    assert n == 900
    assert found["recent"][0] == n and found["recent"][1] == pytest.approx(mae)
    assert found["day"][0] == n and found["day"][1] == pytest.approx(mae)
    assert found["window"] == (3, 900)
    assert found["retraining"] == (n, {*CALIBRATED, WHATIF})
    assert found["status_live_mae"]["batch_id"] == WHATIF  # the newest scored batch, what-if or not

    mode("exclude")
    update_quality(engine, start + timedelta(days=2), lambda *_: 2.0, batch_ids=[*CALIBRATED, WHATIF])
    found = _figures(engine, start, end)
    n, calibrated_mae = _expected(engine, calibrated_only=True)
    assert n == 600 and abs(calibrated_mae - mae) > 0.2  # dearer fares move a prediction that reads the fare
    assert found["recent"][0] == n and found["recent"][1] == pytest.approx(calibrated_mae)
    assert found["day"][0] == n and found["day"][1] == pytest.approx(calibrated_mae)
    assert found["window"] == (2, 600)
    assert found["retraining"] == (n, set(CALIBRATED))
    assert found["status_live_mae"]["batch_id"] == CALIBRATED[1]


def _cli(url: str, home, *args: str, whatif: str = "include") -> str:
    """A command as an operator runs it, on the test's database, with its own HOME and LOCAL_DIR."""
    import os
    import subprocess
    import sys

    from tests.support import REPO_ROOT

    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLOWER_", "MLFLOW_", "WHATIF"))}
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=REPO_ROOT,
        env={**inherited, "DATABASE_URL": url, "WHATIF_BATCHES": whatif, "HOME": str(home), "LOCAL_DIR": str(home)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_batches_history_marks_what_if_batches(hour, tmp_path):
    _, url, _, _ = hour
    rows = {row["batch_id"]: row for row in json.loads(_cli(url, tmp_path, "batches", "--json"))}
    assert rows[WHATIF]["what_if"] == "fare ×1.25"
    assert rows[CALIBRATED[0]]["what_if"] == ""
    lines = {line.split()[0]: line for line in _cli(url, tmp_path, "batches").splitlines()[1:]}
    assert "what-if fare ×1.25" in lines[WHATIF]
    assert "what-if" not in lines[CALIBRATED[0]]


def test_the_report_says_how_many_what_if_batches_the_period_holds(hour, tmp_path):
    _, url, _, _ = hour
    page = tmp_path / "report.html"
    _cli(url, tmp_path, "report", "--since", "1d", "-o", str(page))
    html = page.read_text()
    assert "1 what-if batch (fare ×1.25: 1), counted in production figures" in html
    assert 'id="batches-whatif"' in html  # the marker over its bar
    _cli(url, tmp_path, "report", "--since", "1d", "-o", str(page), whatif="exclude")
    html = page.read_text()
    assert "1 what-if batch (fare ×1.25: 1), left out of production figures (WHATIF_BATCHES=exclude)" in html


def test_the_dashboards_mark_what_if_batches_and_their_variable_leaves_them_out(hour):
    """Every panel's SQL runs (Grafana's macros expanded) with the `whatif` variable at include and at
    exclude; the batch panels name the what-if batch's series, and leave it out on exclude."""
    from tests.grafana import expand_sql, queries
    from worker.monitor.quality import update_quality

    engine, _, start, _ = hour
    update_quality(engine, start + timedelta(days=2), lambda *_: 2.0, batch_ids=[*CALIBRATED, WHATIF])
    now = datetime.now(UTC)
    found: dict[str, dict[str, set]] = {}
    for value in ("include", "exclude"):
        with engine.connect() as conn:
            for query in queries("sql"):
                sql = expand_sql(query.target["rawSql"], now - timedelta(days=2), now + timedelta(hours=1),
                                 variables={"whatif": value})  # fmt: skip
                rows = conn.execute(text(sql)).mappings().all()
                metrics = {row["metric"] for row in rows if "metric" in row}
                found.setdefault(value, {}).setdefault(query.panel_title, set()).update(metrics)
    assert found["include"]["Rows per batch"] == {"schedule", "schedule what-if"}
    assert found["exclude"]["Rows per batch"] == {"schedule"}
    assert found["include"]["Live MAE per batch"] == {"v1", "v1 what-if"}
    assert found["exclude"]["Live MAE per batch"] == {"v1"}
