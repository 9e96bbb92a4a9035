"""What the Prometheus exporter reads from the database on every scrape, as plain data.

Prometheus asks every few seconds, so every read here is small: a handful of
aggregates over `batch_runs` (hundreds of rows a day) and the newest rows of the
monitoring tables, all on indexed columns. None of them touches
`ride_predictions`. The exporter gives them an engine whose connections and
statements time out (`scrape_engine`), so a hung database makes a scrape report
"database down" instead of hanging it.

Counts over time are windows ("finished in the last hour"), not totals since the
start: batches get pruned (retention), and a total that shrinks would look to
Prometheus like a counter reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import make_url

from worker.rides.generator import CHICAGO
from worker.store.database import NO_JIT
from worker.store.history import attempt_started, missed_in_last_day, refusals
from worker.store.monitoring import RECENT, newest_drift_verdict, recent_drift
from worker.store.schema import (
    batch_runs,
    column_drift,
    daily_accuracy,
    model_aliases,
    model_events,
    model_policy,
    shadow_comparisons,
    window_column_drift,
    window_metrics,
)
from worker.store.timelines import utc as as_utc

TRIGGERS = ("schedule", "adhoc", "file")
FINISHED = ("succeeded", "failed")
UNFINISHED = ("running", "retrying")
MONITOR_STATUSES = ("ok", "no_reference", "waiting", "failed")
HOUR_WINDOW_MINUTES = 60
MISSED_SLOTS_LOOKBACK = timedelta(days=1)


def scrape_engine(url: str, timeout_seconds: float) -> Engine:
    """An engine whose connect and every statement give up after `timeout_seconds`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return create_engine(url, connect_args={"timeout": timeout_seconds})
    millis = max(1, int(timeout_seconds * 1000))
    return create_engine(
        url,
        pool_size=1,
        max_overflow=1,
        pool_pre_ping=True,
        pool_recycle=600,
        connect_args={
            "connect_timeout": max(1, round(timeout_seconds)),
            "options": f"-c statement_timeout={millis} -c lock_timeout={millis} {NO_JIT}",
            "application_name": "taxi-exporter",
        },
    )


@dataclass
class BatchState:
    """The schedule's health: when batches last succeeded or failed, and what is in flight."""

    last_success: dict[str, datetime] = field(default_factory=dict)  # by trigger
    last_slot: datetime | None = None  # the newest slot beat itself sent whose batch succeeded
    last_failure: dict[str, datetime] = field(default_factory=dict)
    last_rows: dict[str, int] = field(default_factory=dict)  # of the newest succeeded batch, by trigger
    last_duration_seconds: dict[str, float] = field(default_factory=dict)
    finished_last_hour: dict[tuple[str, str], int] = field(default_factory=dict)  # (status, trigger)
    rows_last_hour: dict[str, int] = field(default_factory=dict)  # by trigger
    unfinished: dict[str, int] = field(default_factory=dict)  # running, retrying
    missed_slots_last_day: int = 0
    refused_slots_last_day: int = 0  # among the missed: a worker refused or dropped their message


@dataclass
class ColumnDrift:
    column: str
    method: str
    score: float | None
    threshold: float
    drifted: bool


@dataclass
class DriftState:
    """Drift of the newest monitored batch, how many batches drifted lately, the newest hour window."""

    monitored_last_hour: dict[str, int] = field(default_factory=dict)  # by monitor_status
    drifted_last_hour: int = 0
    last_batch_monitored_at: datetime | None = None
    last_batch_dataset_drift: bool | None = None
    last_batch_drifted_columns: int | None = None
    last_batch_columns_checked: int | None = None
    last_batch_columns: list[ColumnDrift] = field(default_factory=list)
    hour_window_end: datetime | None = None  # UTC
    hour_window_dataset_drift: bool | None = None
    hour_window_drifted_columns: int | None = None
    hour_window_prediction_drift: bool | None = None


@dataclass
class VersionAccuracy:
    """One model version's live accuracy on its newest Chicago day, beside what it promised."""

    model_version: str
    day: date
    outcomes: int
    mae_minutes: float
    heldout_mae_minutes: float | None
    baseline_mae_minutes: float | None


def read_batches(engine: Engine, now: datetime, interval_seconds: float) -> BatchState:
    state = BatchState()
    since = now - RECENT
    c = batch_runs.c
    with engine.connect() as conn:
        # The newest finished batch of each trigger and status, read backwards along the finished_at
        # index: it costs the same on the 90th day as on the first (a max() per group read every
        # succeeded batch ever kept: 11 ms a scrape on 90 days of slots, growing with history).
        for trigger in TRIGGERS:
            for status, target in (("succeeded", state.last_success), ("failed", state.last_failure)):
                newest = conn.execute(
                    select(c.rows_written, attempt_started().label("started_at"), c.finished_at)
                    .where(c.trigger == trigger, c.status == status, c.finished_at.is_not(None))
                    .order_by(c.finished_at.desc())
                    .limit(1)
                ).first()
                if newest is None:
                    continue
                target[trigger] = as_utc(newest.finished_at)
                if status == "succeeded":
                    state.last_rows[trigger] = newest.rows_written
                    state.last_duration_seconds[trigger] = max(
                        0.0, (as_utc(newest.finished_at) - as_utc(newest.started_at)).total_seconds()
                    )
        # Beat's heartbeat: only slots beat itself sent (a backfill of the minutes just missed must
        # not make a dead beat look alive).
        last_slot = conn.execute(
            select(func.max(c.slot)).where(c.status == "succeeded", c.slot.is_not(None), c.sent_by == "beat")
        ).scalar_one()
        state.last_slot = as_utc(last_slot) if last_slot is not None else None
        for status, trigger, count, rows in conn.execute(
            select(c.status, c.trigger, func.count(), func.coalesce(func.sum(c.rows_written), 0))
            .where(c.finished_at >= since, c.status.in_(FINISHED))
            .group_by(c.status, c.trigger)
        ):
            state.finished_last_hour[(status, trigger)] = count
            if status == "succeeded":
                state.rows_last_hour[trigger] = state.rows_last_hour.get(trigger, 0) + int(rows)
        state.unfinished.update(
            conn.execute(select(c.status, func.count()).where(c.status.in_(UNFINISHED)).group_by(c.status)).all()
        )
    missed = missed_in_last_day(engine, interval_seconds, now)
    state.missed_slots_last_day = len(missed)
    state.refused_slots_last_day = len(refusals(engine, missed))
    return state


def read_drift(engine: Engine, now: datetime) -> DriftState:
    state = DriftState()
    with engine.connect() as conn:
        recent = recent_drift(conn, now)  # what-if batches stay out with WHATIF_BATCHES=exclude
        state.monitored_last_hour.update(recent.monitored)
        state.drifted_last_hour = recent.drifted
        last = newest_drift_verdict(conn)
        if last is not None:
            state.last_batch_monitored_at = as_utc(last["monitored_at"])
            state.last_batch_dataset_drift = bool(last["dataset_drift"])
            state.last_batch_drifted_columns = last["drifted_columns"]
            state.last_batch_columns_checked = last["columns_checked"]
            d = column_drift.c
            state.last_batch_columns = [
                ColumnDrift(row.column_name, row.method, row.score, row.threshold, bool(row.drifted))
                for row in conn.execute(
                    select(d.column_name, d.method, d.score, d.threshold, d.drifted)
                    .where(d.batch_id == last["batch_id"])
                    .order_by(d.column_name)
                )
            ]
        # The newest hour that has ended: the monitor recomputes the current hour after each batch,
        # and a window of a few batches is as noisy as a single batch.
        w = window_metrics.c
        newest_end = conn.execute(
            select(func.max(w.window_end)).where(w.window_minutes == HOUR_WINDOW_MINUTES, w.window_end <= now)
        ).scalar_one()
        if newest_end is not None:
            rows = conn.execute(
                select(w.dataset_drift, w.drifted_columns).where(
                    w.window_minutes == HOUR_WINDOW_MINUTES, w.window_end == newest_end
                )
            ).all()
            state.hour_window_end = as_utc(newest_end)
            flags = [bool(r.dataset_drift) for r in rows if r.dataset_drift is not None]
            state.hour_window_dataset_drift = any(flags) if flags else None
            counts = [r.drifted_columns for r in rows if r.drifted_columns is not None]
            state.hour_window_drifted_columns = max(counts) if counts else None
            # The prediction itself: it moves at once when the world does (slower traffic moves it
            # in every hour while fares and miles hardly move), hours before outcomes are known.
            d = window_column_drift.c
            predicted = conn.execute(
                select(d.drifted).where(
                    d.window_minutes == HOUR_WINDOW_MINUTES,
                    d.window_end == newest_end,
                    d.column_name == "predicted_duration",
                )
            ).all()
            state.hour_window_prediction_drift = any(bool(r.drifted) for r in predicted) if predicted else None
    return state


def read_accuracy(engine: Engine, now: datetime) -> list[VersionAccuracy]:
    """Each version's newest day of live accuracy, for versions that had outcomes today or yesterday (Chicago)."""
    today = now.astimezone(CHICAGO).date()
    a = daily_accuracy.c
    newest = (
        select(a.model_version, func.max(a.day).label("day"))
        .where(a.day >= today - timedelta(days=1))
        .group_by(a.model_version)
        .subquery()
    )
    query = (
        select(a.model_version, a.day, a.outcomes, a.mae, a.heldout_mae, a.baseline_mae)
        .join(newest, (a.model_version == newest.c.model_version) & (a.day == newest.c.day))
        .order_by(a.model_version)
    )
    with engine.connect() as conn:
        return [
            VersionAccuracy(row.model_version, row.day, row.outcomes, row.mae, row.heldout_mae, row.baseline_mae)
            for row in conn.execute(query)
        ]


# The model's life cycle as the exporter shows it: actions whose counts it exports, and the moves of
# the production alias (what a step in live MAE is read against).
EVENT_ACTIONS = (
    "registered",
    "promoted",
    "rolled_back",
    "converted",
    "challenger_set",
    "challenger_retired",
    "moved_outside",
)
PRODUCTION_MOVES = ("promoted", "rolled_back", "converted", "moved_outside")


@dataclass
class LifecycleState:
    comparisons: dict[tuple[str, str], dict] = field(default_factory=dict)  # (challenger, production) -> row
    shadow_failures_last_hour: int = 0
    events_last_day: dict[str, int] = field(default_factory=dict)  # by action, done only
    failed_moves_last_day: int = 0
    last_production_move: datetime | None = None
    production_on_record: str | None = None  # where model_aliases says the production alias points
    recent: dict | None = None  # its live accuracy over the most recently known outcomes (evidence.recent_errors)
    policy: dict | None = None  # the model_policy row


def read_lifecycle(
    engine: Engine, now: datetime, model_name: str, production_alias: str, window: int = 1000
) -> LifecycleState:
    state = LifecycleState()
    e, s = model_events.c, shadow_comparisons.c
    day = now - timedelta(days=1)
    with engine.connect() as conn:
        for row in conn.execute(
            select(shadow_comparisons).where(s.model_name == model_name, s.computed_at >= now - timedelta(days=7))
        ).mappings():
            state.comparisons[(str(row["challenger_version"]), str(row["production_version"]))] = dict(row)
        state.shadow_failures_last_hour = conn.execute(
            select(func.count()).where(batch_runs.c.finished_at >= now - RECENT, batch_runs.c.shadow_error.is_not(None))
        ).scalar_one()
        for action, status, count in conn.execute(
            select(e.action, e.status, func.count())
            .where(e.model_name == model_name, e.at >= day)
            .group_by(e.action, e.status)
        ):
            if status == "done":
                state.events_last_day[action] = count
            elif status == "failed":
                state.failed_moves_last_day += count
        last = conn.execute(
            select(func.max(e.at)).where(
                e.model_name == model_name,
                e.alias == production_alias,
                e.status == "done",
                e.action.in_(PRODUCTION_MOVES),
            )
        ).scalar_one()
        state.last_production_move = as_utc(last) if last is not None else None
        state.production_on_record = conn.execute(
            select(model_aliases.c.version).where(
                model_aliases.c.model_name == model_name, model_aliases.c.alias == production_alias
            )
        ).scalar_one_or_none()
        policy = conn.execute(select(model_policy).where(model_policy.c.model_name == model_name)).mappings().first()
        state.policy = dict(policy) if policy else None
    if state.production_on_record is not None:
        from worker.store.evidence import recent_errors

        state.recent = recent_errors(engine, state.production_on_record, window, now, since=now - timedelta(days=7))
    return state
