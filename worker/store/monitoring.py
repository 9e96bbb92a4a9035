"""Reading what monitoring needs and writing what it found, in the monitoring tables.

Every write is an upsert keyed by batch (or window and version, or day and
version), so monitoring a batch again, or a quality pass that runs twice,
replaces its rows instead of adding to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.rides.generator import CHICAGO, RIDE_COLUMNS
from worker.store.schema import (
    batch_metrics,
    batch_runs,
    column_drift,
    daily_accuracy,
    ride_outcomes,
    ride_predictions,
    window_column_drift,
    window_metrics,
)
from worker.store.whatif import counts_in_production
from worker.store.writes import PRUNING

# What monitoring reads back (not trip_id: nothing downstream needs it, and building a UUID object
# per row took about 0.4 s per 100,000 rows, more than the drift tests).
BATCH_ROW_COLUMNS = (*RIDE_COLUMNS, "predicted_duration", "model_name", "model_version")
# "The last hour" of the exporter's counts, of the alerts on them and of the report's current
# warnings: a batch's drift is current for an hour after it was monitored.
RECENT = timedelta(hours=1)


def _upsert(conn: Connection, table, values: dict[str, Any], keys: list[str]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    changes = {k: statement.excluded[k] for k in values if k not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))


def _kept(conn: Connection, batch_ids: list[str]) -> set[str]:
    """Those of these batches still recorded and not claimed by a prune, held so until the transaction
    ends (on PostgreSQL): a prune's claim then waits for what is stored of them, and deletes it. A row
    stored for a batch that is gone, or that the prune had claimed, would outlive it for good: no
    later prune looks for rows of a batch it no longer has. FOR KEY SHARE is the weakest lock the
    claim (FOR UPDATE) and the delete wait for; a chunk write's update of the row does not, so an
    outcome load never holds up a batch still being written (FOR SHARE did, past its lock timeout)."""
    query = (
        select(batch_runs.c.batch_id)
        .where(batch_runs.c.batch_id.in_(batch_ids), batch_runs.c.status != PRUNING)
        .order_by(batch_runs.c.batch_id)  # one order of row locks for every locker of several
        .with_for_update(read=True, key_share=True)
    )
    return set(conn.execute(query).scalars())


def _frame(result: Iterable, columns: list[str]) -> pd.DataFrame:
    """Plain tuples: pandas probes each SQLAlchemy Row for namedtuple fields (a raised and caught
    KeyError per row), which made reading a 100,000-row batch about three times slower."""
    return pd.DataFrame.from_records([tuple(row) for row in result], columns=columns)


def batch_rows(engine: Engine, batch_id: str, known_at: datetime, sample: int | None = None) -> pd.DataFrame:
    """The batch's predictions, with the true duration of those whose outcome was observed by `known_at`;
    with `sample`, at most that many, drawn at random (the database picks them, so only they travel)."""
    # Sample first, then look up only the sampled rides' outcomes (by primary key).
    chosen = select(ride_predictions.c.trip_id, *(ride_predictions.c[c] for c in BATCH_ROW_COLUMNS)).where(
        ride_predictions.c.batch_id == batch_id
    )
    if sample is not None:
        chosen = chosen.order_by(func.random()).limit(sample)
    chosen = chosen.subquery()
    observed = and_(ride_outcomes.c.trip_id == chosen.c.trip_id, ride_outcomes.c.observed_at <= known_at)
    query = select(*(chosen.c[c] for c in BATCH_ROW_COLUMNS), ride_outcomes.c.actual_duration).select_from(
        chosen.outerjoin(ride_outcomes, observed)
    )
    with engine.connect() as conn:
        return _frame(conn.execute(query), [*BATCH_ROW_COLUMNS, "actual_duration"])


def runs_rows(engine: Engine, batch_ids: list[str], known_at: datetime) -> dict[str, pd.DataFrame]:
    """batch_rows of several small batches (a run of slots, each below the sample size) in one
    query: every row of each, by batch id."""
    if not batch_ids:
        return {}
    observed = and_(ride_outcomes.c.trip_id == ride_predictions.c.trip_id, ride_outcomes.c.observed_at <= known_at)
    query = (
        select(
            ride_predictions.c.batch_id,
            *(ride_predictions.c[c] for c in BATCH_ROW_COLUMNS),
            ride_outcomes.c.actual_duration,
        )
        .select_from(ride_predictions.outerjoin(ride_outcomes, observed))
        .where(ride_predictions.c.batch_id.in_(batch_ids))
    )
    with engine.connect() as conn:
        frame = _frame(conn.execute(query), ["batch_id", *BATCH_ROW_COLUMNS, "actual_duration"])
    return {
        batch_id: rows.drop(columns="batch_id").reset_index(drop=True)
        for batch_id, rows in frame.groupby("batch_id", sort=False)
    }


def empty_rows() -> pd.DataFrame:
    """A batch without rows, as batch_rows reads it."""
    return pd.DataFrame(columns=[*BATCH_ROW_COLUMNS, "actual_duration"])


def batch_row_count(engine: Engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(ride_predictions).where(ride_predictions.c.batch_id == batch_id)
        ).scalar_one()


def _window_batches(start: datetime, end: datetime, model_version: str):
    """Scheduled batches of one version that count in production figures (a what-if backfill of the
    hour's slots stays out with WHATIF_BATCHES=exclude) whose slot (the UTC instant their window ends)
    lies in (start, end]: by the instant, not the Chicago wall time, which repeats each November."""
    return select(batch_runs.c.batch_id).where(
        batch_runs.c.trigger == "schedule",
        batch_runs.c.slot > start,
        batch_runs.c.slot <= end,
        batch_runs.c.status == "succeeded",
        batch_runs.c.model_version == model_version,
        counts_in_production(batch_runs.c.batch_id),
    )


def window_rows(
    engine: Engine, start: datetime, end: datetime, model_version: str, sample: int | None = None
) -> tuple[pd.DataFrame, int]:
    """Predictions of the scheduled batches whose slot is in (start, end] (UTC), scored by one version
    (at most `sample` of them, drawn at random by the database), and how many batches that is."""
    with engine.connect() as conn:
        ids = list(conn.execute(_window_batches(start, end, model_version)).scalars())
        if not ids:
            return pd.DataFrame(columns=list(BATCH_ROW_COLUMNS)), 0
        query = select(*(ride_predictions.c[c] for c in BATCH_ROW_COLUMNS)).where(ride_predictions.c.batch_id.in_(ids))
        if sample is not None:
            query = query.order_by(func.random()).limit(sample)
        return _frame(conn.execute(query), list(BATCH_ROW_COLUMNS)), len(ids)


def window_row_count(engine: Engine, start: datetime, end: datetime, model_version: str) -> int:
    batches = _window_batches(start, end, model_version).subquery()
    query = select(func.coalesce(func.sum(batch_runs.c.rows_written), 0)).where(
        batch_runs.c.batch_id.in_(select(batches.c.batch_id))
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def save_batch_metrics(engine: Engine, values: dict[str, Any], drift: Iterable[dict[str, Any]] = ()) -> None:
    """One batch's metrics and its per-column drift, replacing what an earlier pass stored."""
    save_batches_metrics(engine, [(values, drift)])


def save_batches_metrics(engine: Engine, measured: list[tuple[dict[str, Any], Iterable[dict[str, Any]]]]) -> None:
    """save_batch_metrics of several batches in one transaction."""
    if not measured:
        return
    with engine.begin() as conn:
        kept = _kept(conn, [values["batch_id"] for values, _ in measured])
        measured = [(values, drift) for values, drift in measured if values["batch_id"] in kept]
        for values, _ in measured:
            _upsert(conn, batch_metrics, {**values, "monitored_at": func.now()}, ["batch_id"])
        ids = [values["batch_id"] for values, _ in measured]
        conn.execute(delete(column_drift).where(column_drift.c.batch_id.in_(ids)))
        rows = [{"batch_id": values["batch_id"], **row} for values, drift in measured for row in drift]
        if rows:
            conn.execute(column_drift.insert(), rows)


def save_target_drift(engine: Engine, batch_id: str, row: dict[str, Any]) -> None:
    with engine.begin() as conn:
        if batch_id in _kept(conn, [batch_id]):
            _upsert(conn, column_drift, {"batch_id": batch_id, **row}, ["batch_id", "column_name"])


def save_window(engine: Engine, values: dict[str, Any], drift: Iterable[dict[str, Any]]) -> None:
    keys = {k: values[k] for k in ("window_end", "window_minutes", "model_version")}
    with engine.begin() as conn:
        _upsert(conn, window_metrics, {**values, "computed_at": func.now()}, list(keys))
        conn.execute(delete(window_column_drift).where(*(window_column_drift.c[k] == v for k, v in keys.items())))
        rows = [{**keys, **row} for row in drift]
        if rows:
            conn.execute(window_column_drift.insert(), rows)


def get_batch_metrics(engine: Engine, batch_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(batch_metrics).where(batch_metrics.c.batch_id == batch_id)).mappings().first()
    return dict(row) if row else None


def unmonitored_batches(
    engine: Engine, finished_after: datetime, finished_before: datetime, limit: int = 50
) -> list[str]:
    """Recent succeeded batches with no metrics (their monitoring message was lost), or still waiting
    for the registry, newest first. Older ones (e.g. from before monitoring existed) stay as they are."""
    query = (
        select(batch_runs.c.batch_id)
        .select_from(batch_runs.outerjoin(batch_metrics, batch_metrics.c.batch_id == batch_runs.c.batch_id))
        .where(
            batch_runs.c.status == "succeeded",
            batch_runs.c.finished_at >= finished_after,
            batch_runs.c.finished_at < finished_before,
            batch_metrics.c.batch_id.is_(None)
            | ((batch_metrics.c.monitor_status == "waiting") & (batch_metrics.c.monitored_at < finished_before)),
        )
        .order_by(batch_runs.c.finished_at.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def batches_awaiting_outcomes(engine: Engine, monitored_since: datetime) -> list[str]:
    """Monitored batches whose outcomes are not all known yet (or never counted), and those with all
    outcomes in whose target drift is still to be computed (the registry was down)."""
    target = (
        select(column_drift.c.batch_id)
        .where(column_drift.c.batch_id == batch_metrics.c.batch_id, column_drift.c.column_name == "actual_duration")
        .exists()
    )
    query = select(batch_metrics.c.batch_id).where(
        batch_metrics.c.monitored_at >= monitored_since,
        batch_metrics.c.rows > 0,
        (batch_metrics.c.outcomes.is_(None))
        | (batch_metrics.c.outcomes < batch_metrics.c.rows)
        | ((batch_metrics.c.monitor_status == "ok") & ~target),
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def batches_of_trips(engine: Engine, trip_ids: list[str]) -> list[str]:
    """The batches that predicted these trips (for outcomes loaded from a file)."""
    found: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(trip_ids), 5000):
            part = trip_ids[i : i + 5000]
            query = select(ride_predictions.c.batch_id).where(ride_predictions.c.trip_id.in_(part)).distinct()
            found.update(conn.execute(query).scalars())
    return sorted(found)


def batch_quality(engine: Engine, batch_id: str, known_at: datetime) -> dict[str, Any]:
    """Outcomes observed by `known_at`, and MAE, mean squared error and bias (minutes) over them."""
    error = ride_predictions.c.predicted_duration - ride_outcomes.c.actual_duration
    query = (
        select(
            func.count().label("outcomes"),
            func.avg(func.abs(error)).label("mae"),
            func.avg(error * error).label("mse"),
            func.avg(error).label("bias"),
        )
        .select_from(ride_predictions.join(ride_outcomes, ride_outcomes.c.trip_id == ride_predictions.c.trip_id))
        .where(ride_predictions.c.batch_id == batch_id, ride_outcomes.c.observed_at <= known_at)
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).mappings().one())


def save_batch_quality(engine: Engine, batch_id: str, values: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(batch_metrics).where(batch_metrics.c.batch_id == batch_id).values(**values, quality_at=func.now())
        )


def day_outcomes(engine: Engine, day: date, known_at: datetime) -> pd.DataFrame:
    """Predicted and actual minutes, with the version, of every trip that started on this
    Chicago-local day and whose outcome was observed by `known_at`."""
    start = datetime(day.year, day.month, day.day)
    end = start + pd.Timedelta(days=1)
    query = (
        select(
            ride_predictions.c.model_name,
            ride_predictions.c.model_version,
            ride_predictions.c.predicted_duration,
            ride_outcomes.c.actual_duration,
        )
        .select_from(ride_predictions.join(ride_outcomes, ride_outcomes.c.trip_id == ride_predictions.c.trip_id))
        .where(
            and_(
                ride_predictions.c.trip_start_timestamp >= start,
                ride_predictions.c.trip_start_timestamp < end,
                ride_outcomes.c.observed_at <= known_at,
                counts_in_production(ride_predictions.c.batch_id),
            )
        )
    )
    with engine.connect() as conn:
        return pd.DataFrame(
            conn.execute(query).mappings().all(),
            columns=["model_name", "model_version", "predicted_duration", "actual_duration"],
        )


def days_of_batches(engine: Engine, batch_ids: list[str]) -> list[date]:
    """The Chicago-local days on which these batches' trips started (the days there are, not every day
    from the first to the last: a file of trips from 2013 to 2026 has hundreds, not thousands)."""
    found: set[date] = set()
    day = func.date(ride_predictions.c.trip_start_timestamp)
    with engine.connect() as conn:
        for i in range(0, len(batch_ids), 500):
            part = batch_ids[i : i + 500]
            query = select(day).where(ride_predictions.c.batch_id.in_(part)).distinct()
            for (value,) in conn.execute(query):
                if value is not None:
                    found.add(value if isinstance(value, date) else date.fromisoformat(str(value)))
    return sorted(found)


def save_daily_accuracy(engine: Engine, values: dict[str, Any]) -> None:
    with engine.begin() as conn:
        _upsert(conn, daily_accuracy, {**values, "updated_at": func.now()}, ["day", "model_version"])


def known_at(observed_at: pd.Series, now: datetime | None = None) -> pd.Series:
    """When the service could first know an outcome (UTC): the later of the trip's end (Chicago local,
    as stored) and now, its arrival (a backfilled slot's outcomes are new to the service today)."""
    ended = (
        pd.Series(pd.to_datetime(observed_at).to_numpy())
        .dt.tz_localize(CHICAGO, ambiguous=np.ones(len(observed_at), dtype=bool), nonexistent="shift_forward")
        .dt.tz_convert(UTC)
    )
    arrived = pd.Timestamp(now or datetime.now(UTC)).tz_convert(UTC)
    return ended.where(ended > arrived, arrived)


def load_outcomes(engine: Engine, outcomes: pd.DataFrame, now: datetime | None = None) -> dict[str, Any]:
    """Store real outcomes (trip_id as hex, actual_duration in minutes) of trips predicted here, in
    one transaction. observed_at is the trip's start + duration, known_at the later of its end and
    `now` (the arrival; it was left empty, and the rolling live accuracy, its alert and the policy,
    which read by known_at, never saw a file's outcomes). Known outcomes are kept as they
    are, so loading a file twice changes nothing; unknown trip ids are counted, not stored, and so
    are those of a batch a prune is deleting. Known outcomes the file gives another duration for are
    counted apart (`disagreeing`: (trip id, stored minutes, the file's minutes), the first few): an
    outcome is not corrected, so a person should hear of it."""
    counts: dict[str, Any] = {"written": 0, "already_known": 0, "unknown": 0, "trip_ids": []}
    counts.update(disagreeing_count=0, disagreeing=[])
    with engine.begin() as conn:
        found: dict[str, tuple[datetime, str]] = {}  # trip id: its start and its batch
        for i in range(0, len(outcomes), 5000):
            ids = list(outcomes["trip_id"].iloc[i : i + 5000])
            query = select(
                ride_predictions.c.trip_id, ride_predictions.c.trip_start_timestamp, ride_predictions.c.batch_id
            ).where(ride_predictions.c.trip_id.in_(ids))
            for trip_id, start, batch_id in conn.execute(query):
                found[str(trip_id).replace("-", "")] = (start, batch_id)
        # Their batches held until the outcomes commit (all at once, in one order: no deadlock with a
        # prune's claim): a prune claims them only after, and its deletes then see these outcomes.
        kept = _kept(conn, sorted({batch_id for _, batch_id in found.values()})) if found else set()
        known = outcomes[outcomes["trip_id"].isin({t for t, (_, batch_id) in found.items() if batch_id in kept})]
        counts["unknown"] = len(outcomes) - len(known)
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        # RETURNING gives the rows really inserted; an executemany's rowcount is not reliable.
        statement = (
            dialect.insert(ride_outcomes)
            .on_conflict_do_nothing(index_elements=["trip_id"])
            .returning(ride_outcomes.c.trip_id)
        )
        arrived = now or datetime.now(UTC)
        for i in range(0, len(known), 5000):
            part = known.iloc[i : i + 5000]
            observed = [
                found[trip_id][0] + pd.Timedelta(minutes=float(minutes)).to_pytimedelta()
                for trip_id, minutes in zip(part["trip_id"], part["actual_duration"], strict=True)
            ]
            known_times = known_at(pd.Series(observed), now=arrived)
            rows = [
                {
                    "trip_id": trip_id,
                    "actual_duration": float(minutes),
                    "observed_at": ended,
                    "source": "file",
                    "known_at": when.to_pydatetime(),
                }
                for trip_id, minutes, ended, when in zip(
                    part["trip_id"], part["actual_duration"], observed, known_times, strict=True
                )
            ]
            inserted = {str(trip_id).replace("-", "") for (trip_id,) in conn.execute(statement, rows).all()}
            counts["written"] += len(inserted)
            counts["already_known"] += len(rows) - len(inserted)
            counts["trip_ids"].extend(part["trip_id"])
            given = {row["trip_id"]: row["actual_duration"] for row in rows if row["trip_id"] not in inserted}
            if given:
                stored = conn.execute(
                    select(ride_outcomes.c.trip_id, ride_outcomes.c.actual_duration).where(
                        ride_outcomes.c.trip_id.in_(list(given))
                    )
                )
                before = {str(trip_id).replace("-", ""): float(minutes) for trip_id, minutes in stored}
                for trip, minutes in given.items():  # in the file's order
                    if trip in before and abs(before[trip] - minutes) > 1e-9:  # seconds / 60 both times
                        counts["disagreeing_count"] += 1
                        if len(counts["disagreeing"]) < 3:
                            counts["disagreeing"].append((trip, before[trip], minutes))
    return counts


def newest_drift_verdict(conn: Connection, failures_too: bool = False):
    """The newest monitored batch whose drift was tested (counted in production figures): the one
    verdict `status`, the exporter and its alerts show. A batch of no rows is monitored but tests
    nothing (status printed "None of None columns drifted" for it, the exporter the batch before);
    with `failures_too`, a batch whose monitoring failed counts as newest too (status shows why)."""
    m = batch_metrics.c
    tested = and_(m.monitor_status == "ok", m.dataset_drift.is_not(None))
    shown = or_(m.monitor_status != "ok", tested) if failures_too else tested
    query = select(batch_metrics).where(shown, counts_in_production(m.batch_id))
    return conn.execute(query.order_by(m.monitored_at.desc(), m.batch_id.desc()).limit(1)).mappings().first()


@dataclass(frozen=True)
class DriftedBatch:
    """A batch whose dataset drifted, as the report lists it."""

    batch_id: str
    window_end: datetime | None  # Chicago local, as batch_metrics keeps it; None for a file or ad-hoc batch
    monitored_at: datetime
    rows: int
    drifted_columns: int
    columns_checked: int
    columns: tuple[str, ...]  # the drifted ones, by name (the target too, if it drifted)


@dataclass(frozen=True)
class RecentDrift:
    """The batches monitored in the last RECENT, counted in production figures: how many by monitor
    status, how many of the tested ones drifted, and the newest few of those."""

    monitored: dict[str, int]
    drifted: int
    newest: tuple[DriftedBatch, ...] = ()

    @property
    def tested(self) -> int:
        return self.monitored.get("ok", 0)


def recent_drift(conn: Connection, now: datetime, shown: int = 0) -> RecentDrift:
    """The one count of current batch drift, for the exporter (TaxiDatasetDrift's
    taxi_drifted_batches_last_hour) and the report's warning alike. It goes by when a batch was
    monitored, not by its rides' window: a backfill of old slots that drifted is news now."""
    m = batch_metrics.c
    recent = and_(m.monitored_at >= now - RECENT, counts_in_production(m.batch_id))
    monitored = dict(
        conn.execute(select(m.monitor_status, func.count()).where(recent).group_by(m.monitor_status)).all()
    )
    drifted = and_(recent, m.monitor_status == "ok", m.dataset_drift.is_(True))
    count = conn.execute(select(func.count()).where(drifted)).scalar_one()
    if not shown or not count:
        return RecentDrift(monitored, count)
    rows = conn.execute(
        select(m.batch_id, m.window_end, m.monitored_at, m.rows, m.drifted_columns, m.columns_checked)
        .where(drifted)
        .order_by(m.monitored_at.desc(), m.batch_id.desc())
        .limit(shown)
    ).all()
    d = column_drift.c
    names: dict[str, list[str]] = {}
    for batch_id, column in conn.execute(
        select(d.batch_id, d.column_name)
        .where(d.batch_id.in_([row.batch_id for row in rows]), d.drifted.is_(True))
        .order_by(d.column_name)
    ):
        names.setdefault(batch_id, []).append(column)
    newest = tuple(
        DriftedBatch(
            row.batch_id,
            row.window_end,
            row.monitored_at,
            int(row.rows or 0),
            int(row.drifted_columns or 0),
            int(row.columns_checked or 0),
            tuple(names.get(row.batch_id, ())),
        )
        for row in rows
    )
    return RecentDrift(monitored, count, newest)


def latest_summary(engine: Engine, now: datetime | None = None) -> dict[str, Any]:
    """For `status`: the last monitored batch's drift, and the latest live accuracy with its version (of
    batches that count in production figures). Its day of accuracy is today's or yesterday's (Chicago),
    the days the exporter shows: the newest day on record could be a one-ride day of a file from 2014."""
    today = (now or datetime.now(UTC)).astimezone(CHICAGO).date()
    counted = counts_in_production(batch_metrics.c.batch_id)
    with engine.connect() as conn:
        last = newest_drift_verdict(conn, failures_too=True)
        scored = (
            conn.execute(
                select(batch_metrics)
                .where(batch_metrics.c.mae.is_not(None), counted)
                .order_by(batch_metrics.c.window_end.desc().nulls_last(), batch_metrics.c.quality_at.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        day = (
            conn.execute(
                select(daily_accuracy)
                .where(daily_accuracy.c.day >= today - timedelta(days=1))
                .order_by(daily_accuracy.c.day.desc(), daily_accuracy.c.outcomes.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return {
        "last_batch": None
        if last is None
        else {
            "batch_id": last["batch_id"],
            "monitor_status": last["monitor_status"],
            "dataset_drift": last["dataset_drift"],
            "drifted_columns": last["drifted_columns"],
            "columns_checked": last["columns_checked"],
            "reference": last["reference"],
            "error": last["monitor_error"],
        },
        "live_mae": None
        if scored is None
        else {
            "batch_id": scored["batch_id"],
            "model_version": scored["model_version"],
            "mae": scored["mae"],
            "outcomes": scored["outcomes"],
        },
        "daily": None
        if day is None
        else {
            "day": day["day"].isoformat(),
            "model_version": day["model_version"],
            "mae": day["mae"],
            "heldout_mae": day["heldout_mae"],
            "baseline_mae": day["baseline_mae"],
            "outcomes": day["outcomes"],
        },
    }
