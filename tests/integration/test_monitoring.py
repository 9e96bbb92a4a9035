"""Monitoring with real Redis, PostgreSQL, MLflow, worker and beat processes: what a batch leaves in
the monitoring tables, live accuracy from outcomes, loading real outcomes, and what must never
happen (a monitoring failure touching the batch)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import wait_until
from worker.rides.generator import CHICAGO

pytestmark = pytest.mark.integration

DRIFT_COLUMNS = {
    "pickup_community_area",
    "dropoff_community_area",
    "trip_miles",
    "fare",
    "trip_total",
    "predicted_duration",
}


def _batch_of(result) -> str:
    return next(line.split()[1].rstrip(":") for line in result.stdout.splitlines() if line.startswith("batch "))


def _metrics(stack, batch_id: str):
    rows = stack.sql("SELECT * FROM batch_metrics WHERE batch_id = :b AND monitor_status <> 'waiting'", b=batch_id)
    return rows[0] if rows else None


def test_a_written_batch_gets_its_metrics_drift_and_outcomes(stack, trained_model):
    _, trained = trained_model
    sent = stack.cli("dispatch", "--rides", "3000", "--seed", "11", "--wait")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    batch_id = _batch_of(sent)
    metrics = wait_until("the batch's metrics", lambda: _metrics(stack, batch_id), 60)
    assert metrics.monitor_status == "ok", metrics.monitor_error
    assert metrics.model_version == trained.version and metrics.rows == 3000
    assert metrics.prediction_p10 < metrics.prediction_p50 < metrics.prediction_p90
    predicted = stack.sql("SELECT avg(predicted_duration) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0]
    assert metrics.prediction_mean == pytest.approx(predicted, rel=1e-6)
    assert metrics.missing_share == 0.0
    assert metrics.columns_checked == 6 and 0 <= metrics.drifted_columns <= 6
    assert metrics.reference.startswith("hour")
    drift = {row.column_name: row for row in stack.sql("SELECT * FROM column_drift WHERE batch_id = :b", b=batch_id)}
    assert set(drift) == DRIFT_COLUMNS  # the true duration is added once all outcomes are observed
    for row in drift.values():
        assert row.method in ("wasserstein", "ks", "jensenshannon", "chisquare")
        assert row.score is not None and math.isfinite(row.score)
        assert row.drifted == (
            row.score >= row.threshold if row.method in ("wasserstein", "jensenshannon") else row.score < row.threshold
        )
    assert metrics.drifted_columns == sum(r.drifted for r in drift.values())
    assert metrics.dataset_drift == (metrics.drifted_columns >= 3)

    # The true durations went in with the predictions, observed only when each trip ends.
    outcomes = stack.sql(
        "SELECT count(*), min(o.observed_at - p.trip_start_timestamp) FROM ride_outcomes o "
        "JOIN ride_predictions p USING (trip_id) WHERE p.batch_id = :b",
        b=batch_id,
    )[0]
    assert outcomes[0] == 3000 and outcomes[1] >= timedelta(minutes=1)
    # An ad-hoc batch is a one-off: it stays out of the schedule's hour windows.
    assert stack.sql("SELECT count(*) FROM window_metrics WHERE rows >= 3000")[0][0] == 0

    status = json.loads(stack.cli("status", "--json").stdout)["monitoring"]
    assert status["ok"] and status["last_batch"]["batch_id"] is not None


def test_a_batch_above_the_sample_size_is_tested_on_a_random_sample_and_counted_whole(new_stack):
    """MONITOR_SAMPLE_ROWS: the database draws the sample, so only it travels; the row count (which
    live accuracy compares with the outcomes in) stays the batch's own."""
    from sqlalchemy import create_engine

    from worker.rides.generator import chicago_now
    from worker.store.monitoring import batch_row_count, batch_rows

    stack = new_stack(MONITOR_SAMPLE_ROWS="2000")
    stack.start_worker("sampled", concurrency=1)
    sent = stack.cli("dispatch", "--rides", "5000", "--seed", "12", "--wait")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    batch_id = _batch_of(sent)
    metrics = wait_until("the batch's metrics", lambda: _metrics(stack, batch_id), 60)
    assert metrics.monitor_status == "ok", metrics.monitor_error
    assert metrics.rows == 5000 and metrics.columns_checked == 6
    predicted = stack.sql("SELECT avg(predicted_duration) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0]
    assert metrics.prediction_mean == pytest.approx(predicted, rel=0.05)  # a sample's mean, close to the batch's
    assert metrics.prediction_mean != pytest.approx(predicted, rel=1e-9)  # but not every row's

    engine = create_engine(stack.db_url)
    try:
        known = chicago_now()
        first, second = (
            batch_rows(engine, batch_id, known, sample=2000),
            batch_rows(engine, batch_id, known, sample=2000),
        )
        assert len(first) == len(second) == 2000
        assert len(batch_rows(engine, batch_id, known, sample=9000)) == batch_row_count(engine, batch_id) == 5000
        key = ["trip_start_timestamp", "fare", "predicted_duration"]

        def ordered(frame):
            return frame[key].sort_values(key).reset_index(drop=True)

        assert not ordered(first).equals(ordered(second))  # drawn at random each time, not the first 2,000
    finally:
        engine.dispose()


def _backfill(stack, slots: int, *extra: str, end_hours_ago: float = 3) -> list[str]:
    """Backfill `slots` past 5-minute slots ending `end_hours_ago` ago: their outcomes are all observed."""
    end = datetime.fromtimestamp(math.floor(datetime.now(UTC).timestamp() / 300) * 300, UTC) - timedelta(
        hours=end_hours_ago
    )
    start = end - timedelta(minutes=5 * slots)
    done = stack.cli("backfill", "--from", start.isoformat(), "--to", end.isoformat(), "--wait", *extra, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return [f"schedule-{(start + timedelta(minutes=5 * k)).isoformat()}" for k in range(slots)]


def test_live_accuracy_of_backfilled_slots_comes_from_their_observed_outcomes(new_stack, trained_model):
    _, trained = trained_model
    stack = new_stack(BATCH_INTERVAL_SECONDS="300", QUALITY_INTERVAL_SECONDS="2")
    stack.start_worker("quality", concurrency=2)
    stack.start("beat", "--loglevel=INFO", f"--schedule={stack.logs / 'beat-schedule'}", name="beat")
    ids = _backfill(stack, 3)

    def filled():
        rows = stack.sql("SELECT * FROM batch_metrics WHERE batch_id = ANY(:ids) AND mae IS NOT NULL", ids=ids)
        return rows if len(rows) == len(ids) and all(r.outcomes == r.rows for r in rows) else None

    rows = wait_until("live accuracy of every backfilled slot (beat's update_quality)", filled, 120)
    for row in rows:
        errors = stack.sql(
            "SELECT avg(abs(p.predicted_duration - o.actual_duration)), avg(p.predicted_duration - o.actual_duration), "
            "count(*) FROM ride_predictions p JOIN ride_outcomes o USING (trip_id) WHERE p.batch_id = :b",
            b=row.batch_id,
        )[0]
        assert row.mae == pytest.approx(errors[0]) and row.bias == pytest.approx(errors[1])
        assert row.outcomes == errors[2] == row.rows
        assert row.rmse >= row.mae
    target = stack.sql(
        "SELECT count(*) FROM column_drift WHERE batch_id = ANY(:ids) AND column_name = 'actual_duration'", ids=ids
    )[0][0]
    assert target == len(ids)  # target drift, on complete outcomes, reported on its own
    days = stack.sql("SELECT * FROM daily_accuracy WHERE model_version = :v", v=trained.version)
    assert days and sum(d.outcomes for d in days) >= sum(r.rows for r in rows)
    day = days[0]
    assert day.heldout_mae == pytest.approx(trained.mae, abs=1e-3)
    assert day.baseline_mae > day.mae  # the model beats always guessing the median


def test_a_changed_world_drifts_and_the_calibrated_one_does_not(new_stack):
    stack = new_stack(BATCH_INTERVAL_SECONDS="300")
    stack.start_worker("drift", concurrency=2)
    # Afternoon slots are busy (a few hundred rides each): enough for the tests to see a 25 % fare rise.
    calm = _backfill(stack, 6, "--rides", "400", end_hours_ago=30)
    dear = _backfill(stack, 4, "--rides", "400", "--fare-factor", "1.25", end_hours_ago=6)

    def monitored(ids):
        rows = stack.sql("SELECT * FROM batch_metrics WHERE batch_id = ANY(:ids) AND monitor_status = 'ok'", ids=ids)
        return rows if len(rows) == len(ids) else None

    calm_rows = wait_until("the calibrated slots monitored", lambda: monitored(calm), 120)
    dear_rows = wait_until("the dearer slots monitored", lambda: monitored(dear), 120)
    assert sum(r.dataset_drift for r in dear_rows) == len(dear)
    assert sum(r.dataset_drift for r in calm_rows) <= 2  # ~4 % of slots are false alarms: 3 of 6 is a 1-in-700 fluke
    fare = stack.sql(
        "SELECT batch_id, drifted FROM column_drift WHERE column_name = 'fare' AND batch_id = ANY(:ids)", ids=dear
    )
    assert all(drifted for _, drifted in fare)
    # Clock hours as windows, each against the reference of its hours: the dearer hours drift.
    windows = stack.sql("SELECT * FROM window_metrics w WHERE w.rows >= 400 ORDER BY window_end")
    assert windows and all(w.window_minutes == 60 and w.batches >= 1 for w in windows)
    assert sum(w.rows for w in windows) == 10 * 400  # all ten slots, each in the hour it ends in

    def holding(rows):
        """Hour windows (UTC instants) that hold these batches (whose windows are Chicago wall times)."""
        ends = [r.window_end.replace(tzinfo=CHICAGO) for r in rows]
        return [w for w in windows if any(w.window_start < end <= w.window_end for end in ends)]

    assert all(w.dataset_drift for w in holding(dear_rows))
    assert sum(w.dataset_drift for w in holding(calm_rows)) <= 1


def _trips_with_ids(path, frame):
    """The cleaned real trips with a trip_id each, as a city export would carry them."""
    import uuid

    out = frame.copy()
    out.insert(0, "trip_id", [str(uuid.UUID(int=(i + 1) * 7919)) for i in range(len(out))])
    out["trip_start_timestamp"] = out["trip_start_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    out.to_csv(path, index=False)
    return out


def test_real_outcomes_give_the_same_mae_as_evaluate_on_the_same_rows(stack, real_sample_path, tmp_path):
    from worker.rides.cleaning import load_real_trips

    trips, _ = load_real_trips(real_sample_path)
    rides = _trips_with_ids(tmp_path / "real.csv", trips)
    scored = stack.cli("score", str(tmp_path / "real.csv"), "--wait", timeout=300)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    batch_id = _batch_of(scored)
    wait_until("the file's batch monitored", lambda: _metrics(stack, batch_id), 120)
    rides[["trip_id", "trip_seconds"]].to_csv(tmp_path / "outcomes.csv", index=False)
    loaded = stack.cli("outcomes", str(tmp_path / "outcomes.csv"))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert f"{len(rides)} outcomes written, 0 already known, 0 with trip ids never predicted here" in loaded.stdout
    assert f"batch {batch_id}: live MAE" in loaded.stdout
    metrics = _metrics(stack, batch_id)
    assert metrics.outcomes == len(rides) == metrics.rows

    evaluated = stack.cli("evaluate", "--data", str(tmp_path / "real.csv"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert metrics.mae == pytest.approx(json.loads(evaluated.stdout)["mae_minutes"], abs=0.01)

    # known_at is their arrival (the trips ended in 2013): it was left empty, so the rolling live accuracy,
    # its alert and the policy, which read by known_at, never counted a file's outcomes.
    unknown_when = stack.sql(
        "SELECT count(*) FROM ride_outcomes o JOIN ride_predictions p USING (trip_id) WHERE p.batch_id = "
        f"'{batch_id}' AND (o.known_at IS NULL OR o.known_at < o.loaded_at - interval '1 minute' "
        "OR o.known_at > o.loaded_at + interval '1 minute')"
    )[0][0]
    assert unknown_when == 0

    again = stack.cli("outcomes", str(tmp_path / "outcomes.csv"))  # idempotent
    assert f"0 outcomes written, {len(rides)} already known" in again.stdout
    assert "warning" not in again.stderr, again.stderr
    # A file that gives two known trips another duration: kept as stored, and said (it was silent).
    changed = rides[["trip_id", "trip_seconds"]].head(5).copy()
    changed.loc[changed.index[:2], "trip_seconds"] *= 2
    changed.to_csv(tmp_path / "changed.csv", index=False)
    other = stack.cli("outcomes", str(tmp_path / "changed.csv"))
    assert other.returncode == 0 and "0 outcomes written, 5 already known" in other.stdout, other.stdout + other.stderr
    first = changed.iloc[0]
    assert (
        f"warning: 2 of the already known outcomes have another duration in {tmp_path / 'changed.csv'}; the stored "
        f"ones are kept (an outcome is not corrected): trip {first.trip_id.replace('-', '')}: stored "
        f"{first.trip_seconds / 120:.2f} min, file {first.trip_seconds / 60:.2f} min" in other.stderr
    ), other.stderr
    stored = stack.sql("SELECT actual_duration FROM ride_outcomes WHERE trip_id = :t", t=first.trip_id)[0][0]
    assert stored == pytest.approx(first.trip_seconds / 120)
    assert stack.sql("SELECT count(*) FROM ride_outcomes WHERE source = 'file'")[0][0] >= len(rides)


BAD_OUTCOMES = [
    ("trip_id,duration\n{id},600\n", "missing column(s) trip_seconds"),
    ("trip_id,trip_seconds\n{id},-60\n", "trip_seconds is negative"),
    ("trip_id,trip_seconds\n{id},999999\n", "trip_seconds is over 86400"),
    ("trip_id,trip_seconds\n{id},0\n", "trip_seconds is 0"),
    ("trip_id,trip_seconds\n{id},600\n{id},700\n", "trip_id appears twice"),
    ("trip_id,trip_seconds\nnot-a-uuid,600\n", "trip_id is not a UUID"),
    ("trip_id,trip_seconds\n{id},ten minutes\n", "trip_seconds is not a number"),
]


@pytest.mark.parametrize(("text", "message"), BAD_OUTCOMES)
def test_bad_outcome_files_are_refused_whole(stack, tmp_path, text, message):
    sent = stack.cli("dispatch", "--rides", "3", "--wait")
    trip = stack.sql("SELECT trip_id::text FROM ride_predictions WHERE batch_id = :b LIMIT 1", b=_batch_of(sent))[0][0]
    path = tmp_path / "outcomes.csv"
    path.write_text(
        text.replace("{id}", trip) + f"{trip[:-1]}0,600\n" if "twice" not in text else text.replace("{id}", trip)
    )
    before = stack.sql("SELECT count(*) FROM ride_outcomes WHERE source = 'file'")[0][0]
    result = stack.cli("outcomes", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert stack.sql("SELECT count(*) FROM ride_outcomes WHERE source = 'file'")[0][0] == before


def test_a_huge_outcome_file_is_refused_before_it_is_read(stack, tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as handle:
        handle.write(b"trip_id,trip_seconds\n")
        handle.truncate(1 << 30)  # 1 GiB, sparse
    result = stack.cli("outcomes", str(path), extra_env={"MAX_RIDES_PER_REQUEST": "1000000"})
    assert result.returncode == 2 and "split the file" in result.stderr, result.stderr


def test_unknown_trip_ids_are_counted_not_stored(stack, tmp_path):
    path = tmp_path / "unknown.csv"
    path.write_text("trip_id,trip_seconds\n00000000-0000-4000-8000-00000000abcd,600\n")
    result = stack.cli("outcomes", str(path))
    assert result.returncode == 0, result.stderr
    assert "0 outcomes written, 0 already known, 1 with trip ids never predicted here" in result.stdout
    assert (
        stack.sql("SELECT count(*) FROM ride_outcomes WHERE trip_id = '00000000-0000-4000-8000-00000000abcd'")[0][0]
        == 0
    )


def test_a_failing_monitor_leaves_the_batch_succeeded_and_says_why(stack):
    stack.sql_exec(
        """
        CREATE FUNCTION refuse_drift() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'test: drift rows refused'; END $$ LANGUAGE plpgsql;
        CREATE TRIGGER refuse_drift BEFORE INSERT ON column_drift FOR EACH ROW EXECUTE FUNCTION refuse_drift();
        """
    )
    try:
        sent = stack.cli("dispatch", "--rides", "500", "--wait")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        batch_id = _batch_of(sent)
        metrics = wait_until("the monitoring failure to be recorded", lambda: _metrics(stack, batch_id), 60)
    finally:
        stack.sql_exec("DROP TRIGGER refuse_drift ON column_drift; DROP FUNCTION refuse_drift();")
    assert metrics.monitor_status == "failed" and "drift rows refused" in metrics.monitor_error
    run = stack.sql("SELECT status, rows_written, error FROM batch_runs WHERE batch_id = :b", b=batch_id)[0]
    assert (run.status, run.rows_written, run.error) == ("succeeded", 500, None)
    assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0] == 500
    status = json.loads(stack.cli("status", "--json").stdout)
    assert status["ok"] is True


def test_a_version_without_a_reference_is_reported_and_the_reference_command_adds_one(
    make_stack, fresh_pg_url, make_settings, monkeypatch
):
    from tests.conftest import SMALL_FOREST, SMALL_RIDES
    from worker.lifecycle.training import train_and_register
    from worker.model import training

    settings = make_settings()
    # A version registered before references existed: the same training, without the reference.
    monkeypatch.setattr(training, "log_reference", lambda frame: None)
    old = train_and_register(settings, rides=SMALL_RIDES, seed=5, params=training.ForestParams(**SMALL_FOREST))
    monkeypatch.undo()
    stack = make_stack(fresh_pg_url, MODEL_NAME=settings.MODEL_NAME)
    worker = stack.start_worker("noref", concurrency=1)
    first = _batch_of(stack.cli("dispatch", "--rides", "200", "--wait"))
    metrics = wait_until("the batch's metrics", lambda: _metrics(stack, first), 60)
    assert (metrics.monitor_status, metrics.reference, metrics.dataset_drift) == ("no_reference", "none", None)
    assert metrics.rows == 200 and metrics.prediction_p50 is not None  # the summary does not need a reference
    assert stack.sql("SELECT count(*) FROM column_drift WHERE batch_id = :b", b=first)[0][0] == 0

    added = stack.cli("reference", "--version", old.version, "--rides", "20000")
    assert added.returncode == 0, added.stderr
    assert f"logged a reference of 20000 rows for {settings.MODEL_NAME} version {old.version}" in added.stdout
    stack.stop(worker)
    stack.start_worker("withref", concurrency=1)
    second = _batch_of(stack.cli("dispatch", "--rides", "200", "--wait"))
    metrics = wait_until("the next batch's metrics", lambda: _metrics(stack, second), 60)
    assert metrics.monitor_status == "ok" and metrics.columns_checked == 6
    missing = stack.cli("reference", "--version", "999")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"{settings.MODEL_NAME} has no version 999 (versions: {old.version})" in missing.stderr
    # It has one now: not replaced silently (a generated reference would stand in for held-out rides).
    again = stack.cli("reference", "--version", old.version, "--rides", "20000")
    assert again.returncode == 2 and f"version {old.version} already has a drift reference" in again.stderr
    replaced = stack.cli("reference", "--version", old.version, "--rides", "20000", "--replace")
    assert replaced.returncode == 0 and "logged a reference of 20000 rows" in replaced.stdout, replaced.stderr
    unknown = stack.cli("convert-model", "--version", "999")
    assert unknown.returncode == 2 and "has no version 999" in unknown.stderr, unknown.stderr
    assert "reading the pickle" not in unknown.stdout
