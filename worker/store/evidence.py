"""What the model's life cycle reads as evidence: the service's own observed rides (to retrain on),
paired errors of challenger and production on the same rides (shadow scoring), and each version's
live accuracy and use (for `models`).

Only reads, and the one stored summary of a paired comparison (`shadow_comparisons`), which the
quality pass and `models --compare` write and every other reader shows. Every read of rides and outcomes
keeps only batches that count in production figures (worker/store/whatif.py: all of them, unless
WHATIF_BATCHES=exclude leaves what-if batches out).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, and_, func, select
from sqlalchemy.dialects import postgresql, sqlite

from worker.rides.generator import RIDE_COLUMNS
from worker.store.schema import (
    batch_metrics,
    batch_runs,
    daily_accuracy,
    ride_outcomes,
    ride_predictions,
    shadow_comparisons,
    shadow_predictions,
)
from worker.store.whatif import counts_in_production

OBSERVED_COLUMNS = (*RIDE_COLUMNS, "actual_duration", "known_at", "batch_id", "model_version")


def _frame(result: Iterable, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records([tuple(row) for row in result], columns=columns)


def known_at_column():
    """When an outcome became known to the service (UTC); loaded_at for rows from before known_at existed."""
    return func.coalesce(ride_outcomes.c.known_at, ride_outcomes.c.loaded_at)


def observed_rides(
    engine: Engine, start: datetime, end: datetime, limit: int | None = None, rides_from_local: datetime | None = None
) -> pd.DataFrame:
    """Rides predicted here whose true duration became known to the service in [start, end) (UTC):
    the raw model inputs, the truth (minutes), when it became known, and which batch and version
    scored the ride. `limit` keeps the most recently known; `rides_from_local` (Chicago local) keeps
    rides that started then or later (after a change in the world, say)."""
    known = known_at_column()
    conditions = [known >= start, known < end, counts_in_production(ride_predictions.c.batch_id)]
    if rides_from_local is not None:
        conditions.append(ride_predictions.c.trip_start_timestamp >= rides_from_local)
    query = (
        select(*(ride_predictions.c[c] for c in RIDE_COLUMNS), ride_outcomes.c.actual_duration, known)
        .add_columns(ride_predictions.c.batch_id, ride_predictions.c.model_version)
        .select_from(ride_predictions.join(ride_outcomes, ride_outcomes.c.trip_id == ride_predictions.c.trip_id))
        .where(*conditions)
        .order_by(known.desc(), ride_predictions.c.trip_id.desc())  # ties by trip id, as recent_errors
    )
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        frame = _frame(conn.execute(query), list(OBSERVED_COLUMNS))
    frame["trip_start_timestamp"] = pd.to_datetime(frame["trip_start_timestamp"])
    frame["known_at"] = pd.to_datetime(frame["known_at"], utc=True)
    return frame.iloc[::-1].reset_index(drop=True)


def count_observed(engine: Engine, start: datetime, end: datetime, rides_from_local: datetime | None = None) -> int:
    """How many outcomes observed_rides would find (uncapped)."""
    known = known_at_column()
    conditions = [known >= start, known < end, counts_in_production(ride_predictions.c.batch_id)]
    if rides_from_local is not None:
        conditions.append(ride_predictions.c.trip_start_timestamp >= rides_from_local)
    query = (
        select(func.count())
        .select_from(ride_outcomes.join(ride_predictions, ride_predictions.c.trip_id == ride_outcomes.c.trip_id))
        .where(*conditions)
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _paired(challenger: str, production: str, known_by_local: datetime, since: datetime | None):
    s, p, o = shadow_predictions.c, ride_predictions.c, ride_outcomes.c
    joined = shadow_predictions.join(ride_predictions, p.trip_id == s.trip_id).join(
        ride_outcomes, and_(o.trip_id == s.trip_id, o.observed_at <= known_by_local)
    )
    conditions = [s.model_version == challenger, p.model_version == production, counts_in_production(p.batch_id)]
    if since is not None:
        conditions.append(s.created_at >= since)
    production_error = func.abs(p.predicted_duration - o.actual_duration)
    challenger_error = func.abs(s.predicted_duration - o.actual_duration)
    return joined, conditions, production_error, challenger_error


def paired_sums(
    engine: Engine, challenger: str, production: str, known_by_local: datetime, since: datetime | None = None
) -> dict[str, Any]:
    """Sums over the rides both versions scored whose outcome was observed by `known_by_local`
    (Chicago local): n, the two absolute errors, the paired difference and its square."""
    joined, conditions, production_error, challenger_error = _paired(challenger, production, known_by_local, since)
    difference = challenger_error - production_error
    query = (
        select(
            func.count().label("n"),
            func.sum(production_error).label("production_error"),
            func.sum(challenger_error).label("challenger_error"),
            func.sum(difference).label("difference"),
            func.sum(difference * difference).label("difference_squared"),
            func.min(shadow_predictions.c.created_at).label("first_at"),
        )
        .select_from(joined)
        .where(*conditions)
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).mappings().one())


def paired_sample(
    engine: Engine,
    challenger: str,
    production: str,
    known_by_local: datetime,
    since: datetime | None = None,
    limit: int = 5_000,
) -> pd.DataFrame:
    """At most `limit` of those rides, drawn at random: both absolute errors (for the signed-rank check)."""
    joined, conditions, production_error, challenger_error = _paired(challenger, production, known_by_local, since)
    query = (
        select(production_error.label("production_error"), challenger_error.label("challenger_error"))
        .select_from(joined)
        .where(*conditions)
        .order_by(func.random())
        .limit(limit)
    )
    with engine.connect() as conn:
        return _frame(conn.execute(query), ["production_error", "challenger_error"])


def shadowed_versions(engine: Engine, since: datetime) -> list[tuple[str, str]]:
    """(production version, challenger version) pairs of batches that finished since `since` with a
    challenger pinned: the comparisons a quality pass keeps up to date."""
    query = (
        select(batch_runs.c.model_version, batch_runs.c.challenger_version)
        .where(batch_runs.c.challenger_version.is_not(None), batch_runs.c.finished_at >= since)
        .distinct()
    )
    with engine.connect() as conn:
        return [(str(p), str(c)) for p, c in conn.execute(query) if p is not None]


def save_comparison(engine: Engine, values: dict[str, Any]) -> None:
    with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(shadow_comparisons).values(**values, computed_at=func.now())
        keys = ["challenger_version", "production_version"]
        changes = {k: statement.excluded[k] for k in (*values, "computed_at") if k not in keys}
        conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))


def comparison(engine: Engine, challenger: str, production: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(shadow_comparisons).where(
                    shadow_comparisons.c.challenger_version == challenger,
                    shadow_comparisons.c.production_version == production,
                )
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def latest_comparison(engine: Engine, model_name: str) -> dict[str, Any] | None:
    """The most recently computed paired comparison of this model."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(shadow_comparisons)
                .where(shadow_comparisons.c.model_name == model_name)
                .order_by(shadow_comparisons.c.computed_at.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def version_accuracy(engine: Engine, since: datetime) -> dict[str, tuple[int, float | None]]:
    """Per model version: outcomes and their MAE over batches that finished since `since` (UTC), from
    the per-batch live accuracy monitoring already stores (an outcome-weighted mean)."""
    m = batch_metrics.c
    weighted = func.sum(m.mae * m.outcomes)
    outcomes = func.sum(m.outcomes)
    query = (
        select(m.model_version, outcomes, weighted)
        .select_from(batch_metrics.join(batch_runs, batch_runs.c.batch_id == m.batch_id))
        .where(batch_runs.c.finished_at >= since, m.outcomes > 0, m.mae.is_not(None), counts_in_production(m.batch_id))
        .group_by(m.model_version)
    )
    with engine.connect() as conn:
        return {
            str(version): (int(n or 0), float(total) / n if n else None)
            for version, n, total in conn.execute(query)
            if version is not None
        }


def version_use(engine: Engine) -> dict[str, tuple[int, int]]:
    """Per model version: succeeded batches it scored and the rows they wrote (all kept history)."""
    c = batch_runs.c
    query = (
        select(c.model_version, func.count(), func.coalesce(func.sum(c.rows_written), 0))
        .where(c.status == "succeeded", c.model_version.is_not(None))
        .group_by(c.model_version)
    )
    with engine.connect() as conn:
        return {str(version): (int(n), int(rows)) for version, n, rows in conn.execute(query)}


def shadow_failures(engine: Engine, since: datetime) -> int:
    """Batches finished since `since` whose challenger could not score them (or part of them)."""
    query = select(func.count()).where(batch_runs.c.finished_at >= since, batch_runs.c.shadow_error.is_not(None))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def recent_errors(
    engine: Engine, version: str, window: int, now: datetime, since: datetime | None = None
) -> dict[str, Any]:
    """Over the `window` outcomes of rides scored by `version` that became known to the service most
    recently by `now` (UTC; by `ride_outcomes.known_at`, the later of the trip's end and the outcome's
    arrival): how many, their MAE (minutes), and when the oldest of them became known. `since` bounds
    how far back to look (an index range, so a version that stopped serving costs nothing)."""
    o, p = ride_outcomes.c, ride_predictions.c
    conditions = [
        p.model_version == version,
        o.known_at <= now,
        o.known_at.is_not(None),
        counts_in_production(p.batch_id),
    ]
    if since is not None:
        conditions.append(o.known_at >= since)
    newest = (
        select(func.abs(p.predicted_duration - o.actual_duration).label("error"), o.known_at.label("known_at"))
        .select_from(ride_outcomes.join(ride_predictions, p.trip_id == o.trip_id))
        .where(*conditions)
        # Ties (a backfill's or a file's outcomes share one known_at) go by trip id: the same rides
        # whatever the join's order, so the alert, status, the report and the policy judge one window.
        .order_by(o.known_at.desc(), o.trip_id.desc())
        .limit(window)
        .subquery()
    )
    query = select(
        func.count().label("outcomes"),
        func.avg(newest.c.error).label("mae"),
        func.min(newest.c.known_at).label("oldest"),
    )
    with engine.connect() as conn:
        row = dict(conn.execute(query).mappings().one())
    row["mae"] = None if row["mae"] is None else float(row["mae"])
    return row


def stored_heldout_mae(engine: Engine, version: str) -> float | None:
    """The held-out MAE the newest quality pass stored for `version` (from its registry tag), for readers
    that must not wait on the registry: the report, and `status` when the registry is down."""
    a = daily_accuracy.c
    with engine.connect() as conn:
        return conn.execute(
            select(a.heldout_mae)
            .where(a.model_version == version, a.heldout_mae.is_not(None))
            .order_by(a.day.desc())
            .limit(1)
        ).scalar_one_or_none()


def batch_accuracy(engine: Engine, version: str, until_local: datetime, limit: int = 2000) -> pd.DataFrame:
    """Per batch scored by `version` whose rides ended their window by `until_local` (Chicago local):
    window start and end, outcomes and MAE as the quality pass stored them, newest window first."""
    m, r = batch_metrics.c, batch_runs.c
    query = (
        select(r.batch_id, r.window_start, r.window_end, m.rows, m.outcomes, m.mae)
        .select_from(batch_runs.join(batch_metrics, m.batch_id == r.batch_id))
        .where(
            r.model_version == version,
            r.window_end.is_not(None),
            r.window_end <= until_local,
            m.mae.is_not(None),
            counts_in_production(r.batch_id),
        )
        .order_by(r.window_end.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return _frame(conn.execute(query), ["batch_id", "window_start", "window_end", "rows", "outcomes", "mae"])


def rides_known_since(engine: Engine, rides_from_local: datetime, now: datetime) -> int:
    """Rides that started at or after `rides_from_local` (Chicago local) whose outcome was known before `now`
    (the same bound as retraining's window, which ends at `now`, excluded)."""
    o, p = ride_outcomes.c, ride_predictions.c
    query = (
        select(func.count())
        .select_from(ride_outcomes.join(ride_predictions, p.trip_id == o.trip_id))
        .where(p.trip_start_timestamp >= rides_from_local, known_at_column() < now, counts_in_production(p.batch_id))
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def outcomes_known(engine: Engine, version: str, now: datetime, since: datetime | None = None) -> int:
    """Outcomes of rides scored by `version` known to the service by `now` (all of them: uncapped)."""
    o, p = ride_outcomes.c, ride_predictions.c
    conditions = [p.model_version == version, o.known_at <= now, counts_in_production(p.batch_id)]
    if since is not None:
        conditions.append(o.known_at >= since)
    query = (
        select(func.count())
        .select_from(ride_outcomes.join(ride_predictions, p.trip_id == o.trip_id))
        .where(*conditions)
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
