"""Schedule slots: beat fires on wall-clock multiples of the interval and stamps the slot.

The slot (e.g. 17:35:00 UTC for a 5-minute interval) names the scheduled
batch, so two beat processes started by mistake send the same batch id and
the second send writes nothing; a redelivered message keeps its slot.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from celery import schedules
from celery.signals import beat_init, before_task_publish

RUN_BATCH = "worker.tasks.run_batch"
# A run of slots in one message (backfill): each slot still its own batch, named as beat names it.
RUN_SLOTS = "worker.tasks.run_slots"
MAX_SLOTS_PER_RUN = 288  # a day of 5-minute slots: a message stays small, a task well inside its time limit
# Who sent a scheduled slot's batch: only beat's own sends are its heartbeat.
SENDERS = ("beat", "backfill", "rerun")
_IN_BEAT = {"active": False}
# The slot each interval was last found due for, so the message names the slot beat decided on,
# even if publishing it crosses the next boundary.
_DUE_SLOTS: dict[float, float] = {}


def slot_start(interval_seconds: float, at: float | None = None) -> datetime:
    now = time.time() if at is None else at
    return datetime.fromtimestamp(math.floor(now / interval_seconds) * interval_seconds, UTC)


class aligned_every(schedules.schedule):
    """Due at every wall-clock multiple of `run_every` since the epoch, not `run_every` after start."""

    def is_due(self, last_run_at: datetime) -> schedules.schedstate:
        interval = self.run_every.total_seconds()
        now = time.time()
        current = math.floor(now / interval) * interval
        to_next = current + interval - now
        if last_run_at.timestamp() < current:
            _DUE_SLOTS[interval] = current
            return schedules.schedstate(True, to_next)
        return schedules.schedstate(False, to_next)

    def __reduce__(self):
        return self.__class__, (self.run_every, self.relative, self.nowfun)


@beat_init.connect
def _beat_started(**_: object) -> None:
    _IN_BEAT["active"] = True


@before_task_publish.connect
def _stamp_slot(sender: str | None = None, body: object = None, **_: object) -> None:
    """In the beat process, add the slot to each scheduled run_batch message it sends."""
    if not _IN_BEAT["active"] or sender != RUN_BATCH or not isinstance(body, tuple | list) or len(body) < 2:
        return
    kwargs = body[1]
    if not isinstance(kwargs, dict) or "slot" in kwargs:
        return
    interval = kwargs.get("interval")
    if isinstance(interval, int | float) and interval > 0:
        due = _DUE_SLOTS.get(float(interval))
        slot = datetime.fromtimestamp(due, UTC) if due is not None else slot_start(interval)
        kwargs["slot"] = slot.isoformat()
        kwargs["sent_by"] = "beat"


def slot_window(slot: str, interval_seconds: float) -> tuple[datetime, datetime]:
    """The Chicago-local [start, end) whose rides a slot's batch generates: the interval before it.

    The start is the real start converted to local time, and the window is `interval` long in
    local time, so it is never inverted or an hour long across a daylight-saving change: the
    slot at 08:00 UTC on 2026-03-08 covers [01:55, 02:00) local, not the nonexistent 02:55."""
    from worker.rides.generator import CHICAGO

    start = (datetime.fromisoformat(slot) - timedelta(seconds=interval_seconds)).astimezone(CHICAGO)
    start = start.replace(tzinfo=None, fold=0)
    return start, start + timedelta(seconds=interval_seconds)


class SlotRefused(ValueError):
    """A slot that names no instant, or one off beat's grid."""


def parse_slot(value: object, interval_seconds: float) -> datetime:
    """The UTC instant a slot names (ISO 8601 with its offset: `Z`, `+00:00` and `-06:00` spellings of
    one instant are one slot), refused when it lies off beat's grid of `interval_seconds`."""
    try:
        instant = datetime.fromisoformat(str(value))
    except ValueError:
        raise SlotRefused(f"slot must be an ISO 8601 time with its UTC offset, got {value!r}") from None
    if instant.tzinfo is None:
        raise SlotRefused(f"slot must carry its UTC offset, got {value!r}")
    instant = instant.astimezone(UTC)
    steps = instant.timestamp() / interval_seconds
    if abs(steps - round(steps)) > 1e-6:
        before = datetime.fromtimestamp(math.floor(steps) * interval_seconds, UTC)
        after = datetime.fromtimestamp(math.ceil(steps) * interval_seconds, UTC)
        raise SlotRefused(
            f"slot {value!r} is not on beat's grid of {interval_seconds:g} s (the nearest slots are "
            f"{before.isoformat()} and {after.isoformat()})"
        )
    return datetime.fromtimestamp(round(steps) * interval_seconds, UTC)


def schedule_batch_id(slot: datetime) -> str:
    """The one name of a slot's batch, for beat, backfill, rerun and dispatch alike: its UTC instant as
    beat writes it (`schedule-2026-11-26T16:00:00+00:00`)."""
    return f"schedule-{slot.astimezone(UTC).isoformat()}"
