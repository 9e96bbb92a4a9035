"""`python -m worker rerun BATCH_ID`: run a failed (or stuck) batch again, as it was planned.

The batch is sent under its own identity (the slot of a scheduled batch, the
task id of an ad-hoc one), so run_batch finds its stored seed, window, size,
knobs and model version and regenerates exactly the rides it would have
written; chunks already in the ledger are not written again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from worker.cli.dispatching import dispatch_batch, dispatch_slot
from worker.cli.errors import UsageError
from worker.rides.generator import World
from worker.settings import Settings
from worker.store import writes


def rerun_batch(settings: Settings, engine: Engine, batch_id: str, now: datetime | None = None) -> str:
    """Send the batch again; returns the batch id. Refuses what a rerun cannot or must not do."""
    row = writes.get_batch(engine, batch_id)
    if row is None:
        raise UsageError(f"there is no batch {batch_id!r} (python -m worker batches lists them)")
    status = row["status"]
    if status == "succeeded":
        raise UsageError(f"batch {batch_id} succeeded ({row['rows_written']} rows); there is nothing to rerun")
    if status == writes.PRUNING:
        raise UsageError(str(writes.BatchPruned.of([batch_id])).replace("nothing was written", "it cannot be rerun"))
    given = row["trigger"] == "file" or row["seed"] is None or row["window_start"] is None
    if given or not batch_id.startswith(("schedule-", "adhoc-")):
        raise UsageError(
            f"batch {batch_id} scored rides its caller gave (a file, or a score_rides call), which are not kept; "
            "send them again (rows whose trip_id is already written are skipped)"
        )
    if status in ("running", "retrying"):
        # Stuck only once its latest attempt (or the send of a rerun) is older than VISIBILITY_TIMEOUT:
        # until then a worker writes it, or its retry (due within 300 s) or the rerun's message is queued.
        started = row["attempt_started_at"] or row["started_at"]
        started = started if started.tzinfo else started.replace(tzinfo=UTC)
        age = ((now or datetime.now(UTC)) - started).total_seconds()
        if age < settings.VISIBILITY_TIMEOUT:
            doing = "a worker may still be writing it" if status == "running" else "it is queued to run again"
            raise UsageError(
                f"batch {batch_id} is {status} (its latest attempt started {age:.0f} s ago); {doing}. "
                f"Wait for VISIBILITY_TIMEOUT={settings.VISIBILITY_TIMEOUT:g} s, after which Redis redelivers it anyway"
            )
    world = World(float(row["speed_factor"]), float(row["fare_factor"]))
    rides = int(row["rides_requested"])
    # Shown as retrying from now on, so `--wait` and `batches` never mistake the old failure for the rerun's.
    try:
        before = writes.reopen_batch(engine, batch_id, f"rerun requested (was {status}: {row['error'] or 'no error'})")
    except writes.BatchPruned as exc:  # prune claimed it since we read it
        raise UsageError(str(exc).replace("nothing was written", "it cannot be rerun")) from None
    if before is None:  # it succeeded, or a worker took it, since we read it: sending would only repeat it
        raise UsageError(
            f"batch {batch_id} changed while the rerun was prepared (`batches` shows it); nothing was sent"
        )
    try:
        if batch_id.startswith("schedule-"):
            slot = datetime.fromisoformat(batch_id.removeprefix("schedule-"))
            interval = (row["window_end"] - row["window_start"]).total_seconds()
            return dispatch_slot(slot, interval, rides, world, sent_by="rerun")
        _, sent = dispatch_batch(rides, int(row["seed"]), world, task_id=batch_id.removeprefix("adhoc-"))
        return sent
    except Exception:  # nothing was sent: put the batch back exactly as it was
        writes.undo_reopen(engine, batch_id, before)
        raise
