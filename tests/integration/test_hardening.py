"""What a review found (issue 18), on real Redis, PostgreSQL, MLflow and worker processes: a backfill
whose send fails leaves its slot exactly as it was; no broker client can add rows to a batch that did
not plan them; one slot has one name, whatever offset it is written with."""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
import redis

from tests.reliability.services import RedisServer
from worker.rides.generator import CHICAGO

pytestmark = pytest.mark.integration

RIDE = {
    "pickup_community_area": 8,
    "dropoff_community_area": 32,
    "trip_start_timestamp": "2026-11-26T08:00:00",
    "fare": 9.0,
    "trip_miles": 2.0,
}


def _past_slot(hours_back: float, interval: float = 300.0) -> datetime:
    at = datetime.now(UTC).timestamp() - hours_back * 3600
    return datetime.fromtimestamp(math.floor(at / interval) * interval, UTC)


def _row(stack, batch_id: str):
    rows = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)
    return rows[0]._asdict() if rows else None


def test_a_chunk_its_batch_did_not_plan_is_refused_and_changes_nothing(stack):
    client = stack.client()
    # A one-chunk ad-hoc batch, and a slot's batch, both written.
    adhoc = client.send_task("worker.tasks.run_batch", kwargs={"rides": 20}).get(timeout=120)["batch_id"]
    slot = _past_slot(30)
    scheduled = client.send_task(
        "worker.tasks.run_batch", kwargs={"rides": 20, "interval": 300.0, "slot": slot.isoformat()}
    ).get(timeout=120)["batch_id"]
    before = {b: _row(stack, b) for b in (adhoc, scheduled)}
    window = [
        (datetime(2026, 11, 26, 8)).isoformat(),
        (datetime(2026, 11, 26, 8, 5)).isoformat(),
    ]
    refusals = {
        # rows added to a scheduled batch by score_rides
        "score_rides": ({"rides": [RIDE], "batch_id": scheduled}, "it takes no chunk of rides a caller gives"),
        # a chunk index the batch never planned
        "predict_chunk": (
            {"batch_id": adhoc, "chunk_index": 1, "rides": 5, "seed": 1, "window": window},
            "was planned with 1 chunk(s); chunk 1 is not one",
        ),
    }
    for task, (kwargs, message) in refusals.items():
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
            client.send_task(f"worker.tasks.{task}", kwargs=kwargs).get(timeout=60)
    with pytest.raises(Exception, match="chunk_index must be a whole number from 0 to chunks_total - 1"):
        client.send_task("worker.tasks.score_rides", kwargs={"rides": [RIDE], "chunk_index": 3}).get(timeout=60)
    with pytest.raises(Exception, match=r"chunks_total must be a whole number from 1 to 1,048,576 \(a trip id"):
        client.send_task(
            "worker.tasks.score_rides", kwargs={"rides": [RIDE], "chunk_index": 1 << 20, "chunks_total": (1 << 20) + 1}
        ).get(timeout=60)
    with pytest.raises(Exception, match="is not recorded; predict_chunk belongs to a run_batch"):
        client.send_task(
            "worker.tasks.predict_chunk",
            kwargs={"batch_id": f"adhoc-{uuid.uuid4()}", "chunk_index": 0, "rides": 5, "seed": 1, "window": window},
        ).get(timeout=60)
    for batch_id, row in before.items():
        after = _row(stack, batch_id)
        assert (after["rows_written"], after["chunks_done"], after["status"], after["attempts"]) == (
            row["rows_written"],
            row["chunks_done"],
            row["status"],
            row["attempts"],
        ), batch_id
        counted = stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0]
        assert counted == 20


def test_one_slot_has_one_name_whatever_its_offset_and_an_off_grid_slot_is_refused(stack):
    client = stack.client()
    slot = _past_slot(31)
    spellings = [
        slot.isoformat(),
        slot.strftime("%Y-%m-%dT%H:%M:%SZ"),
        slot.astimezone(datetime.now(UTC).astimezone().tzinfo).isoformat(),
        (slot - timedelta(hours=6)).replace(tzinfo=None).isoformat() + "-06:00",
    ]
    ids = {
        client.send_task("worker.tasks.run_batch", kwargs={"rides": 10, "interval": 300.0, "slot": text}).get(
            timeout=120
        )["batch_id"]
        for text in spellings
    }
    assert ids == {f"schedule-{slot.isoformat()}"}
    assert stack.sql("SELECT count(*) FROM batch_runs WHERE slot = :s", s=slot)[0][0] == 1
    off_grid = (slot + timedelta(seconds=7)).isoformat()
    with pytest.raises(Exception, match="is not on beat's grid of 300 s"):
        client.send_task("worker.tasks.run_batch", kwargs={"rides": 10, "interval": 300.0, "slot": off_grid}).get(
            timeout=60
        )
    assert stack.sql("SELECT count(*) FROM batch_runs WHERE batch_id = :b", b=f"schedule-{off_grid}")[0][0] == 0


def test_a_backfill_that_cannot_send_puts_the_failed_slot_back_exactly(make_stack, fresh_pg_url):
    """The broker answers reads but refuses writes (a Redis user without write commands): the queue
    check passes, the send fails. The failed slot it reopened is put back as it was, not left
    `retrying` for ever (later backfills would skip it as in flight)."""
    with RedisServer() as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.execute_command(
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">reader-pw",
            "~*",
            "&*",
            "+@read",
            "+@connection",
            "+@transaction",
            "+select",
        )
        stack = make_stack(fresh_pg_url, CELERY_BROKER_URL=f"redis://reader:reader-pw@127.0.0.1:{server.port}/0")
        slot = _past_slot(2)
        batch_id = f"schedule-{slot.isoformat()}"
        finished = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
        stack.sql_exec(
            "INSERT INTO batch_runs (batch_id, trigger, seed, rides_requested, status, attempts, error, slot, "
            "window_start, window_end, finished_at) VALUES (:b, 'schedule', '7', 10, 'failed', 3, "
            "'OperationalError: gone', :s, now(), now(), :f)",
            b=batch_id,
            s=slot,
            f=finished,
        )
        before = _row(stack, batch_id)
        done = stack.cli("backfill", "--from", slot.isoformat(), "--to", (slot + timedelta(minutes=5)).isoformat())
        assert done.returncode == 1, done.stdout + done.stderr
        assert "NOPERM" in done.stderr or "permission" in done.stderr.lower(), done.stderr
        after = _row(stack, batch_id)
        kept = ("status", "error", "attempts", "finished_at")
        assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
        assert after["finished_at"] == finished


class Constant:
    """A stand-in model for writing rows fast (what is predicted does not matter to these tests)."""

    def predict(self, rides):
        import numpy as np

        return np.full(len(rides), 12.0)


def _reference():
    from worker.rides.generator import RIDE_COLUMNS, generate_rides

    rides = generate_rides(20_000, seed=3)
    frame = rides[list(RIDE_COLUMNS)].copy()
    frame["predicted_duration"] = 12.0
    frame["actual_duration"] = rides["trip_seconds"] / 60.0
    return frame


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 11, 1), 25), (date(2026, 3, 8), 23)])
def test_hour_windows_follow_the_clock_across_daylight_saving(fresh_pg_url, day, hours):
    """Every half-hour slot of a Chicago day that daylight saving lengthens or shortens, written and
    monitored as beat's batches are. Keyed by wall time, November's two 01:00-02:00 hours were one
    window of four batches; keyed by instants there is one window per hour the day really had, two
    batches each, and each shown at its Chicago wall time."""
    from sqlalchemy import create_engine, text

    from worker import batch
    from worker.beat import slot_window
    from worker.model.registry import LoadedModel
    from worker.monitor.batches import monitor_window
    from worker.rides.generator import Window
    from worker.store import writes

    interval = 1800
    engine = create_engine(fresh_pg_url)
    reference = _reference()
    model = LoadedModel(Constant(), "m", "1")
    first = datetime.combine(day, datetime.min.time(), CHICAGO).astimezone(UTC)
    last = datetime.combine(day + timedelta(days=1), datetime.min.time(), CHICAGO).astimezone(UTC)
    slot, slots = first + timedelta(seconds=interval), 0
    while slot <= last:
        start, end = slot_window(slot.isoformat(), interval)
        batch_id = f"schedule-{slot.isoformat()}"
        writes.start_batch(engine, batch_id=batch_id, trigger="schedule", rides_requested=20, chunks_total=1,
                           task_id=None, seed=slots, window=(start, end), attempt=1, slot=slot,
                           sent_by="beat")  # fmt: skip
        writes.pin_model(engine, batch_id, "m", "1", "alias")
        batch.run_generated_chunk(
            engine, model, batch_id=batch_id, chunk_index=0, rides=20, seed=slots, window=Window(start, end)
        )
        monitor_window(engine, slot, "m", "1", lambda *_: reference)
        slot, slots = slot + timedelta(seconds=interval), slots + 1
    with engine.connect() as conn:
        windows = conn.execute(
            text(
                "SELECT window_end, window_end AT TIME ZONE 'America/Chicago' AS shown, batches, rows "
                "FROM window_metrics WHERE window_end > :first AND window_end <= :last ORDER BY window_end"
            ),
            {"first": first, "last": last},
        ).all()
    engine.dispose()
    assert slots == hours * 2
    assert len(windows) == hours, [str(w.shown) for w in windows]
    assert [(w.batches, w.rows) for w in windows] == [(2, 40)] * hours
    assert all(
        later.window_end - earlier.window_end == timedelta(hours=1) for earlier, later in itertools.pairwise(windows)
    )
    shown = [w.shown.strftime("%H:%M") for w in windows]
    if hours == 25:
        assert shown[:3] == ["01:00", "01:00", "02:00"]  # at 02:00 CDT the clocks went back to 01:00 CST
    else:
        assert shown[:3] == ["01:00", "03:00", "04:00"]  # 02:00-03:00 did not exist


def test_concurrent_monitors_of_one_hour_leave_it_computed_from_all_its_batches(fresh_pg_url):
    """A backfill finishes an hour's twelve slots nearly at once, and each slot's monitoring recomputes
    the hour. Without a lock per window the last writer wins, and it may have read a subset: here the
    first slot's monitor is the slow one (its reference is a hundred times larger, so its drift tests
    take a second or two), reads its hour while it holds one batch, and would write last."""
    import threading

    from sqlalchemy import create_engine

    from worker import batch
    from worker.model.registry import LoadedModel
    from worker.monitor.batches import monitor_window
    from worker.rides.generator import Window
    from worker.store import writes

    # Twelve monitors at once in one process (a worker runs one or two): a pool for all of them.
    engine = create_engine(fresh_pg_url, pool_size=30)
    reference = _reference()
    large = pd.concat([reference] * 100, ignore_index=True)
    large["trip_start_timestamp"] = pd.Timestamp("2026-11-20 08:30")  # every row in the hours compared
    model = LoadedModel(Constant(), "m", "1")
    failures = []
    for hour in range(2):
        start = datetime(2026, 11, 20, 8 + hour)
        threads = []
        for k in range(12):
            window = Window(start + timedelta(minutes=5 * k), start + timedelta(minutes=5 * (k + 1)))
            slot = window.end.replace(tzinfo=CHICAGO).astimezone(UTC)  # the instant the window ends
            batch_id = f"schedule-h{hour}-{k}"
            writes.start_batch(engine, batch_id=batch_id, trigger="schedule", rides_requested=100, chunks_total=1,
                               task_id=None, seed=k, window=(window.start, window.end), attempt=1,
                               slot=slot)  # fmt: skip
            writes.pin_model(engine, batch_id, "m", "1", "alias")
            batch.run_generated_chunk(engine, model, batch_id=batch_id, chunk_index=0, rides=100, seed=k, window=window)
            frame = large if k == 0 else reference
            thread = threading.Thread(
                target=monitor_window, args=(engine, slot, "m", "1", lambda *_, f=frame: f), daemon=True
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=120)
        stored = stack_row = None
        with engine.connect() as conn:
            from sqlalchemy import text

            stack_row = conn.execute(
                text("SELECT batches, rows FROM window_metrics WHERE window_end = :e"),
                {"e": (start + timedelta(hours=1)).replace(tzinfo=CHICAGO).astimezone(UTC)},
            ).one()
        stored = tuple(stack_row)
        if stored != (12, 1200):
            failures.append((hour, stored))
    engine.dispose()
    assert failures == [], f"hours left computed from a subset of their batches: {failures}"
