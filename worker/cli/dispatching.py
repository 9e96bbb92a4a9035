"""Sending work by hand, and following it to the end.

The CLI knows the batch id before it sends anything (it picks the task id),
so it can show progress from `batch_runs` while chunks are written.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from worker.beat import RUN_BATCH, RUN_SLOTS
from worker.cli.errors import SendBroken, UsageError
from worker.cli.file_reader import FileCheck, refuse_oversized, validated_chunks
from worker.rides.generator import CALIBRATED, World
from worker.settings import Settings, redact

SCORE_RIDES = "worker.tasks.score_rides"
SCORE_MESSAGE_ROWS = 10_000  # rides per score_rides message: ~1.5 MB of JSON


@cache
def sending_app():
    """The Celery app, once its result backend has answered. Celery's Redis result backend subscribes
    to a task's result as the task is sent; with Redis down it retried that 20 times, logging each, and
    ended in a RuntimeError traceback. A ping first makes that one clear line, at once."""
    from worker.celery_app import app

    client = getattr(app.backend, "client", None)  # Redis's; the SQLite backend has none
    if client is not None and callable(getattr(client, "ping", None)):
        client.ping()
    return app


def database_answers(settings: Settings) -> None:
    """Raise what is wrong with the database (down, or its tables missing) before a `--wait` sends work:
    a batch sent that this command then cannot follow would be left running behind its error."""
    from worker.store.database import ensure_schema, get_engine

    ensure_schema(get_engine(settings.database_url))


def world_kwargs(world: World) -> dict[str, float]:
    """The knobs as run_batch takes them; left out when calibrated, so messages stay as before."""
    out = {}
    if world.speed_factor != 1.0:
        out["speed_factor"] = world.speed_factor
    if world.fare_factor != 1.0:
        out["fare_factor"] = world.fare_factor
    return out


def dispatch_batch(
    rides: int, seed: int | None, world: World = CALIBRATED, task_id: str | None = None
) -> tuple[str, str]:
    """Send one ad-hoc run_batch; `task_id` names the batch (`adhoc-<task id>`), so a rerun
    that reuses it continues the same batch."""
    app = sending_app()

    task_id = task_id or str(uuid.uuid4())
    kwargs: dict = {"rides": rides, **world_kwargs(world)}
    if seed is not None:
        kwargs["seed"] = seed
    # By name, like any remote caller: the CLI needs no model libraries to send work.
    app.send_task(RUN_BATCH, kwargs=kwargs, task_id=task_id)
    return task_id, f"adhoc-{task_id}"


def dispatch_slot(
    slot: datetime, interval: float, rides: int | None, world: World = CALIBRATED, sent_by: str = "backfill"
) -> str:
    """Send run_batch for one beat slot as beat would (same kwargs, same batch id), saying who sent it."""
    from worker.beat import schedule_batch_id

    app = sending_app()

    kwargs = {
        "rides": rides,
        "interval": interval,
        "slot": slot.astimezone(UTC).isoformat(),
        "sent_by": sent_by,
        **world_kwargs(world),
    }
    app.send_task(RUN_BATCH, kwargs=kwargs)
    return schedule_batch_id(slot)


def dispatch_slots(
    slots: list[datetime],
    interval: float,
    rides: int | None,
    world: World = CALIBRATED,
    sent_by: str = "backfill",
    task_id: str | None = None,
) -> list[str]:
    """Send one run_slots for a run of beat slots (each still its own batch, named as beat names it);
    `task_id` names the message, so a waiting backfill can ask the result backend how it ended."""
    from worker.beat import schedule_batch_id

    app = sending_app()

    kwargs = {
        "slots": [slot.astimezone(UTC).isoformat() for slot in slots],
        "interval": interval,
        "rides": rides,
        "sent_by": sent_by,
        **world_kwargs(world),
    }
    app.send_task(RUN_SLOTS, kwargs=kwargs, task_id=task_id)
    return [schedule_batch_id(slot) for slot in slots]


def queue_lengths() -> dict[str, int]:
    """Messages waiting in each queue (scoring, monitoring, training), read without declaring any."""
    from worker.celery_app import QUEUES, app
    from worker.cli.broker_reads import waiting_messages

    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
        return {queue: waiting_messages(conn.default_channel, queue) for queue in QUEUES}


def queue_length() -> int:
    """Messages waiting in every queue together: what backfill throttles on (a backfill's batches
    queue their monitoring too, which must not pile up behind it either)."""
    return sum(queue_lengths().values())


@dataclass
class FileDispatch(FileCheck):
    batch_id: str = ""
    sent: int = 0
    chunks: int = 0
    refused: bool = False


def dispatch_file(settings: Settings, path: str | Path, skip_invalid: bool, wait: bool = False) -> FileDispatch:
    """Validate the whole file first (streaming), then send its valid rides in chunks (with `wait`,
    only once the database that the wait reads answers)."""
    from worker.rides.validation import to_records, validate_rides

    limit = settings.MAX_RIDES_PER_REQUEST
    refuse_oversized(path, limit, "rides")
    outcome = FileDispatch(batch_id=f"file-{uuid.uuid4()}")
    valid = sum(len(c.valid) for c in validated_chunks(path, validate_rides, outcome, limit, SCORE_MESSAGE_ROWS))
    if outcome.invalid and not skip_invalid:
        outcome.refused = True
        return outcome
    if valid == 0:
        raise UsageError(f"{path}: none of its {outcome.total} rows is valid; nothing to score")
    chunks_total = -(-valid // SCORE_MESSAGE_ROWS)
    if wait:
        database_answers(settings)
    app = sending_app()

    def send(part: list[dict]) -> None:
        kwargs = {
            "rides": part,
            "batch_id": outcome.batch_id,
            "chunk_index": outcome.chunks,
            "chunks_total": chunks_total,
            "rides_total": valid,
        }
        # Events and Flower show a summary, not 10,000 rides.
        summary = {**kwargs, "rides": f"<{len(part)} rides>"}
        app.send_task(SCORE_RIDES, kwargs=kwargs, kwargsrepr=repr(summary))
        outcome.sent += len(part)
        outcome.chunks += 1

    pending: list[dict] = []
    try:
        for checked in validated_chunks(path, validate_rides, FileCheck(), limit, SCORE_MESSAGE_ROWS):
            pending.extend(to_records(checked.valid))
            while len(pending) >= SCORE_MESSAGE_ROWS:
                send(pending[:SCORE_MESSAGE_ROWS])
                pending = pending[SCORE_MESSAGE_ROWS:]
        if pending:
            send(pending)
    except BaseException as exc:  # the broker went away mid-file, or Ctrl-C
        if outcome.chunks == 0:
            raise  # nothing went: the error as it is
        raise broken_send(settings, path, outcome, valid, chunks_total, exc) from exc
    return outcome


def broken_send(
    settings: Settings, path: str | Path, outcome: FileDispatch, valid: int, chunks_total: int, exc: BaseException
) -> SendBroken:
    """Record the file's batch as failed (else it would show `running` for ever, its last chunks never
    coming) and say what went: the chunks sent are written under it by the workers, the rest never."""
    from worker.store import writes
    from worker.store.database import get_engine

    cause = f"{type(exc).__name__}: {redact(str(exc), settings)}".strip()
    went = f"{outcome.chunks} of {chunks_total} chunks ({outcome.sent:,} of {valid:,} rides)"
    note = f"the send of the file broke after {went}: {cause}; the rest was never sent"
    try:
        writes.record_broken_send(get_engine(settings.database_url), outcome.batch_id, valid, chunks_total, note)
        recorded = f"batch {outcome.batch_id} is recorded failed"
    except Exception as db_exc:  # the database may be down too: say so rather than hide the send's error
        recorded = f"batch {outcome.batch_id} could not be recorded failed ({type(db_exc).__name__})"
    return SendBroken(
        f"{path}: the send broke after {went}: {cause}. {recorded}; the rides sent are written under it "
        "(`batches` shows it). Score the file again once `status` shows the broker up: rows whose trip_id "
        "is already written are skipped, rows without one get new ids"
    )


def wait_for_batch(settings: Settings, batch_id: str, task_id: str | None, timeout: float) -> int:
    """Print progress until the batch is written or failed; exit code 0 only on success."""
    from celery.result import AsyncResult

    from worker.store import writes
    from worker.store.database import get_engine

    engine = get_engine(settings.database_url)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last_line = ""
    result = AsyncResult(task_id) if task_id else None
    while time.monotonic() < deadline:
        state = result.state if result is not None else None
        if state == "FAILURE":
            print(f"failed: {result.result!r}")
            return 1
        row = writes.get_batch(engine, batch_id)
        # Only prune deletes a batch, and a batch it has claimed (a rerun of an old one) is never written:
        # either way there is nothing left to wait for.
        if row is not None and row["status"] == writes.PRUNING:
            print(f"failed: batch {batch_id} is being deleted by prune (older than the retention)")
            return 1
        if row is None and last_line:
            print(f"failed: batch {batch_id} was deleted by prune (older than the retention) while this waited")
            return 1
        if row is None and state == "SUCCESS":  # a task records its batch before it returns
            print(
                f"failed: the task of batch {batch_id} succeeded but this database has no such batch: the workers "
                "write to another DATABASE_URL than this command reads, or prune has deleted it since"
            )
            return 1
        if row is not None:
            line = f"{row['status']}: {row['rows_written']}/{row['rides_requested']} rows, chunk {row['chunks_done']}/{row['chunks_total']}"
            if line != last_line:
                print(line, flush=True)
                last_line = line
            if row["status"] == "succeeded":
                print(
                    f"done: {row['rows_written']} rows written with {row['model_name']} version {row['model_version']} "
                    f"in {time.monotonic() - started:.2f} s (batch {batch_id})"
                )
                return 0
            if row["status"] == "failed":
                print(f"failed: {row['error']}")
                return 1
        time.sleep(0.2)
    print(
        f"timed out after {timeout:.0f} s waiting for batch {batch_id}; it may still finish (python -m worker status)"
    )
    return 1
