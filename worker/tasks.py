"""The Celery tasks: thin wrappers that check arguments, retry, log and report.

Public task names (documented in the README): worker.tasks.run_batch and
worker.tasks.score_rides. worker.tasks.predict_chunk is the fan-out unit of
large batches.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task, group
from celery.signals import task_revoked
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import InterfaceError, OperationalError

from worker import batch, runtime
from worker.beat import (
    MAX_SLOTS_PER_RUN,
    RUN_BATCH,
    RUN_SLOTS,
    SENDERS,
    SlotRefused,
    parse_slot,
    schedule_batch_id,
    slot_window,
)
from worker.celery_app import app
from worker.lifecycle import policy
from worker.model.registry import ModelUnavailable
from worker.monitor import batches as monitoring_batches
from worker.monitor import quality
from worker.rides.batch_rides import CHUNK_BITS, MAX_CHUNKS, seed_for, trip_ids
from worker.rides.generator import World, chicago_now, expected_rides
from worker.rides.validation import BadRequest, records_to_frame, validate_rides
from worker.settings import get_settings
from worker.store import retention, writes
from worker.store.database import ensure_schema
from worker.store.locks import pass_lock

log = logging.getLogger(__name__)

# What a later try can fix: a lost or refused database connection, an unreachable registry.
# Not IntegrityError, DataError or ProgrammingError: those fail the same way every time.
TRANSIENT = (OperationalError, InterfaceError, ModelUnavailable, ConnectionError)
MAX_BATCH_ID = 120  # batch_runs.batch_id is VARCHAR(120)
# The tasks that write a batch, whose retries and failures are recorded on it.
BATCH_TASKS = frozenset({RUN_BATCH, RUN_SLOTS, "worker.tasks.predict_chunk", "worker.tasks.score_rides"})


class PipelineTask(Task):
    """Retries what a later try can fix (database, registry); fails fast on bad arguments."""

    autoretry_for = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 300  # below the visibility timeout, so a waiting retry is not redelivered
    retry_jitter = True
    max_retries = 10

    def on_retry(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        self._mark(kwargs, task_id, "retrying", exc)

    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        self._mark(kwargs, task_id, "failed", exc)

    def _mark(self, kwargs: dict, task_id: str, status: str, exc: Exception) -> None:
        mark(self.name, kwargs, task_id, status, f"{type(exc).__name__}: {exc}")


def run_batch_id(slot: object, task_id: str, interval: object = None) -> str:
    """The batch id run_batch uses: the slot's one name (whatever offset it was written with), else ad hoc."""
    if not slot:
        return f"adhoc-{task_id}"
    instant = slot_instant(slot, interval)
    # A slot off the grid is refused by run_batch itself; only a retry's record needs a name.
    return schedule_batch_id(instant) if instant is not None else f"schedule-{slot}"


def slot_instant(slot: object, interval: object) -> datetime | None:
    """The instant a message's slot names, if it names one on beat's grid of `interval`."""
    try:
        return parse_slot(slot, float(interval))  # type: ignore[arg-type]
    except (SlotRefused, TypeError, ValueError):
        return None


def given_batch_id(batch_id: object, task_id: str) -> str:
    return str(batch_id) if batch_id else f"adhoc-{task_id}"


def mark(task_name: str, kwargs: dict, task_id: str, status: str, error: str) -> None:
    """Record a retry or failure on the task's batch, named as the task itself names it; a scheduled
    slot whose message failed before its batch was recorded gets its reason in slot_refusals."""
    slots: list = []
    if task_name == RUN_BATCH:
        slots = [kwargs.get("slot")]
        batch_ids = [run_batch_id(kwargs.get("slot"), task_id, kwargs.get("interval"))]  # never a stray batch_id
    elif task_name == RUN_SLOTS:  # each slot's batch; one already written keeps its status (mark_batch)
        slots = kwargs.get("slots")
        slots = [slot for slot in slots[:MAX_SLOTS_PER_RUN] if slot] if isinstance(slots, list) else []
        batch_ids = [run_batch_id(slot, task_id, kwargs.get("interval")) for slot in slots]
    else:
        batch_ids = [given_batch_id(kwargs.get("batch_id"), task_id)]
    sent_by = kwargs.get("sent_by") if kwargs.get("sent_by") in SENDERS else None
    for i, batch_id in enumerate(batch_ids):
        try:
            writes.mark_batch(runtime.engine(), batch_id, status, error)  # redacted, then cut, as stored
        except Exception as mark_error:  # the database may be the thing that is down
            log.warning("could not record %s for batch %s: %s", status, batch_id, mark_error)
            return
        slot = slot_instant(slots[i], kwargs.get("interval")) if i < len(slots) and status == "failed" else None
        if slot is None:
            continue
        try:
            if writes.record_refusal(runtime.engine(), batch_id, slot, error, sent_by):
                log.warning("slot %s was refused before its batch was recorded: %s", slot.isoformat(), error)
        except Exception as refusal_error:  # e.g. a database not yet migrated to slot_refusals
            log.warning("could not record why slot %s was refused: %s", slot.isoformat(), refusal_error)


@task_revoked.connect
def _revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: object) -> None:
    """A retry that outlived its message's expiry is revoked without on_failure: record it."""
    name = getattr(sender, "name", "") or ""
    if request is None or name not in BATCH_TASKS:
        return
    if expired:  # a first delivery that waited too long (no worker ran), or a retry that outlived it
        why = (
            "expired before its retry ran"
            if getattr(request, "retries", 0)
            else "expired in the queue before a worker ran it"
        )
    else:
        why = "revoked"
    mark(name, getattr(request, "kwargs", None) or {}, request.id, "failed", f"TaskRevoked: {why}")


def redelivered(task: Task) -> bool:
    return bool((task.request.delivery_info or {}).get("redelivered"))


def check_count(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise BadRequest(f"{name} must be at least 1, got {value}")
    if value > maximum:
        raise BadRequest(f"{name} must be at most MAX_RIDES_PER_REQUEST={maximum}, got {value}")
    return value


def check_seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise BadRequest(f"seed must be a whole number from 0 to 2**63-1, got {seed!r}")
    return seed


def check_world(speed_factor: object, fare_factor: object) -> World:
    try:
        return World(speed_factor=speed_factor, fare_factor=fare_factor)  # type: ignore[arg-type]
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def check_chunk(row: dict, chunk_index: object, generated: bool) -> None:
    """A chunk must be one its batch planned: of the right kind of batch (generated rides for
    predict_chunk, given rides for score_rides) and below the batch's own number of chunks. Any
    broker client can send a task; without this, a new chunk index would claim a new ledger key
    and add rows to somebody's batch (a scheduled one, say), or finish a failed one."""
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or chunk_index < 0:
        raise BadRequest(f"chunk_index must be a whole number from 0, got {chunk_index!r}")
    kinds = ("schedule", "adhoc") if generated else ("file", "adhoc")
    if row["trigger"] not in kinds or (generated != (row["seed"] is not None)):
        what = "generated rides" if generated else "rides a caller gives"
        raise BadRequest(f"batch {row['batch_id']} is a {row['trigger']} batch; it takes no chunk of {what}")
    if chunk_index >= row["chunks_total"]:
        raise BadRequest(
            f"batch {row['batch_id']} was planned with {row['chunks_total']} chunk(s); chunk {chunk_index} is not one"
        )


def scheduled_window(slot: object, interval: object) -> tuple[datetime, tuple[datetime, datetime]]:
    """The slot as a UTC instant on beat's grid, and the Chicago-local window of rides its batch generates."""
    if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
        raise BadRequest(f"a scheduled batch needs a positive interval, got {interval!r}")
    try:
        instant = parse_slot(slot, float(interval))
    except SlotRefused as exc:
        raise BadRequest(str(exc)) from None
    return instant, slot_window(instant.isoformat(), interval)


@app.task(bind=True, base=PipelineTask, name="worker.tasks.run_batch")
def run_batch(
    self: PipelineTask,
    rides: int | None = None,
    seed: int | None = None,
    interval: float | None = None,
    slot: str | None = None,
    speed_factor: float = 1.0,
    fare_factor: float = 1.0,
    sent_by: str | None = None,
) -> dict:
    """Generate `rides` rides, predict their durations, write them (fanning out above CHUNK_SIZE).

    `interval` and `slot` are set by beat (and by `backfill`, with the ids beat would have used);
    without `rides` a scheduled batch takes RIDES_PER_BATCH or Chicago's volume for its window.
    A batch that exists already (a retry, a redelivery, a rerun) follows its stored plan.
    """
    settings = get_settings()
    started = time.perf_counter()
    seed = check_seed(seed)
    world = check_world(speed_factor, fare_factor)
    if sent_by is not None and sent_by not in SENDERS:
        raise BadRequest(f"sent_by must be one of {', '.join(SENDERS)}, got {sent_by!r}")
    slot_at = None
    if slot is not None:
        slot_at, (start, end) = scheduled_window(slot, interval)
    else:
        end = chicago_now().replace(microsecond=0)
        start = end - timedelta(seconds=settings.BATCH_INTERVAL_SECONDS)
    batch_id = schedule_batch_id(slot_at) if slot_at is not None else run_batch_id(None, self.request.id)
    if rides is None and slot is not None:
        rides = settings.RIDES_PER_BATCH or expected_rides(start, (end - start).total_seconds() / 60)
    rides = check_count("rides", rides, settings.MAX_RIDES_PER_REQUEST)
    seed = seed if seed is not None else seed_for(batch_id)

    engine = runtime.engine()
    ensure_schema(engine)
    row = writes.start_batch(
        engine,
        batch_id=batch_id,
        trigger="schedule" if slot else "adhoc",
        rides_requested=rides,
        chunks_total=len(batch.chunk_sizes(rides, settings.CHUNK_SIZE)),
        task_id=self.request.id,
        seed=seed,
        window=(start, end),
        attempt=self.request.retries + 1,
        redelivered=redelivered(self),
        speed_factor=world.speed_factor,
        fare_factor=world.fare_factor,
        slot=slot_at,
        chunk_size=settings.CHUNK_SIZE,
        sent_by=sent_by if slot_at is not None else None,
    )
    if row["status"] == "succeeded":
        log.info("batch %s was already written (%s rows); nothing to do", batch_id, row["rows_written"])
        return summary(row, started, duplicate=True)
    writes.refuse_claimed(row)  # a late message of a batch past retention: not revived
    # The first delivery's plan: a retry, redelivery or rerun generates the very same rides.
    plan = batch.Plan.of(row, settings.CHUNK_SIZE)
    row, model = runtime.pinned_model(engine, row)

    if len(plan.sizes) > 1:
        fan_out(batch_id, plan, model, row)
        return {
            "batch_id": batch_id,
            "rides": plan.rides,
            "chunks": len(plan.sizes),
            "status": "fanned-out",
            "model_version": model.version,
            "speed_factor": plan.world.speed_factor,
            "fare_factor": plan.world.fare_factor,
        }

    self.update_state(state="PROGRESS", meta={"batch_id": batch_id, "stage": "predicting", "rides": plan.rides})
    result = batch.run_generated_chunk(
        engine,
        model,
        batch_id=batch_id,
        chunk_index=0,
        rides=plan.rides,
        seed=plan.seed,
        window=plan.window,
        world=plan.world,
        shadow=runtime.shadow(model.name, row.get("challenger_version"), model.version),
        written_at=row["started_at"],
    )
    after_write(result)
    if not result.write.duplicate:
        log.info(
            "batch %s: %d rows written with %s v%s",
            batch_id,
            result.write.rows_written,
            result.model_name,
            result.model_version,
        )
    return summary(writes.get_batch(engine, batch_id) or row, started, duplicate=result.write.duplicate, chunk=result)


def fan_out(batch_id: str, plan: batch.Plan, model: Any, row: dict) -> None:
    """A batch above CHUNK_SIZE: one predict_chunk message per chunk, each pinned to the batch's versions."""
    group(
        predict_chunk.s(
            batch_id=batch_id,
            chunk_index=i,
            rides=n,
            seed=plan.seed,
            window=[plan.window.start.isoformat(), plan.window.end.isoformat()],
            speed_factor=plan.world.speed_factor,
            fare_factor=plan.world.fare_factor,
            model_name=model.name,
            model_version=model.version,
            challenger_version=row.get("challenger_version"),
        )
        for i, n in enumerate(plan.sizes)
    ).apply_async()
    log.info(
        "batch %s: %d rides fanned out in %d chunks, model v%s", batch_id, plan.rides, len(plan.sizes), model.version
    )


def check_slots(slots: object) -> list[str]:
    if not isinstance(slots, list) or not slots or not all(isinstance(slot, str) and slot for slot in slots):
        raise BadRequest(f"slots must be a non-empty list of slot times, got {slots!r}")
    if len(slots) > MAX_SLOTS_PER_RUN:
        raise BadRequest(f"slots holds {len(slots)} slots; a run takes at most {MAX_SLOTS_PER_RUN}")
    return slots


@app.task(bind=True, base=PipelineTask, name=RUN_SLOTS)
def run_slots(
    self: PipelineTask,
    slots: list[str],
    interval: float,
    rides: int | None = None,
    speed_factor: float = 1.0,
    fare_factor: float = 1.0,
    sent_by: str = "backfill",
) -> dict:
    """A run of beat slots (backfill sends an hour of them per message), each still its own batch
    `schedule-<slot>` with the plan, ids and rows its own run_batch would write: a slot already
    written is skipped, and a run_batch of the same slot, at the same time or later, writes nothing.

    What is shared is the fixed cost: one transaction records the run's batches, one registry read
    pins them, the forest predicts once and one transaction writes them (see write_batches)."""
    settings = get_settings()
    started = time.perf_counter()
    slots = check_slots(slots)
    world = check_world(speed_factor, fare_factor)
    if sent_by not in SENDERS:
        raise BadRequest(f"sent_by must be one of {', '.join(SENDERS)}, got {sent_by!r}")
    planned: dict[str, dict] = {}
    for slot in slots:
        slot_at, (start, end) = scheduled_window(slot, interval)
        batch_id = schedule_batch_id(slot_at)
        if batch_id in planned:
            raise BadRequest(f"slot {slot} is in the run twice (as {batch_id})")
        count = (
            rides
            if rides is not None
            else settings.RIDES_PER_BATCH or expected_rides(start, (end - start).total_seconds() / 60)
        )
        count = check_count("rides", count, settings.MAX_RIDES_PER_REQUEST)
        planned[batch_id] = {
            "batch_id": batch_id,
            "trigger": "schedule",
            "rides_requested": count,
            "chunks_total": len(batch.chunk_sizes(count, settings.CHUNK_SIZE)),
            "task_id": self.request.id,
            "seed": seed_for(batch_id),
            "window": (start, end),
            "attempt": self.request.retries + 1,
            "redelivered": redelivered(self),
            "speed_factor": world.speed_factor,
            "fare_factor": world.fare_factor,
            "slot": slot_at,
            "chunk_size": settings.CHUNK_SIZE,
            "sent_by": sent_by,
        }
    engine = runtime.engine()
    ensure_schema(engine)
    started_rows = writes.start_batches(engine, list(planned.values()))
    rows = [row for row in started_rows if row["status"] not in ("succeeded", writes.PRUNING)]
    pruning = [row["batch_id"] for row in started_rows if row["status"] == writes.PRUNING]
    if pruning:  # late messages of slots past retention: the others of the run are written
        log.warning("%s", writes.BatchPruned.of(pruning))
    skipped = len(planned) - len(rows) - len(pruning)
    groups: dict[tuple, list[batch.SlotRun]] = {}
    models: dict[tuple, Any] = {}
    fanned = 0
    for row, model in runtime.pinned_models(engine, rows) if rows else []:
        plan = batch.Plan.of(row, settings.CHUNK_SIZE)  # the first delivery's plan, as run_batch follows it
        if len(plan.sizes) > 1:
            fan_out(row["batch_id"], plan, model, row)
            fanned += 1
            continue
        key = (model.name, model.version, row.get("challenger_version"))
        models[key] = model
        groups.setdefault(key, []).append(batch.SlotRun(row["batch_id"], plan, row["started_at"]))
    results: list[batch.ChunkResult] = []
    try:
        for (name, version, challenger), runs in groups.items():
            results += batch.run_generated_batches(
                engine, models[(name, version, challenger)], runs, shadow=runtime.shadow(name, challenger, version)
            )
    except writes.BatchPruned as exc:  # a prune claimed a slot since the start: the next try leaves it out
        if results:
            queue_monitoring([result.write.batch_id for result in results if result.write.batch_finished])
        raise self.retry(exc=exc, countdown=1) from None
    finished = [result.write.batch_id for result in results if result.write.batch_finished]
    queue_monitoring(finished)
    written = [result for result in results if not result.write.duplicate]
    log.info(
        "run of %d slots: %d written (%d rows), %d already written, %d fanned out",
        len(planned),
        len(written),
        sum(result.write.rows_written for result in written),
        skipped + len(results) - len(written),
        fanned,
    )
    return {
        "slots": len(planned),
        "written": len(written),
        "rows_written": sum(result.write.rows_written for result in written),
        "already_written": skipped + len(results) - len(written),
        "fanned_out": fanned,
        "being_pruned": len(pruning),
        "batch_ids": list(planned),
        "timings": {k: round(v, 4) for k, v in results[0].timings.items()} if results else {},
        "seconds": round(time.perf_counter() - started, 3),
    }


@app.task(bind=True, base=PipelineTask, name="worker.tasks.predict_chunk")
def predict_chunk(
    self: PipelineTask,
    batch_id: str,
    chunk_index: int,
    rides: int,
    seed: int,
    window: list[str],
    speed_factor: float = 1.0,
    fare_factor: float = 1.0,
    model_name: str | None = None,
    model_version: str | None = None,
    challenger_version: str | None = None,
) -> dict:
    """One chunk of a large batch; written once, whoever runs it and however often, with the
    version (and challenger) the batch was pinned to."""
    engine = runtime.engine()
    row = writes.get_batch(engine, batch_id) if isinstance(batch_id, str) else None
    if row is None:
        raise BadRequest(f"batch {batch_id!r} is not recorded; predict_chunk belongs to a run_batch")
    check_chunk(row, chunk_index, generated=True)
    writes.refuse_claimed(row)
    if model_name and model_version:
        model = runtime.model(model_name, model_version)
    else:  # a message from before versions were pinned: pin now, like run_batch
        row, model = runtime.pinned_model(engine, row)
        challenger_version = row.get("challenger_version")
    result = batch.run_generated_chunk(
        engine,
        model,
        batch_id=batch_id,
        chunk_index=chunk_index,
        rides=rides,
        seed=seed,
        window=batch.parse_window(*window),
        world=check_world(speed_factor, fare_factor),
        shadow=runtime.shadow(model.name, challenger_version, model.version),
        written_at=row["started_at"],
    )
    after_write(result)
    return result.as_dict()


@app.task(bind=True, base=PipelineTask, name="worker.tasks.score_rides")
def score_rides(
    self: PipelineTask,
    rides: list[dict],
    batch_id: str | None = None,
    chunk_index: int = 0,
    chunks_total: int = 1,
    rides_total: int | None = None,
) -> dict:
    """Predict and write the given rides (raw columns); the whole list is refused if any ride is invalid."""
    settings = get_settings()
    started = time.perf_counter()
    frame = records_to_frame(rides)
    check_count("rides", len(frame), settings.MAX_RIDES_PER_REQUEST)
    checked = validate_rides(frame)
    if checked.errors:
        shown = "; ".join(f"ride {i}: {why}" for i, why in checked.errors[:10])
        raise BadRequest(f"{len(checked.errors)} of {len(frame)} rides refused, nothing written: {shown}")
    if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= MAX_BATCH_ID):
        raise BadRequest(f"batch_id must be a string of 1 to {MAX_BATCH_ID} characters, got {batch_id!r}")
    if isinstance(chunks_total, bool) or not isinstance(chunks_total, int) or not 1 <= chunks_total <= MAX_CHUNKS:
        raise BadRequest(
            f"chunks_total must be a whole number from 1 to {MAX_CHUNKS:,} (a trip id numbers a batch's "
            f"chunks in {CHUNK_BITS} bits), got {chunks_total!r}"
        )
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or not 0 <= chunk_index < chunks_total:
        raise BadRequest(f"chunk_index must be a whole number from 0 to chunks_total - 1, got {chunk_index!r}")
    batch_id = given_batch_id(batch_id, self.request.id)
    engine = runtime.engine()
    ensure_schema(engine)
    # Checked before anything is recorded: a chunk for somebody else's batch must not even touch its row.
    existing = writes.get_batch(engine, batch_id)
    if existing is not None:
        check_chunk(existing, chunk_index, generated=False)
        if existing["chunks_total"] != chunks_total:
            raise BadRequest(
                f"batch {batch_id} was planned with {existing['chunks_total']} chunk(s), this message says {chunks_total}"
            )
    row = writes.start_batch(
        engine,
        batch_id=batch_id,
        trigger="file" if chunks_total > 1 or rides_total else "adhoc",
        rides_requested=rides_total or len(frame),
        chunks_total=chunks_total,
        task_id=self.request.id,
        seed=None,
        window=None,
        attempt=self.request.retries + 1,
        redelivered=redelivered(self),
    )
    writes.refuse_claimed(row)
    row, model = runtime.pinned_model(engine, row)  # every chunk of a file scores with one version
    valid = checked.valid
    missing_ids = valid["trip_id"].isna().to_numpy()
    if missing_ids.any():
        generated = trip_ids(batch_id, chunk_index, len(valid), row["started_at"])
        valid.loc[missing_ids, "trip_id"] = generated[missing_ids]
    shadow = runtime.shadow(model.name, row.get("challenger_version"), model.version)
    result = batch.predict_and_write(engine, model, batch_id, chunk_index, valid, {}, shadow=shadow)
    after_write(result)
    return summary(writes.get_batch(engine, batch_id) or row, started, duplicate=result.write.duplicate, chunk=result)


def after_write(result: batch.ChunkResult) -> None:
    """The write that finished a batch queues its monitoring."""
    if result.write.batch_finished:
        queue_monitoring([result.write.batch_id])


def queue_monitoring(batch_ids: list[str]) -> None:
    """Queue the monitoring of finished batches: one message for one batch, one for a run of them. A
    lost message is caught up by update_quality's sweep, so a broker hiccup never fails a batch."""
    if not batch_ids or not get_settings().MONITORING:
        return
    try:
        if len(batch_ids) == 1:
            monitor_batch.apply_async(kwargs={"batch_id": batch_ids[0]})
        else:
            monitor_batches.apply_async(kwargs={"batch_ids": batch_ids})
    except Exception as exc:
        log.warning("could not queue monitoring of batch %s (the sweep will): %s", ", ".join(batch_ids), exc)


# The registry (or the database) cannot be asked now: monitoring waits and tries again.
MONITOR_WAITS = (OperationalError, InterfaceError, MlflowException, OSError)


@app.task(bind=True, name="worker.tasks.monitor_batch", max_retries=12)
def monitor_batch(self: Task, batch_id: str) -> dict:
    """Drift and summary of a written batch. Never fails, retries or slows the batch itself: its
    errors land in batch_metrics (monitor_status, monitor_error), the batch stays succeeded."""
    if not isinstance(batch_id, str) or not batch_id:
        raise BadRequest(f"batch_id must be a batch id, got {batch_id!r}")
    engine = runtime.engine()
    try:
        report = monitoring_batches.monitor_batch(
            engine, batch_id, runtime.reference, chicago_now(), sample_rows=get_settings().MONITOR_SAMPLE_ROWS
        )
    except MONITOR_WAITS as exc:
        why = f"{type(exc).__name__}: {exc}"
        if self.request.retries >= self.max_retries:
            _monitor_failed(engine, batch_id, "failed", why)
            return {"batch_id": batch_id, "monitor_status": "failed"}
        _monitor_failed(engine, batch_id, "waiting", why)
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from None
    except Exception as exc:
        log.exception("monitoring batch %s failed", batch_id)
        _monitor_failed(engine, batch_id, "failed", f"{type(exc).__name__}: {exc}")
        return {"batch_id": batch_id, "monitor_status": "failed"}
    return {
        "batch_id": batch_id,
        "monitor_status": report.status,
        "rows": report.rows,
        "dataset_drift": report.drift.dataset_drift if report.drift else None,
        "drifted_columns": report.drift.drifted if report.drift else None,
    }


@app.task(bind=True, name="worker.tasks.monitor_batches", max_retries=12)
def monitor_batches(self: Task, batch_ids: list[str]) -> dict:
    """monitor_batch for a run of batches written together (run_slots): each batch's drift and summary,
    then each clock hour they fall in once. A batch whose monitoring fails says so on its metrics row
    and the others go on; while the registry or the database cannot be asked, the run waits and tries
    again, as monitor_batch does."""
    if not isinstance(batch_ids, list) or not batch_ids or not all(isinstance(b, str) and b for b in batch_ids):
        raise BadRequest(f"batch_ids must be a non-empty list of batch ids, got {batch_ids!r}")
    if len(batch_ids) > MAX_SLOTS_PER_RUN:
        raise BadRequest(f"batch_ids holds {len(batch_ids)} batches; a run takes at most {MAX_SLOTS_PER_RUN}")
    engine = runtime.engine()
    waiting: list[Exception] = []

    def failed(batch_id: str, exc: Exception) -> None:
        if isinstance(exc, MONITOR_WAITS):
            waiting.append(exc)
            _monitor_failed(
                engine,
                batch_id,
                "waiting" if self.request.retries < self.max_retries else "failed",
                f"{type(exc).__name__}: {exc}",
            )
            return
        log.error("monitoring batch %s failed: %s: %s", batch_id, type(exc).__name__, exc)
        _monitor_failed(engine, batch_id, "failed", f"{type(exc).__name__}: {exc}")

    try:
        reports = monitoring_batches.monitor_run(
            engine, batch_ids, runtime.reference, chicago_now(), get_settings().MONITOR_SAMPLE_ROWS, failed=failed
        )
    except MONITOR_WAITS as exc:  # reading or storing the run (the database), or an hour's window: all again later
        waiting.append(exc)
        reports = []
    if waiting and self.request.retries < self.max_retries:
        raise self.retry(exc=waiting[0], countdown=min(300, 5 * 2**self.request.retries)) from None
    return {
        "batches": len(batch_ids),
        "monitored": sum(report.status != "skipped" for report in reports),
        "drifted": sum(bool(report.drift and report.drift.dataset_drift) for report in reports),
    }


def _monitor_failed(engine, batch_id: str, status: str, why: str) -> None:
    try:
        monitoring_batches.record_failure(engine, batch_id, status, why)
    except Exception as exc:  # the database may be what is down
        log.warning("could not record monitoring %s for batch %s: %s", status, batch_id, exc)


@app.task(bind=True, name="worker.tasks.update_quality")
def update_quality(self: Task) -> dict:
    """Live accuracy from the outcomes observed so far (beat, every QUALITY_INTERVAL_SECONDS), and
    monitoring for any finished batch whose monitoring message was lost."""
    if not get_settings().MONITORING:
        return {"skipped": "MONITORING is off"}
    engine = runtime.engine()
    now = datetime.now(UTC)
    sample = get_settings().MONITOR_SAMPLE_ROWS
    with pass_lock(engine, "update_quality") as held:
        if not held:  # the previous pass still runs (beat sends one a minute): let it finish alone
            return {"skipped": "another update_quality pass is running"}
        swept = quality.sweep_unmonitored(engine, runtime.reference, chicago_now(), now, sample, waits=MONITOR_WAITS)
        done = quality.update_quality(
            engine, chicago_now(), runtime.heldout_mae, runtime.reference, now_utc=now, sample_rows=sample
        )
        # A move of an alias behind the project's back is noticed even while no batch runs.
        runtime.notice_aliases(engine)
        compared = quality.refresh_comparisons(
            engine, get_settings().MODEL_NAME, chicago_now(), since=now - quality.LOOKBACK
        )
    return {**done, **swept, "comparisons": compared}


@app.task(
    bind=True,
    name="worker.tasks.model_policy",
    soft_time_limit=get_settings().TRAINING_SOFT_TIME_LIMIT,
    time_limit=get_settings().TRAINING_TIME_LIMIT,
)
def model_policy(self: Task, mode: str | None = None) -> dict:
    """One pass of the model policy (beat, every POLICY_INTERVAL_SECONDS, on the `training` queue): it may
    retrain, which takes tens of seconds of CPU, hence its own queue and time limits (below the
    visibility timeout, so Redis never hands a running pass to a second worker; a second pass would
    find the policy's lease taken and do nothing anyway)."""
    if mode is not None and mode not in ("off", "advise", "auto"):
        raise BadRequest(f"mode must be off, advise or auto, got {mode!r}")
    result = policy.run_pass(get_settings(), runtime.engine(), mode=mode)
    if result.decision is not None:
        log.info("model policy (%s): %s: %s", result.mode, result.decision.action, result.decision.reason)
    return result.as_dict()


@app.task(bind=True, name="worker.tasks.prune_batches")
def prune_batches(self: Task, older_than_days: float) -> dict:
    """Delete batches older than `older_than_days` with all their rows (RETENTION_DAYS, daily from beat).
    It stops well inside the soft time limit; a large backlog is finished by the following days."""
    if isinstance(older_than_days, bool) or not isinstance(older_than_days, int | float) or older_than_days <= 0:
        raise BadRequest(f"older_than_days must be a positive number, got {older_than_days!r}")
    budget = get_settings().TASK_SOFT_TIME_LIMIT / 2
    removed = retention.prune(runtime.engine(), older_than_days, datetime.now(UTC), seconds=budget)
    log.info("pruned batches older than %g days: %s", older_than_days, removed or "nothing")
    return removed


def summary(row: dict, started: float, duplicate: bool, chunk: batch.ChunkResult | None = None) -> dict:
    out = {
        "batch_id": row["batch_id"],
        "status": row["status"],
        "rides_requested": row["rides_requested"],
        "rows_written": row["rows_written"],
        "chunks_done": row["chunks_done"],
        "chunks_total": row["chunks_total"],
        "model_name": row["model_name"],
        "model_version": row["model_version"],
        "model_pinned_by": row.get("model_pinned_by"),
        "speed_factor": row.get("speed_factor", 1.0),
        "fare_factor": row.get("fare_factor", 1.0),
        "duplicate": duplicate,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if chunk is not None:
        out["timings"] = {k: round(v, 4) for k, v in chunk.timings.items()}
    if duplicate:
        out["note"] = "already written by an earlier delivery; nothing written this time"
    return out
