"""Reading the batch history: what ran, how it went, and which beat slots never ran at all.

A slot counts as missed only once the schedule was first seen running (the
first scheduled batch recorded), so a fresh install has nothing missing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from worker.store.schema import batch_runs, slot_refusals


def attempt_started():
    """When a batch's latest attempt started: the start of its duration (a rerun a day later is not a
    day-long batch). The one definition of `batches`, the exporter and the Pipeline dashboard."""
    return func.coalesce(batch_runs.c.attempt_started_at, batch_runs.c.started_at)


def slot_grid(start: datetime, end: datetime, interval_seconds: float) -> list[datetime]:
    """Beat's wall-clock slots (UTC multiples of the interval since the epoch) in [start, end)."""
    # k * interval, as beat computes it, so the UTC isoformat (the batch id) is exactly beat's.
    k = math.ceil(start.timestamp() / interval_seconds)
    out = []
    while k * interval_seconds < end.timestamp():
        out.append(datetime.fromtimestamp(k * interval_seconds, UTC))
        k += 1
    return out


def schedule_first_seen(engine: Engine, on_time_seconds: float) -> datetime | None:
    """When beat was first seen running: the start of the earliest scheduled batch that ran within
    `on_time_seconds` of its slot. A backfilled slot runs long after its slot, so backfilling old
    slots never moves this back (and never makes the slots since then look missed)."""
    query = (
        select(batch_runs.c.slot, batch_runs.c.started_at)
        .where(batch_runs.c.trigger == "schedule", batch_runs.c.slot.is_not(None))
        .order_by(batch_runs.c.started_at)
    )
    with engine.connect() as conn:
        for slot, started in conn.execute(query.execution_options(yield_per=500)):
            if (_utc(started) - _utc(slot)).total_seconds() <= on_time_seconds:
                return _utc(started)
    return None


def settled_until(now: datetime, interval_seconds: float) -> datetime:
    """Slots before this one can be missed; the current slot and the one before it may still be in the
    queue or running. The one cut-off of `status`, the report and the exporter."""
    current = math.floor(now.timestamp() / interval_seconds) * interval_seconds
    return datetime.fromtimestamp(current - interval_seconds, UTC)


def missed_in_last_day(engine: Engine, interval_seconds: float, now: datetime) -> list[datetime]:
    """Slots of the 24 hours before `now` that have no batch at all (the cut-off of settled_until)."""
    return missed_slots(engine, interval_seconds, now - timedelta(days=1), settled_until(now, interval_seconds))


def missed_slots(engine: Engine, interval_seconds: float, since: datetime, until: datetime) -> list[datetime]:
    """Slots in [since, until) after beat was first seen running that have no batch at all.

    `until` is usually the current slot: it is still beat's to send. A failed batch is not
    missed (it ran; `rerun` redoes it)."""
    first = schedule_first_seen(engine, on_time_seconds=max(2 * interval_seconds, 60.0))
    if first is None:
        return []
    start = max(_utc(since), first)
    grid = slot_grid(start, _utc(until), interval_seconds)
    if not grid:
        return []
    with engine.connect() as conn:
        seen = {
            _utc(slot).timestamp()
            for (slot,) in conn.execute(
                select(batch_runs.c.slot).where(batch_runs.c.slot >= grid[0], batch_runs.c.slot <= grid[-1])
            )
        }
    return [slot for slot in grid if slot.timestamp() not in seen]


def refusals(engine: Engine, slots: list[datetime]) -> dict[datetime, str]:
    """Why each of these (missed) slots was refused by a worker, for those a worker refused or dropped
    before recording their batch; a slot beat never sent (or the broker lost) has no entry."""
    if not slots:
        return {}
    wanted = {slot.timestamp(): slot for slot in slots}
    with engine.connect() as conn:
        rows = conn.execute(
            select(slot_refusals.c.slot, slot_refusals.c.error).where(
                slot_refusals.c.slot >= _utc(min(slots)), slot_refusals.c.slot <= _utc(max(slots))
            )
        )
        found = {wanted[t]: error for slot, error in rows if (t := _utc(slot).timestamp()) in wanted}
    return dict(sorted(found.items()))


def _utc(value: datetime) -> datetime:
    """SQLite gives timestamps back naive; they were stored as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def list_batches(
    engine: Engine, last: int = 20, status: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The most recent batches first, at most `last`."""
    query = select(batch_runs).order_by(batch_runs.c.started_at.desc(), batch_runs.c.batch_id.desc()).limit(last)
    if status is not None:
        query = query.where(batch_runs.c.status == status)
    if since is not None:
        query = query.where(batch_runs.c.started_at >= since)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def batch_column(engine: Engine, batch_ids: list[str], column: str) -> dict[str, Any]:
    """One column of each of these batches that exists, read a thousand ids at a time."""
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        for i in range(0, len(batch_ids), 1000):
            query = select(batch_runs.c.batch_id, batch_runs.c[column]).where(
                batch_runs.c.batch_id.in_(batch_ids[i : i + 1000])
            )
            found.update({batch_id: value for batch_id, value in conn.execute(query)})
    return found


def statuses(engine: Engine, batch_ids: list[str]) -> dict[str, str]:
    """The status of each of these batches that exists."""
    return batch_column(engine, batch_ids, "status")


def finished(engine: Engine, batch_ids: list[str]) -> list[tuple[str, str, int]]:
    """(batch id, status, rows written) of those of these batches that succeeded or failed."""
    out: list[tuple[str, str, int]] = []
    with engine.connect() as conn:
        for i in range(0, len(batch_ids), 1000):
            query = select(batch_runs.c.batch_id, batch_runs.c.status, batch_runs.c.rows_written).where(
                batch_runs.c.batch_id.in_(batch_ids[i : i + 1000]), batch_runs.c.status.in_(("succeeded", "failed"))
            )
            out.extend((row.batch_id, row.status, row.rows_written) for row in conn.execute(query))
    return out
