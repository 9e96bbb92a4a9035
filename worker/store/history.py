"""Reading the batch history: what ran, how it went, and which beat slots never ran at all.

A slot counts as missed only once the schedule was first seen running (the
first scheduled batch recorded), so a fresh install has nothing missing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from worker.store.schema import batch_runs


def slot_grid(start: datetime, end: datetime, interval_seconds: float) -> list[datetime]:
    """Beat's wall-clock slots (UTC multiples of the interval since the epoch) in [start, end)."""
    # k * interval, as beat computes it, so the UTC isoformat (the batch id) is exactly beat's.
    k = math.ceil(start.timestamp() / interval_seconds)
    out = []
    while k * interval_seconds < end.timestamp():
        out.append(datetime.fromtimestamp(k * interval_seconds, UTC))
        k += 1
    return out


def first_scheduled_slot(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(func.min(batch_runs.c.slot))).scalar()


def missed_slots(engine: Engine, interval_seconds: float, since: datetime, until: datetime) -> list[datetime]:
    """Slots in [since, until) after the schedule's first recorded slot that have no batch at all.

    `until` is usually the current slot: it is still beat's to send. A failed batch is not
    missed (it ran; `rerun` redoes it)."""
    first = first_scheduled_slot(engine)
    if first is None:
        return []
    first = _utc(first)
    start = max(_utc(since), first + timedelta(seconds=interval_seconds))
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
