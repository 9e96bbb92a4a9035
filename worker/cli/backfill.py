"""`python -m worker backfill`: send the beat slots of a past range that never ran.

Each slot is sent exactly as beat would have sent it (same kwargs, batch id
`schedule-<slot>`), so the exactly-once machinery treats a backfilled slot and
beat's own alike: a slot already written is skipped, a missed one is filled,
and two backfills of one range write each slot once. The slots of one clock
hour travel in one run_slots message, which scores them together (the
per-batch fixed costs paid once an hour, not once a slot). Messages go out only
while the queue is short, so a week of slots never buries beat's current one.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from worker.beat import MAX_SLOTS_PER_RUN, slot_start
from worker.cli.dispatching import dispatch_slots, queue_length
from worker.cli.errors import UsageError
from worker.rides.generator import CALIBRATED, World
from worker.settings import Settings, redact
from worker.store import writes
from worker.store.history import finished, slot_grid, statuses

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

MAX_SLOTS = 2016  # one week of 5-minute slots; more needs --yes
MAX_SLOTS_EVER = 366 * 288  # a year of 5-minute slots, even with --yes: a longer range goes in parts
DEFAULT_MAX_QUEUED = 10  # messages; each carries up to an hour of slots
IN_FLIGHT = ("running", "retrying")
REFUSALS_EVERY = 2.0  # seconds between asks of the result backend while --wait waits


@dataclass
class BackfillPlan:
    slots: list[datetime]
    already_written: list[datetime] = field(default_factory=list)
    in_flight: list[datetime] = field(default_factory=list)
    to_send: list[datetime] = field(default_factory=list)
    failed: set[datetime] = field(default_factory=set)  # among to_send: they ran and failed
    # Old batches a prune is deleting: not sent (a rerun would race the delete); back them up once it is done.
    being_pruned: list[datetime] = field(default_factory=list)


def batch_id_of(slot: datetime) -> str:
    from worker.beat import schedule_batch_id

    return schedule_batch_id(slot)


def plan_backfill(
    engine: Engine, interval: float, start: datetime, end: datetime, now: datetime, allow_many: bool
) -> BackfillPlan:
    """The slots of [start, end) and what each needs; refuses a range that is empty, in the future or too big."""
    if end <= start:
        raise UsageError(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
    current = slot_start(interval, now.timestamp())
    # Counted before any is built: 1900 to now is 13 million slots, which took minutes and gigabytes.
    count = math.ceil(end.timestamp() / interval) - math.ceil(start.timestamp() / interval)
    if count > MAX_SLOTS_EVER:
        raise UsageError(f"{count} slots is more than {MAX_SLOTS_EVER} (a year of 5-minute slots); send it in parts")
    if count > MAX_SLOTS and not allow_many:
        raise UsageError(
            f"{count} slots is more than {MAX_SLOTS} (one week of 5-minute slots); add --yes to send them all"
        )
    slots = slot_grid(start, end, interval)
    if not slots:
        raise UsageError(f"no beat slot (every {interval:g} s on the clock) lies in [--from, --to)")
    if slots[-1] > current:
        raise UsageError(
            f"the range reaches past the current slot {current.isoformat()}: future slots are beat's job; "
            f"end --to at {datetime.fromtimestamp(current.timestamp() + interval, UTC).isoformat()} or earlier"
        )
    ids = {batch_id_of(slot): slot for slot in slots}
    status = statuses(engine, list(ids))
    plan = BackfillPlan(slots)
    for batch_id, slot in ids.items():
        state = status.get(batch_id)
        if state == "succeeded":
            plan.already_written.append(slot)
        elif state in IN_FLIGHT:
            plan.in_flight.append(slot)
        elif state == writes.PRUNING:
            plan.being_pruned.append(slot)
        else:  # never ran, or failed: sending it runs the batch with its stored plan
            plan.to_send.append(slot)
            if state == "failed":
                plan.failed.add(slot)
    return plan


def reopen_failed(
    engine: Engine, plan: BackfillPlan, run: list[datetime]
) -> tuple[list[datetime], dict[datetime, dict | None]]:
    """Show the run's failed slots as retrying before they are sent; returns the slots to send and
    what each reopened row held (for `undo_reopen`). A slot a prune claimed since the plan was made
    is not sent (it joins `plan.being_pruned`): its rows may be half deleted."""
    before: dict[datetime, dict | None] = {}
    for slot in [slot for slot in run if slot in plan.failed]:
        try:
            before[slot] = writes.reopen_batch(engine, batch_id_of(slot), "backfill requested")
        except writes.BatchPruned:
            plan.being_pruned.append(slot)
    return [slot for slot in run if slot not in plan.being_pruned], before


def slot_runs(slots: list[datetime]) -> list[list[datetime]]:
    """The slots grouped by the clock hour (start, end] they belong to, as monitoring's windows are:
    one message, one scoring, one monitoring of the hour per group. An hour of more slots than a run
    takes (a beat interval under 12.5 s) goes in several messages."""
    hours: dict[int, list[datetime]] = {}
    for slot in slots:
        hours.setdefault(math.ceil(slot.timestamp() / 3600), []).append(slot)
    return [
        hour[first : first + MAX_SLOTS_PER_RUN]
        for hour in hours.values()
        for first in range(0, len(hour), MAX_SLOTS_PER_RUN)
    ]


def send_slots(
    slots: list[datetime],
    interval: float,
    rides: int | None,
    world: World = CALIBRATED,
    max_queued: int = DEFAULT_MAX_QUEUED,
    progress: Callable[[int, int], None] | None = None,
    queued: Callable[[], int] = queue_length,
    send: Callable[[list[datetime]], list[str]] | None = None,
    stall_seconds: float = 600.0,
) -> list[str]:
    """Send the slots an hour per message, waiting while `max_queued` or more messages are still
    waiting for a worker; returns the batch ids sent.

    If no worker takes a message for `stall_seconds`, stop with a UsageError that says so (the
    slots sent so far are in the queue and will be written once a worker runs)."""
    sent: list[str] = []
    for run in slot_runs(slots):
        stalled_since = time.monotonic()
        while (waiting := queued()) >= max_queued:
            if time.monotonic() - stalled_since > stall_seconds:
                raise UsageError(
                    f"{waiting} messages have waited in the queue for {stall_seconds:.0f} s and no worker took one; "
                    f"sent {len(sent)} of {len(slots)} slots (is a worker running? then run the same backfill again)"
                )
            time.sleep(0.2)
        sent += send(run) if send is not None else dispatch_slots(run, interval, rides, world, sent_by="backfill")
        if progress is not None:
            progress(len(sent), len(slots))
    return sent


def progress_printer(total: int) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress bar on a terminal; plain lines (about every 5 %) otherwise."""
    if sys.stdout.isatty():
        from rich.progress import Progress

        bar = Progress(transient=False)
        task = bar.add_task("sending slots", total=total)
        bar.start()
        return (lambda done, _total: bar.update(task, completed=done)), bar.stop
    step = max(1, total // 20)
    printed = [0]

    def line(done: int, all_: int) -> None:
        """`done` grows by a message's slots at a time, so a line each time it passes a step."""
        if done // step > printed[0] // step or done == all_:
            printed[0] = done
            print(f"sent {done}/{all_} slots", flush=True)

    return line, lambda: None


@dataclass
class Outcome:
    written: int = 0
    rows: int = 0
    failed: int = 0
    waiting: int = 0
    failed_ids: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # batch id: why its message failed unrecorded


def refused_slots(
    engine: Engine, pending: list[str], tasks: Mapping[str, str], results: Celery | None = None
) -> dict[str, str]:
    """The pending batches whose message failed before recording them, with the message's error. A
    worker refuses a run whose slots it will not take (its own MAX_RIDES_PER_REQUEST below this
    command's, say) before any batch exists, so no batch row would ever say so. `results`: the app
    whose result backend is asked (the service's own by default)."""
    if results is None:
        from worker.celery_app import app as results

    errors: dict[str, str] = {}
    for task_id in sorted({tasks[batch_id] for batch_id in pending if batch_id in tasks}):
        result = results.AsyncResult(task_id)
        if result.state == "FAILURE":
            errors[task_id] = f"{type(result.result).__name__}: {result.result}"
    failed = [batch_id for batch_id in pending if tasks.get(batch_id) in errors]
    recorded = statuses(engine, failed) if failed else {}  # a recorded batch's own row says how it ended
    return {batch_id: errors[tasks[batch_id]] for batch_id in failed if batch_id not in recorded}


def wait_for_slots(
    engine: Engine,
    batch_ids: list[str],
    timeout: float,
    tasks: Mapping[str, str] | None = None,
    results: Celery | None = None,
) -> Outcome:
    """Until every sent batch has succeeded or failed (or the timeout). `tasks` maps batch ids to the
    id of the message that carried them, whose failure ends the wait for batches it never recorded
    (asked of `results`' backend, see refused_slots)."""
    deadline = time.monotonic() + timeout
    pending = set(batch_ids)
    outcome = Outcome()
    asked = 0.0
    while pending and time.monotonic() < deadline:
        for batch_id, status, rows in finished(engine, sorted(pending)):
            pending.discard(batch_id)
            if status == "succeeded":
                outcome.written += 1
                outcome.rows += rows
            else:
                outcome.failed += 1
                outcome.failed_ids.append(batch_id)
        if pending and tasks and time.monotonic() - asked >= REFUSALS_EVERY:
            asked = time.monotonic()
            try:
                refused = refused_slots(engine, sorted(pending), tasks, results)
            except Exception as exc:  # only a shortcut: the batches' rows still decide, as before it
                log.warning(
                    "cannot ask the result backend how the sent messages ended (%s: %s); waiting on the batches alone",
                    type(exc).__name__,
                    redact(str(exc)),  # the log handlers redact with the settings too
                )
                tasks, refused = None, {}
            for batch_id, error in refused.items():
                pending.discard(batch_id)
                outcome.failed += 1
                outcome.refused[batch_id] = error
        if pending:
            time.sleep(0.5)
    outcome.waiting = len(pending)
    return outcome


def run_backfill(
    settings: Settings,
    engine: Engine,
    start: datetime,
    end: datetime,
    rides: int | None,
    world: World,
    wait: bool,
    allow_many: bool,
    timeout: float,
    max_queued: int = DEFAULT_MAX_QUEUED,
) -> int:
    interval = settings.BATCH_INTERVAL_SECONDS
    plan = plan_backfill(engine, interval, start, end, datetime.now().astimezone(), allow_many)
    print(
        f"{len(plan.slots)} slots from {plan.slots[0].isoformat()} to {plan.slots[-1].isoformat()}: "
        f"{len(plan.to_send)} to send, {len(plan.already_written)} already written, {len(plan.in_flight)} in flight"
        + (f", {len(plan.being_pruned)} being deleted by prune (not sent)" if plan.being_pruned else "")
    )

    tasks: dict[str, str] = {}  # batch id: the message that carries it

    def send(run: list[datetime]) -> list[str]:
        """A failed slot shows as retrying until a worker runs it again, so --wait does not count the
        old failure as this backfill's result; if the run cannot be sent, its slots are put back
        exactly as they were (else later backfills would skip them as in flight, for ever)."""
        run, before = reopen_failed(engine, plan, run)
        if not run:
            return []
        task_id = str(uuid.uuid4())
        try:
            ids = dispatch_slots(run, interval, rides, world, sent_by="backfill", task_id=task_id)
            tasks.update(dict.fromkeys(ids, task_id))
            return ids
        except Exception:
            for slot, row in before.items():
                if row is not None:
                    writes.undo_reopen(engine, batch_id_of(slot), row)
            raise

    sent: list[str] = []
    if plan.to_send:
        update, stop = progress_printer(len(plan.to_send))
        try:
            sent = send_slots(
                plan.to_send,
                interval,
                rides,
                world,
                max_queued,
                update,
                send=send,
                stall_seconds=min(timeout, 600.0),
            )
        finally:
            stop()
    if not wait:
        if plan.being_pruned:
            print(f"{len(plan.being_pruned)} slots not sent: a prune is deleting their old batches")
        return 0
    outcome = wait_for_slots(engine, sent + [batch_id_of(s) for s in plan.in_flight], timeout, tasks)
    print(
        f"backfill done: {outcome.written} written ({outcome.rows} rows), "
        f"{len(plan.already_written)} already there, {outcome.failed} failed"
        + (f", {len(plan.being_pruned)} not sent as prune was deleting them" if plan.being_pruned else "")
        + (f", {outcome.waiting} still running after {timeout:.0f} s" if outcome.waiting else "")
        + (f" (rerun with: python -m worker rerun {outcome.failed_ids[0]})" if outcome.failed_ids else "")
    )
    if outcome.refused:
        first = sorted(outcome.refused)[0]
        print(
            f"{len(outcome.refused)} slots were refused by the worker before it recorded them, e.g. {first}: "
            f"{redact(outcome.refused[first], settings)} (run the same backfill again once that is fixed)"
        )
    return 0 if not outcome.failed and not outcome.waiting else 1
