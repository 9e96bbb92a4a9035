"""How backfill groups its slots into run_slots messages, tells its progress, and counts what its wait saw."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from worker.cli.backfill import progress_printer, send_slots, slot_runs


def _slots(first: datetime, count: int) -> list[datetime]:
    return [first + timedelta(minutes=5 * i) for i in range(count)]


def test_slots_travel_by_the_clock_hour_they_belong_to():
    """An hour window is (start, end]: the slot at 11:00 closes the 10–11 hour, as monitoring counts it."""
    slots = _slots(datetime(2026, 11, 23, 10, 5, tzinfo=UTC), 14)  # 10:05 .. 11:10
    runs = slot_runs(slots)
    assert [len(run) for run in runs] == [12, 2]
    assert runs[0][-1] == datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    assert [slot for run in runs for slot in run] == slots


def test_a_run_crosses_no_daylight_saving_hour_twice():
    """November's repeated 01:00 in Chicago is two UTC hours, so two runs, each whole."""
    slots = _slots(datetime(2026, 11, 1, 6, 5, tzinfo=UTC), 24)  # 01:05 CDT .. 01:00 CST and on
    assert [len(run) for run in slot_runs(slots)] == [12, 12]


def test_send_slots_sends_a_message_per_hour_and_reports_every_slot(capsys):
    slots = _slots(datetime(2026, 11, 23, 0, 5, tzinfo=UTC), 30)
    sent: list[list[datetime]] = []

    def send(run: list[datetime]) -> list[str]:
        sent.append(run)
        return [slot.isoformat() for slot in run]

    update, stop = progress_printer(len(slots))
    ids = send_slots(slots, 300.0, None, progress=update, queued=lambda: 0, send=send)
    stop()
    assert [len(run) for run in sent] == [12, 12, 6]
    assert ids == [slot.isoformat() for slot in slots]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["sent 12/30 slots", "sent 24/30 slots", "sent 30/30 slots"]


def test_progress_lines_come_about_every_5_percent_though_slots_go_a_dozen_at_a_time(capsys):
    slots = _slots(datetime(2026, 11, 23, 0, 5, tzinfo=UTC), 300)
    update, stop = progress_printer(len(slots))
    send_slots(slots, 300.0, None, progress=update, queued=lambda: 0, send=lambda run: [s.isoformat() for s in run])
    stop()
    done = [int(line.split()[1].split("/")[0]) for line in capsys.readouterr().out.splitlines()]
    assert done[-1] == 300
    assert max(b - a for a, b in zip([0, *done], done, strict=False)) <= 2 * 15  # a step is 15 slots here


def test_an_hour_of_more_slots_than_a_run_takes_goes_in_several_messages():
    """With a short beat interval (10 s: 360 slots an hour) an hour is split, never refused by run_slots."""
    from worker.beat import MAX_SLOTS_PER_RUN

    slots = [datetime(2026, 12, 3, 2, 50, tzinfo=UTC) + timedelta(seconds=10 * i) for i in range(480)]
    runs = slot_runs(slots)
    assert max(len(run) for run in runs) <= MAX_SLOTS_PER_RUN
    assert [slot for run in runs for slot in run] == slots
    assert len({math.ceil(run[0].timestamp() / 3600) for run in runs}) == 3  # still one clock hour per run
    assert all(math.ceil(run[0].timestamp() / 3600) == math.ceil(run[-1].timestamp() / 3600) for run in runs)


def _ledger(tmp_path):
    from worker.store.database import build_engine, migrate

    url = f"sqlite:///{tmp_path / 'p.db'}"
    migrate(url)
    return build_engine(url)


def test_a_refused_message_ends_the_wait_for_the_slots_it_never_recorded(tmp_path):
    """The message of two slots failed before recording either (a real SQLite result backend holds its
    failure, as a worker stores it); a third slot of another message is still to come."""
    from celery import Celery

    from worker.cli.backfill import wait_for_slots

    results = Celery(backend=f"db+sqlite:///{tmp_path / 'results.db'}")
    results.backend.mark_as_failure("refused-run", ValueError("rides must be at most MAX_RIDES_PER_REQUEST=10, got 30"))
    tasks = {"schedule-a": "refused-run", "schedule-b": "refused-run", "schedule-c": "running-run"}
    outcome = wait_for_slots(_ledger(tmp_path), sorted(tasks), timeout=1.0, tasks=tasks, results=results)
    assert (outcome.failed, outcome.waiting, outcome.written) == (2, 1, 0)
    assert outcome.refused == dict.fromkeys(
        ["schedule-a", "schedule-b"], "ValueError: rides must be at most MAX_RIDES_PER_REQUEST=10, got 30"
    )
    assert outcome.failed_ids == []  # no batch row to rerun: the same backfill sends them again


def test_a_failed_message_leaves_the_slots_it_recorded_to_their_rows(tmp_path):
    """A message that recorded one of its slots before it failed: that slot's own row says how it
    ends (a retry or a rerun may still finish it), so only the slot it never recorded is refused."""
    from celery import Celery

    from worker.cli.backfill import refused_slots, wait_for_slots
    from worker.store.schema import batch_runs

    results = Celery(backend=f"db+sqlite:///{tmp_path / 'results.db'}")
    results.backend.mark_as_failure("half-run", OSError("the database went away"))
    ledger = _ledger(tmp_path)
    with ledger.begin() as conn:
        conn.execute(
            batch_runs.insert().values(batch_id="schedule-a", trigger="schedule", rides_requested=1, status="running")
        )
    tasks = {"schedule-a": "half-run", "schedule-b": "half-run"}
    assert refused_slots(ledger, sorted(tasks), tasks, results) == {"schedule-b": "OSError: the database went away"}
    outcome = wait_for_slots(ledger, sorted(tasks), timeout=1.0, tasks=tasks, results=results)
    assert (outcome.failed, outcome.waiting, list(outcome.refused)) == (1, 1, ["schedule-b"])


def test_an_unreachable_result_backend_leaves_the_wait_to_the_batches(tmp_path, caplog):
    """The result backend only shortens the wait; when it cannot be asked (nothing listens on port 1
    here), --wait goes on watching the batches' rows, as it did before it asked."""
    from celery import Celery

    from worker.cli.backfill import wait_for_slots

    results = Celery(backend="redis://127.0.0.1:1/0")
    outcome = wait_for_slots(
        _ledger(tmp_path), ["schedule-a"], timeout=1.0, tasks={"schedule-a": "some-run"}, results=results
    )
    assert (outcome.failed, outcome.waiting) == (0, 1)
    assert "cannot ask the result backend how the sent messages ended (ConnectionError" in caplog.text


def test_a_backfill_leaves_alone_the_slots_a_prune_is_deleting(tmp_path):
    """A slot whose batch a prune has claimed is neither sent nor reopened, whether the prune claimed
    it before the plan was made or between the plan and the send (its rows may be half deleted)."""
    from worker.beat import schedule_batch_id
    from worker.cli.backfill import plan_backfill, reopen_failed
    from worker.store.schema import batch_runs

    ledger = _ledger(tmp_path)
    start = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    slots = [start + timedelta(minutes=5 * k) for k in range(4)]
    states = ["succeeded", "pruning", "failed", "failed"]
    with ledger.begin() as conn:
        for slot, status in zip(slots, states, strict=True):
            conn.execute(
                batch_runs.insert().values(
                    batch_id=schedule_batch_id(slot), trigger="schedule", rides_requested=1, status=status, attempts=1
                )
            )
    plan = plan_backfill(ledger, 300, slots[0], slots[-1] + timedelta(minutes=5), datetime.now(UTC), False)
    assert (plan.already_written, plan.being_pruned, plan.to_send) == ([slots[0]], [slots[1]], slots[2:])
    with ledger.begin() as conn:  # a prune claims the third slot after the plan was made
        conn.execute(
            batch_runs.update().where(batch_runs.c.batch_id == schedule_batch_id(slots[2])).values(status="pruning")
        )
    run, before = reopen_failed(ledger, plan, plan.to_send)
    assert run == [slots[3]] and list(before) == [slots[3]] and plan.being_pruned == slots[1:3]
    with ledger.connect() as conn:
        found = {row.batch_id: row.status for row in conn.execute(batch_runs.select())}
    assert [found[schedule_batch_id(slot)] for slot in slots] == ["succeeded", "pruning", "pruning", "retrying"]
