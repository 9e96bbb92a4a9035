"""Monitoring with real Redis, PostgreSQL, MLflow, worker and beat processes: what a batch leaves in
the monitoring tables, live accuracy from outcomes, loading real outcomes, and what must never
happen (a monitoring failure touching the batch)."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest

from tests.support import wait_until

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
    return next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("batch "))


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
    window = stack.sql(
        "SELECT * FROM window_metrics WHERE model_version = :v ORDER BY computed_at DESC", v=trained.version
    )
    assert window and window[0].window_minutes == 60 and window[0].rows >= 3000

    status = json.loads(stack.cli("status", "--json").stdout)["monitoring"]
    assert status["ok"] and status["last_batch"]["batch_id"] is not None
