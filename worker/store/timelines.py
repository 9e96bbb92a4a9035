"""Reading the monitoring tables over a period, for the report: one row per batch, per column test,
per hour window and per day, as plain data frames.

A batch belongs to the period by the end of its ride window (Chicago local, as stored), or by its
start (UTC) when it has no window (a scored file): a backfilled slot of yesterday is yesterday's,
even if it ran a minute ago. Times come back as stored: ride and window times naive Chicago local,
bookkeeping times UTC (SQLite gives those back naive; `utc` makes them aware). Model events
(`model_events`) belong to the period by when they happened (`at`, UTC).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
from sqlalchemy import Engine, Select, and_, or_, select

from worker.store.events import DONE, FAILED
from worker.store.schema import (
    batch_metrics,
    batch_runs,
    column_drift,
    daily_accuracy,
    model_events,
    window_column_drift,
    window_metrics,
)
from worker.store.whatif import counts_in_production

BATCH_COLUMNS = (
    "batch_id",
    "trigger",
    "status",
    "rides_requested",
    "rows_written",
    "model_name",
    "model_version",
    "model_pinned_by",
    "window_start",
    "window_end",
    "started_at",
    "finished_at",
    "slot",
    "speed_factor",
    "fare_factor",
    "error",
    "challenger_version",
    "shadow_error",
)
METRIC_COLUMNS = (
    "prediction_p10",
    "prediction_p50",
    "prediction_p90",
    "columns_checked",
    "drifted_columns",
    "dataset_drift",
    "monitor_status",
    "monitor_error",
    "outcomes",
    "mae",
)


EVENT_COLUMNS = (
    "id",
    "at",
    "action",
    "alias",
    "from_version",
    "to_version",
    "actor",
    "status",
    "reason",
    "error",
)
# A pending move is neither a move nor a failure yet (its process asks the registry right now, or died and
# the next observation settles it): the report shows moves that happened and moves that failed.
SETTLED = (DONE, FAILED)


def utc(value: datetime) -> datetime:
    """An aware UTC datetime from a stored bookkeeping time (naive from SQLite, aware from PostgreSQL)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in_period(since_local: datetime, since_utc: datetime):
    """The batches whose rides' window ends in the period. A scheduled batch's window ends at its slot,
    a UTC instant: its naive local end names two instants on the night clocks go back, and a period
    starting in the repeated hour held the hour before it too. Other batches have only their local
    window (ad-hoc rides are made up in local time), or none (a file: when it started)."""
    return or_(
        batch_runs.c.slot >= since_utc,
        and_(batch_runs.c.slot.is_(None), batch_runs.c.window_end >= since_local),
        and_(batch_runs.c.slot.is_(None), batch_runs.c.window_end.is_(None), batch_runs.c.started_at >= since_utc),
    )


def _frame(engine: Engine, query: Select, columns: list[str]) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=columns)


def batches_since(engine: Engine, since_local: datetime, since_utc: datetime) -> pd.DataFrame:
    """Every batch of the period with its monitoring row, if any (columns BATCH_COLUMNS + METRIC_COLUMNS),
    and `counts`: whether it counts in production figures (worker/store/whatif.py)."""
    query = (
        select(
            *(batch_runs.c[c] for c in BATCH_COLUMNS),
            *(batch_metrics.c[c] for c in METRIC_COLUMNS),
            counts_in_production(batch_runs.c.batch_id).label("counts"),
        )
        .select_from(batch_runs.outerjoin(batch_metrics, batch_metrics.c.batch_id == batch_runs.c.batch_id))
        .where(_in_period(since_local, since_utc))
        .order_by(batch_runs.c.started_at, batch_runs.c.batch_id)
    )
    frame = _frame(engine, query, [*BATCH_COLUMNS, *METRIC_COLUMNS, "counts"])
    frame["counts"] = frame["counts"].astype(bool)
    return frame


def column_drift_since(engine: Engine, since_local: datetime, since_utc: datetime) -> pd.DataFrame:
    """Each column test of the period's batches: batch_id, column_name, method, score, threshold, drifted."""
    columns = ["batch_id", "column_name", "method", "score", "threshold", "drifted"]
    query = (
        select(*(column_drift.c[c] for c in columns))
        .select_from(column_drift.join(batch_runs, batch_runs.c.batch_id == column_drift.c.batch_id))
        .where(_in_period(since_local, since_utc))
    )
    return _frame(engine, query, columns)


def windows_since(engine: Engine, since: datetime) -> pd.DataFrame:
    """The hour windows (per model version) that end after `since` (UTC); their ends and starts are UTC."""
    columns = [
        "window_start",
        "window_end",
        "window_minutes",
        "model_version",
        "batches",
        "rows",
        "columns_checked",
        "drifted_columns",
        "dataset_drift",
        "reference",
    ]
    query = (
        select(*(window_metrics.c[c] for c in columns))
        .where(window_metrics.c.window_end > since)
        .order_by(window_metrics.c.window_end, window_metrics.c.model_version)
    )
    return _frame(engine, query, columns)


def window_drift_since(engine: Engine, since: datetime) -> pd.DataFrame:
    """Each column test of the hour windows that end after `since` (UTC)."""
    columns = [
        "window_end",
        "window_minutes",
        "model_version",
        "column_name",
        "method",
        "score",
        "threshold",
        "drifted",
    ]
    query = select(*(window_column_drift.c[c] for c in columns)).where(window_column_drift.c.window_end > since)
    return _frame(engine, query, columns)


def daily_accuracy_since(engine: Engine, first_day: date) -> pd.DataFrame:
    """Live accuracy per Chicago-local day and model version, from `first_day` on."""
    columns = ["day", "model_version", "outcomes", "mae", "rmse", "bias", "baseline_mae", "heldout_mae"]
    query = (
        select(*(daily_accuracy.c[c] for c in columns))
        .where(daily_accuracy.c.day >= first_day)
        .order_by(daily_accuracy.c.day, daily_accuracy.c.model_version)
    )
    return _frame(engine, query, columns)


def model_events_since(engine: Engine, model_name: str, since_utc: datetime, until_utc: datetime) -> pd.DataFrame:
    """The model's settled events (done or failed) with since_utc <= at <= until_utc, oldest first
    (columns EVENT_COLUMNS; `at` as stored)."""
    query = (
        select(*(model_events.c[c] for c in EVENT_COLUMNS))
        .where(
            model_events.c.model_name == model_name,
            model_events.c.status.in_(SETTLED),
            model_events.c.at >= since_utc,
            model_events.c.at <= until_utc,
        )
        .order_by(model_events.c.at, model_events.c.id)
    )
    return _frame(engine, query, list(EVENT_COLUMNS))
