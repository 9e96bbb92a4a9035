"""Monitoring one batch after its rows were committed: prediction summary, missing values, drift
against the reference of the version that scored it, and the clock hour the batch belongs to.

Plain functions over the database and a reference lookup, so the Celery task that calls them
stays thin and tests call them directly. Nothing here can touch the batch's own rows or status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine

from worker.monitor.drift import (
    TARGET,
    DatasetDrift,
    dataset_drift,
    missing_share,
    prediction_summary,
    reference_for_window,
)
from worker.rides.generator import CHICAGO, RIDE_COLUMNS
from worker.store import monitoring, writes
from worker.store.locks import window_lock
from worker.store.timelines import utc

log = logging.getLogger(__name__)

# (model name, version) -> the version's reference sample, or None if it has none.
ReferenceLookup = Callable[[str, str], pd.DataFrame | None]
WINDOW_MINUTES = 60


@dataclass(frozen=True)
class BatchReport:
    batch_id: str
    status: str  # ok, no_reference, or skipped (no such batch / not finished)
    rows: int
    drift: DatasetDrift | None
    window: tuple[datetime, str, str] | None = None  # a scheduled batch's slot, model name and version


def _drift_rows(found: DatasetDrift) -> list[dict]:
    return [
        {
            "column_name": c.column,
            "method": c.method,
            "score": c.score,
            "threshold": c.threshold,
            "drifted": c.drifted,
        }
        for c in found.columns
    ]


def monitor_batch(
    engine: Engine,
    batch_id: str,
    references: ReferenceLookup,
    known_at: datetime,
    sample_rows: int | None = None,
    window: bool = True,
) -> BatchReport:
    """Compute and store the batch's metrics; `known_at` (Chicago local) bounds which outcomes count.
    `window`: recompute the drift of the clock hour a scheduled batch belongs to (monitor_run does
    it once per hour for a run of batches instead).

    A batch of more than `sample_rows` rows is summarised and tested on a random sample of that
    many: reading every row of a 100,000-ride batch took 0.6 s of a core, which the next
    batch on a small worker then waited for, and the tests' verdicts do not need them all.
    `rows` stays the batch's full count (live accuracy compares it with the outcomes in).
    """
    run = writes.get_batch(engine, batch_id)
    if run is None or run["status"] != "succeeded":
        return BatchReport(batch_id, "skipped", 0, None)
    rows = monitoring.batch_rows(engine, batch_id, known_at, sample=sample_rows)
    total = len(rows)
    if sample_rows is not None and total >= sample_rows:
        total = monitoring.batch_row_count(engine, batch_id)
    report, values, drift = measure_batch(run, rows, total, references)
    monitoring.save_batch_metrics(engine, values, drift)
    if report.window is not None and window:
        monitor_window(engine, *report.window, references, sample_rows)
    return report


def measure_batch(
    run: dict, rows: pd.DataFrame, total: int, references: ReferenceLookup
) -> tuple[BatchReport, dict, list[dict]]:
    """What monitoring stores of one batch (its batch_metrics values and column drift rows), from its
    row in batch_runs and its rows (or a sample of them; `total` counts them all)."""
    values = {
        "batch_id": run["batch_id"],
        "model_version": run["model_version"],
        "window_start": run["window_start"],
        "window_end": run["window_end"],
        "rows": total,
        **prediction_summary(rows["predicted_duration"]),
        "missing_share": missing_share(rows, RIDE_COLUMNS),
        "monitor_error": None,
    }
    reference = references(run["model_name"], run["model_version"]) if run["model_version"] else None
    if reference is None or rows.empty:
        status = "no_reference" if reference is None else "ok"
        values |= {
            "monitor_status": status,
            "reference": "none" if reference is None else "",
            "columns_checked": None,
            "drifted_columns": None,
            "dataset_drift": None,
        }
        return BatchReport(run["batch_id"], status, total, None), values, []
    compared, label = reference_for_window(reference, run["window_start"], run["window_end"])
    if rows[TARGET].isna().any():  # target drift only on complete outcomes (see quality.update_batch)
        rows = rows.drop(columns=TARGET)
    found = dataset_drift(compared, rows)
    values |= {
        "monitor_status": "ok",
        "reference": label,
        "columns_checked": found.counted,
        "drifted_columns": found.drifted,
        "dataset_drift": found.dataset_drift,
    }
    scheduled = run["trigger"] == "schedule" and run["slot"] is not None
    window = (run["slot"], run["model_name"], run["model_version"]) if scheduled else None
    return BatchReport(run["batch_id"], "ok", total, found, window), values, _drift_rows(found)


def monitor_run(
    engine: Engine,
    batch_ids: list[str],
    references: ReferenceLookup,
    known_at: datetime,
    sample_rows: int | None = None,
    failed: Callable[[str, Exception], None] | None = None,
) -> list[BatchReport]:
    """Monitor a run of batches (a backfill's hour of slots): each batch as monitor_batch does, then
    each clock hour they fall in once, after all of them. One by one, every batch recomputed its hour
    from all the hour's rows so far (twelve slots read the hour 78 batches' worth), and each batch
    cost three reads and a transaction of its own; here the run's rows are read in one query and its
    metrics stored in one transaction. A batch of `sample_rows` or more rows is monitored on its own
    (its sample drawn by the database). `failed` is told of a batch whose measuring raised, and the
    others go on; without it the error is raised."""
    runs = [run for run in writes.get_batches(engine, batch_ids) if run["status"] == "succeeded"]
    reports = [BatchReport(b, "skipped", 0, None) for b in set(batch_ids) - {run["batch_id"] for run in runs}]
    big = [run for run in runs if sample_rows is not None and run["rows_written"] >= sample_rows]
    small = [run for run in runs if run not in big]
    frames = monitoring.runs_rows(engine, [run["batch_id"] for run in small], known_at)
    measured = []
    for run in small:
        try:
            rows = frames.get(run["batch_id"], monitoring.empty_rows())
            report, values, drift = measure_batch(run, rows, len(rows), references)
        except Exception as exc:
            if failed is None:
                raise
            failed(run["batch_id"], exc)
            continue
        reports.append(report)
        measured.append((values, drift))
    monitoring.save_batches_metrics(engine, measured)
    for run in big:
        try:
            reports.append(monitor_batch(engine, run["batch_id"], references, known_at, sample_rows, window=False))
        except Exception as exc:
            if failed is None:
                raise
            failed(run["batch_id"], exc)
    hours = {(hour_of(report.window[0]), *report.window[1:]): report.window for report in reports if report.window}
    for slot, name, version in hours.values():
        monitor_window(engine, slot, name, version, references, sample_rows)
    return reports


def hour_of(slot: datetime) -> tuple[datetime, datetime]:
    """The clock hour (start, end], as UTC instants, that a slot (the instant its window ends) belongs to.

    Chicago's offsets are whole hours, so its clock hours are UTC hours: keyed by instants, the two
    01:00-02:00 hours of November's change are two windows and March's missing hour none."""
    moment = utc(slot)
    end = moment.replace(minute=0, second=0, microsecond=0)
    if end < moment:
        end += timedelta(hours=1)
    return end - timedelta(minutes=WINDOW_MINUTES), end


def chicago_wall_time(instant: datetime) -> datetime:
    """A UTC instant as the naive Chicago time rides and references are expressed in."""
    return utc(instant).astimezone(CHICAGO).replace(tzinfo=None)


def monitor_window(
    engine: Engine,
    slot: datetime,
    model_name: str,
    model_version: str,
    references: ReferenceLookup,
    sample_rows: int | None = None,
) -> DatasetDrift | None:
    """Recompute the drift of the clock hour holding `slot` (its scheduled batches of one version
    so far; ad-hoc batches are one-offs and stay out of the schedule's windows), on at most
    `sample_rows` of its rides. One monitor at a time per window: the read and the write happen under
    the window's lock, so monitors of one hour's batches running together (a backfill) cannot leave
    it computed from a subset of them."""
    start, end = hour_of(slot)
    reference = references(model_name, model_version)
    if reference is None:
        return None
    with window_lock(engine, f"window:{end.isoformat()}:{WINDOW_MINUTES}:{model_version}"):
        return _recompute_window(engine, start, end, model_version, reference, sample_rows)


def _recompute_window(
    engine: Engine, start: datetime, end: datetime, model_version: str, reference, sample_rows: int | None
) -> DatasetDrift | None:
    rows, batches = monitoring.window_rows(engine, start, end, model_version, sample=sample_rows)
    if rows.empty:
        return None
    compared, label = reference_for_window(reference, chicago_wall_time(start), chicago_wall_time(end))
    found = dataset_drift(compared, rows)
    monitoring.save_window(
        engine,
        {
            "window_end": end,
            "window_minutes": WINDOW_MINUTES,
            "model_version": model_version,
            "window_start": start,
            "batches": batches,
            "rows": monitoring.window_row_count(engine, start, end, model_version)
            if sample_rows and len(rows) >= sample_rows
            else len(rows),
            "columns_checked": found.counted,
            "drifted_columns": found.drifted,
            "dataset_drift": found.dataset_drift,
            "reference": label,
        },
        _drift_rows(found),
    )
    return found


def record_failure(engine: Engine, batch_id: str, status: str, error: str) -> None:
    """Monitoring failed (`failed`) or waits for the registry (`waiting`): say so on the batch's
    metrics row, never on the batch itself, which stays succeeded."""
    run = writes.get_batch(engine, batch_id)
    monitoring.save_batch_metrics(
        engine,
        {
            "batch_id": batch_id,
            "model_version": run["model_version"] if run else None,
            "window_start": run["window_start"] if run else None,
            "window_end": run["window_end"] if run else None,
            "rows": run["rows_written"] if run else 0,
            "monitor_status": status,
            "monitor_error": writes.stored_error(error),
        },
    )
