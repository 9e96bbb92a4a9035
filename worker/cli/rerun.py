"""`python -m worker rerun BATCH_ID`: run a failed (or stuck) batch again, as it was planned.

The batch is sent under its own identity (the slot of a scheduled batch, the
task id of an ad-hoc one), so run_batch finds its stored seed, window, size,
knobs and model version and regenerates exactly the rides it would have
written; chunks already in the ledger are not written again.

A batch pinned to a version no worker can score with (refused, or deleted from
the registry) would fail again on every rerun: it is moved to that version's
checked skops copy (`convert-model`) if there is one, which predicts the same,
else refused unless `--repin` moves it to the version MODEL_URI points at now.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from worker.cli.dispatching import dispatch_batch, dispatch_slot
from worker.cli.errors import UsageError
from worker.rides.generator import World
from worker.settings import Settings, redact
from worker.store import writes

log = logging.getLogger(__name__)

CONVERTED = "converted"  # model_pinned_by: moved by rerun to the checked skops copy of its refused version
REPINNED = "repinned"  # model_pinned_by: moved by `rerun --repin` to MODEL_URI's version


def new_pin(settings: Settings, engine: Engine, row: dict[str, Any], repin: bool) -> tuple[str, str, str] | None:
    """(from_version, to_version, pinned_by) when the batch must be moved off its pinned version before
    it is sent, else None. Raises UsageError when it cannot score and `--repin` was not given."""
    from mlflow.exceptions import MlflowException

    from worker.model.registry import checked_copy, configure_mlflow, resolve_version, version_problem

    pinned, name, batch_id = row["model_version"], row["model_name"] or settings.MODEL_NAME, row["batch_id"]
    if pinned is None:
        if repin:
            raise UsageError(
                f"batch {batch_id} is pinned to no version yet: it takes {settings.model_uri}'s when it runs"
            )
        return None
    client = configure_mlflow(settings)
    try:
        problem = version_problem(client, name, pinned)
        copy = checked_copy(client, name, pinned) if problem else None
    except (MlflowException, OSError) as exc:  # the workers may still hold the version: send it as pinned
        if repin:
            raise
        log.warning(
            "could not ask the registry about version %s (%s); sent as pinned", pinned, redact(str(exc), settings)
        )
        return None
    if problem is None:
        if repin:
            raise UsageError(
                f"batch {batch_id} is pinned to version {pinned}, which the workers can score with; "
                "--repin only moves a batch off a version they refuse or the registry lost"
            )
        return None
    if copy is not None:
        log.warning(
            "version %s %s: batch %s is scored by its checked skops copy, version %s", pinned, problem, batch_id, copy
        )
        return pinned, copy, CONVERTED
    if not repin:
        raise UsageError(
            f"batch {batch_id} is pinned to version {pinned}, which {problem}; a rerun would fail again. "
            f"Convert it (python -m worker convert-model --version {pinned}) and rerun, or rerun with --repin "
            f"to score it with the version {settings.model_uri} points at now"
        )
    written = writes.chunks_written(engine, batch_id)
    if written:
        raise UsageError(
            f"batch {batch_id}: {written} of its chunks were written by version {pinned}; --repin would score the "
            "rest with another model, so it is refused (prune the batch, or convert the version)"
        )
    _, current = resolve_version(client, settings.model_uri)
    if current == pinned:
        raise UsageError(
            f"{settings.model_uri} is version {pinned} itself; move the alias first (python -m worker rollback)"
        )
    return pinned, current, REPINNED


def rerun_batch(
    settings: Settings, engine: Engine, batch_id: str, now: datetime | None = None, repin: bool = False
) -> str:
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
    moved = new_pin(settings, engine, row, repin)
    note = f"rerun requested (was {status}: {row['error'] or 'no error'})"
    if moved is not None:
        note = f"rerun requested, moved from version {moved[0]} to {moved[1]} ({moved[2]}) (was {status}: {row['error'] or 'no error'})"
    # Shown as retrying from now on, so `--wait` and `batches` never mistake the old failure for the rerun's.
    try:
        before = writes.reopen_batch(engine, batch_id, note, repin=moved)
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
