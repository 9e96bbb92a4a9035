"""A run of beat slots scored together (run_slots, what backfill sends), on real PostgreSQL, Redis,
MLflow and worker processes: each slot is still its own batch, written once with the very rides
and ids its own run_batch would write, whoever else writes the same slot, and monitored."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.support import assert_each_batch_written_once, start_one_chunk_batch, wait_until
from worker.beat import schedule_batch_id
from worker.model.reference import ReferenceCache
from worker.model.registry import configure_mlflow
from worker.monitor.batches import monitor_batch, monitor_run
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import Window, World
from worker.store.database import build_engine
from worker.store.writes import PREDICTION_COLUMNS, write_batches, write_chunk

pytestmark = pytest.mark.integration

RUN_SLOTS = "worker.tasks.run_slots"


def _slots(day: int, count: int, hour: int = 10) -> list[str]:
    """`count` 5-minute slots of a day in October 2026 (each test its own day: the stack is shared)."""
    first = datetime(2026, 10, day, hour, 5, tzinfo=UTC)
    return [(first + timedelta(minutes=5 * i)).isoformat() for i in range(count)]


def _ids(slots: list[str]) -> list[str]:
    return [schedule_batch_id(datetime.fromisoformat(slot)) for slot in slots]


def _send(stack, slots: list[str], task_id: str | None = None, **kwargs):
    return stack.client().send_task(
        RUN_SLOTS, kwargs={"slots": slots, "interval": 300.0, "rides": 60, **kwargs}, task_id=task_id
    )


def test_a_run_writes_each_slot_as_its_own_batch_with_the_rides_its_plan_makes_and_monitors_the_hour_once(stack):
    slots = _slots(1, 4)
    ids = _ids(slots)
    alone = stack.client().send_task(
        "worker.tasks.run_batch", kwargs={"slot": slots[1], "interval": 300.0, "rides": 60, "sent_by": "backfill"}
    )
    assert alone.get(timeout=120)["rows_written"] == 60

    result = _send(stack, slots).get(timeout=120)

    assert (result["slots"], result["written"], result["already_written"], result["rows_written"]) == (4, 3, 1, 180)
    assert result["batch_ids"] == ids
    assert_each_batch_written_once(stack, ids)
    runs = {row.batch_id: row for row in stack.sql("SELECT * FROM batch_runs WHERE batch_id = ANY(:ids)", ids=ids)}
    assert {(row.trigger, row.sent_by, row.model_version) for row in runs.values()} == {
        ("schedule", "backfill", runs[ids[1]].model_version)
    }
    assert [runs[b].slot for b in ids] == [datetime.fromisoformat(slot) for slot in slots]
    # The rides and trip ids are exactly those the batch's own plan makes (what run_batch writes for it).
    for batch_id in ids:
        run = runs[batch_id]
        planned = generated_chunk(
            batch_id,
            int(run.seed),
            0,
            run.rides_requested,
            Window(run.window_start, run.window_end),
            World(run.speed_factor, run.fare_factor),
            run.started_at,
        ).sort_values("trip_id")
        stored = stack.sql(
            "SELECT trip_id::text, pickup_community_area, fare, trip_start_timestamp FROM ride_predictions "
            "WHERE batch_id = :b ORDER BY trip_id",
            b=batch_id,
        )
        assert [r.trip_id for r in stored] == [str(uuid.UUID(t)) for t in planned["trip_id"]]
        assert [r.pickup_community_area for r in stored] == planned["pickup_community_area"].tolist()
        assert np.allclose([r.fare for r in stored], planned["fare"].to_numpy())
        outcomes = stack.sql(
            "SELECT count(*) FROM ride_outcomes o JOIN ride_predictions p USING (trip_id) WHERE p.batch_id = :b",
            b=batch_id,
        )[0][0]
        assert outcomes == 60

    # Monitored: each batch's metrics, and their clock hour (10:00, 11:00] from all four batches.
    def all_metrics() -> list | None:
        rows = stack.sql("SELECT batch_id, monitor_status, rows FROM batch_metrics WHERE batch_id = ANY(:ids)", ids=ids)
        return rows if len(rows) == 4 else None

    metrics = wait_until("metrics of every batch of the run", all_metrics, 120)
    assert {(row.monitor_status, row.rows) for row in metrics} == {("ok", 60)}
    hour = wait_until(
        "the hour's window from all four batches",
        lambda: stack.sql(
            "SELECT batches, rows FROM window_metrics WHERE window_end = :end AND batches = 4",
            end=datetime(2026, 10, 1, 11, 0, tzinfo=UTC),
        ),
        120,
    )
    assert hour[0].rows == 240


def test_the_same_run_delivered_twice_writes_once_and_says_so(stack):
    slots = _slots(2, 3)
    task_id = str(uuid.uuid4())
    first = _send(stack, slots, task_id).get(timeout=120)
    assert (first["written"], first["already_written"]) == (3, 0)
    _send(stack, slots, task_id)  # the broker hands the same message out again
    stack.wait_for_log("worker-shared", "run of 3 slots: 0 written (0 rows), 3 already written", 60)
    assert_each_batch_written_once(stack, _ids(slots))
    attempts = stack.sql("SELECT attempts FROM batch_runs WHERE batch_id = ANY(:ids)", ids=_ids(slots))
    assert {row.attempts for row in attempts} == {1}  # a succeeded batch is not counted again


def test_a_late_message_of_a_slot_prune_is_deleting_writes_nothing_for_it(stack):
    """An old slot's batch claimed by a prune (status `pruning`, its rows half gone): a run of it and
    two new slots writes the new ones and says one is being pruned; a run_batch of it alone fails at
    once, naming the prune, without a retry. The claimed batch keeps its status and gets no row."""
    pruning = []  # made-up `pruning` rows: the stack is shared, and a prune elsewhere would finish them
    try:
        slots = _slots(6, 3)
        ids = _ids(slots)
        pruning.append(ids[0])
        stack.sql_exec(
            "INSERT INTO batch_runs (batch_id, trigger, seed, rides_requested, status, window_start, window_end, slot, "
            "attempts) VALUES (:b, 'schedule', '7', 60, 'pruning', :s, :s, :s, 1)",
            b=ids[0],
            s=datetime.fromisoformat(slots[0]),
        )
        result = _send(stack, slots).get(timeout=120)
        assert (result["written"], result["already_written"], result["being_pruned"]) == (2, 0, 1), result
        assert_each_batch_written_once(stack, ids[1:])

        alone = stack.client().send_task(
            "worker.tasks.run_batch", kwargs={"slot": slots[0], "interval": 300.0, "rides": 60, "sent_by": "backfill"}
        )
        with pytest.raises(Exception) as failed:
            alone.get(timeout=120)
        assert type(failed.value).__name__ == "BatchPruned"
        assert (
            str(failed.value)
            == f"batch {ids[0]} is being deleted by prune (older than the retention); nothing was written"
        )
        row = stack.sql(
            "SELECT status, attempts, (SELECT count(*) FROM ride_predictions WHERE batch_id = :b) AS n "
            "FROM batch_runs WHERE batch_id = :b",
            b=ids[0],
        )[0]
        assert (row.status, row.attempts, row.n) == ("pruning", 1, 0)

        # A fan-out chunk of it, and a chunk of a file's batch being pruned, fail the same way, before any
        # prediction: even where the ledger still holds the chunk (its rows not deleted yet), which would
        # otherwise pass for an earlier delivery's write.
        chunk = stack.client().send_task(
            "worker.tasks.predict_chunk",
            kwargs={"batch_id": ids[0], "chunk_index": 0, "rides": 60, "seed": 7, "window": [slots[0], slots[0]]},
        )
        file_batch = f"file-{uuid.uuid4()}"
        pruning.append(file_batch)
        stack.sql_exec(
            "INSERT INTO batch_runs (batch_id, trigger, rides_requested, chunks_total, status, attempts) "
            "VALUES (:b, 'file', 2, 2, 'pruning', 1)",
            b=file_batch,
        )
        for batch_id, index in ((ids[0], 0), (file_batch, 1)):
            stack.sql_exec(
                "INSERT INTO batch_chunks (batch_id, chunk_index, rows_written, model_version) VALUES (:b, :i, 1, '1')",
                b=batch_id,
                i=index,
            )
        ride = {
            "pickup_community_area": 8,
            "dropoff_community_area": 32,
            "trip_start_timestamp": "2026-10-06T08:00:00",
            "fare": 9.0,
            "trip_miles": 2.0,
        }
        scored = stack.client().send_task(
            "worker.tasks.score_rides",
            kwargs={"rides": [ride], "batch_id": file_batch, "chunk_index": 1, "chunks_total": 2, "rides_total": 2},
        )
        for sent, batch_id in ((chunk, ids[0]), (scored, file_batch)):
            with pytest.raises(Exception) as failed:
                sent.get(timeout=120)
            assert type(failed.value).__name__ == "BatchPruned", failed.value
            assert str(failed.value).startswith(f"batch {batch_id} is being deleted by prune")
        written = stack.sql(
            "SELECT count(*) FROM ride_predictions WHERE batch_id = ANY(:ids)", ids=[ids[0], file_batch]
        )[0][0]
        assert written == 0
    finally:
        stack.sql_exec("DELETE FROM batch_runs WHERE batch_id = ANY(:ids)", ids=pruning)
        stack.sql_exec("DELETE FROM batch_chunks WHERE batch_id = ANY(:ids)", ids=pruning)


def test_a_slot_claimed_by_a_prune_between_a_runs_start_and_its_write_is_left_out_by_the_retry(stack):
    """The narrow race: a prune claims one of a run's slots after the run started them and before it
    writes (a trigger on the ledger makes the claim then, committed on its own connection by dblink,
    as a prune's transaction would be). The write rolls back whole; the retry leaves the claimed slot
    out and writes the other two, once."""
    slots = _slots(7, 3)
    ids = _ids(slots)
    url = make_url(stack.db_url)
    (schema,) = stack.sql("SELECT current_schema()")[0]
    connection = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    stack.sql_exec(
        f"""
        CREATE EXTENSION IF NOT EXISTS dblink;
        CREATE FUNCTION claim_on_ledger() RETURNS trigger AS $$
        BEGIN
          PERFORM dblink_exec('{connection}',
            'UPDATE {schema}.batch_runs SET status = ''pruning'' WHERE batch_id = ' || quote_literal(NEW.batch_id));
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER claim_on_ledger BEFORE INSERT ON batch_chunks FOR EACH ROW
          WHEN (NEW.batch_id = '{ids[1]}') EXECUTE FUNCTION claim_on_ledger();
        """
    )
    try:
        result = _send(stack, slots).get(timeout=120)
    finally:
        stack.sql_exec(
            "DROP TRIGGER claim_on_ledger ON batch_chunks; DROP FUNCTION claim_on_ledger(); DROP EXTENSION dblink;"
        )
        claimed = stack.sql("SELECT status FROM batch_runs WHERE batch_id = :b", b=ids[1])
        stack.sql_exec("DELETE FROM batch_runs WHERE batch_id = :b", b=ids[1])  # the shared stack's prunes
    assert (result["written"], result["being_pruned"], result["rows_written"]) == (2, 1, 120), result
    assert [tuple(row) for row in claimed] == [("pruning",)]
    assert_each_batch_written_once(stack, [ids[0], ids[2]])
    assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=ids[1])[0][0] == 0
    assert stack.sql("SELECT count(*) FROM batch_chunks WHERE batch_id = :b", b=ids[1])[0][0] == 0
    attempts = stack.sql("SELECT attempts FROM batch_runs WHERE batch_id = ANY(:ids)", ids=[ids[0], ids[2]])
    assert {row.attempts for row in attempts} == {2}  # written by the retry


def test_a_run_and_single_sends_of_its_slots_at_the_same_time_write_each_slot_once(stack):
    slots = _slots(3, 6)
    client = stack.client()
    sent = (
        [_send(stack, slots)]
        + [
            client.send_task("worker.tasks.run_batch", kwargs={"slot": s, "interval": 300.0, "rides": 60})
            for s in slots
        ]
        + [_send(stack, slots[2:])]
    )
    for result in sent:
        result.get(timeout=120)
    assert_each_batch_written_once(stack, _ids(slots))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slots": "2026-10-04T10:05:00+00:00"}, "slots must be a non-empty list"),
        ({"slots": []}, "slots must be a non-empty list"),
        (
            {"slots": [f"2026-10-04T{h:02d}:{m:02d}:00+00:00" for h in range(24) for m in range(0, 60, 5)] * 2},
            "a run takes at most 288",
        ),
        ({"slots": ["2026-10-04T10:05:00+00:00", "2026-10-04T10:05:00+00:00"]}, "is in the run twice"),
        ({"slots": ["2026-10-04T10:05:00+00:00", "yesterday"]}, "yesterday"),
        ({"slots": ["2026-10-04T10:05:00+00:00"], "sent_by": "someone"}, "sent_by must be one of"),
        ({"slots": ["2026-10-04T10:05:00+00:00"], "rides": 0}, "rides must be at least 1"),
    ],
)
def test_a_bad_run_fails_clearly_without_retry_and_writes_nothing(stack, kwargs, message):
    result = stack.client().send_task(RUN_SLOTS, kwargs={"interval": 300.0, **kwargs})
    with pytest.raises(Exception) as failure:
        result.get(timeout=60)
    assert message in str(failure.value)
    assert (result.retries or 0) == 0
    assert stack.sql("SELECT count(*) FROM batch_runs WHERE batch_id LIKE 'schedule-2026-10-04%'")[0][0] == 0


def _monitored(engine, ids: list[str]) -> tuple[list, list, list]:
    """What monitoring stored of these batches and their hour, without the times it stored them at."""
    with engine.connect() as conn:
        metrics = conn.execute(
            text("SELECT * FROM batch_metrics WHERE batch_id = ANY(:ids) ORDER BY batch_id"), {"ids": ids}
        ).mappings()
        metrics = [{k: v for k, v in row.items() if k != "monitored_at"} for row in metrics]
        drift = conn.execute(
            text(
                "SELECT batch_id, column_name, method, score, threshold, drifted FROM column_drift "
                "WHERE batch_id = ANY(:ids) ORDER BY batch_id, column_name"
            ),
            {"ids": ids},
        ).all()
        window = conn.execute(
            text(
                "SELECT window_end, batches, rows, columns_checked, drifted_columns, dataset_drift, reference "
                "FROM window_metrics WHERE window_end = :end"
            ),
            {"end": datetime(2026, 10, 5, 11, 0, tzinfo=UTC)},
        ).all()
    return metrics, drift, window


def test_monitoring_a_run_together_stores_what_monitoring_each_batch_alone_stores(stack, trained_model):
    settings, _ = trained_model
    slots = _slots(5, 5)
    ids = _ids(slots)
    _send(stack, slots).get(timeout=120)
    engine = build_engine(stack.db_url)
    # The worker monitors the run too: let it finish, so that only this test writes from here on.
    wait_until("the worker's monitoring of the run", lambda: len(_monitored(engine, ids)[0]) == 5, 120)
    cache = ReferenceCache(lambda: configure_mlflow(settings))

    def references(name: str, version: str):
        return cache.get(name, version, time.monotonic())

    known = datetime(2026, 10, 6)  # every outcome of these slots observed
    for batch_id in ids:
        monitor_batch(engine, batch_id, references, known, sample_rows=20_000)
    alone = _monitored(engine, ids)
    assert len(alone[0]) == 5 and len(alone[1]) == 5 * 7 and alone[2][0].batches == 5

    reports = monitor_run(engine, [*ids, "no-such-batch"], references, known, sample_rows=20_000)

    together = _monitored(engine, ids)
    # The same figures; a mean may differ in its last bit (the rows are summed in another order).
    for mine, theirs in zip(together[0], alone[0], strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            assert value == (pytest.approx(theirs[key], rel=1e-12) if isinstance(value, float) else theirs[key]), key
    assert together[1:] == alone[1:]
    assert sorted((r.batch_id, r.status, r.rows) for r in reports) == sorted(
        [(b, "ok", 60) for b in ids] + [("no-such-batch", "skipped", 0)]
    )
    engine.dispose()


def _frame(batch_ids: list[str], rides: int = 50):
    end = datetime(2026, 5, 4, 12, 0)
    frames = []
    for i, batch_id in enumerate(batch_ids):
        frame = generated_chunk(
            batch_id, seed=i, chunk_index=0, n=rides, window=Window(end - timedelta(minutes=5), end)
        )
        frame["predicted_duration"] = 9.5
        frame["model_name"] = "runs-test"
        frame["model_version"] = "1"
        frame["batch_id"] = batch_id
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _new_batches(engine, batch_ids: list[str], rides: int = 50) -> None:
    for batch_id in batch_ids:
        start_one_chunk_batch(engine, batch_id, rides)


def _written(engine, batch_ids: list[str]) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT b.batch_id, b.status, b.rows_written, b.chunks_done, "
                "(SELECT count(*) FROM ride_predictions p WHERE p.batch_id = b.batch_id), "
                "(SELECT count(*) FROM ride_outcomes o JOIN ride_predictions p USING (trip_id) "
                " WHERE p.batch_id = b.batch_id) "
                "FROM batch_runs b WHERE b.batch_id = ANY(:ids)"
            ),
            {"ids": batch_ids},
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def _outcomes(frame):
    return frame[["trip_id"]].assign(
        actual_duration=12.0,
        observed_at=frame["trip_start_timestamp"],
        source="generated",
        known_at=datetime(2026, 5, 4, 18, 0, tzinfo=UTC),
    )


def test_write_batches_writes_the_batches_not_yet_written_and_leaves_the_written_one_alone(fresh_pg_url) -> None:
    engine = build_engine(fresh_pg_url)
    ids = ["run-a", "run-b", "run-c"]
    _new_batches(engine, ids)
    frame = _frame(ids)
    only_b = frame[frame["batch_id"] == "run-b"]
    assert not write_chunk(engine, "run-b", 0, only_b[list(PREDICTION_COLUMNS)], True).duplicate

    writes = write_batches(engine, frame[list(PREDICTION_COLUMNS)], _outcomes(frame))

    assert [(w.batch_id, w.duplicate, w.rows_written, w.batch_finished) for w in writes] == [
        ("run-a", False, 50, True),
        ("run-b", True, 0, False),
        ("run-c", False, 50, True),
    ]
    assert _written(engine, ids) == {
        "run-a": ("succeeded", 50, 1, 50, 50),
        "run-b": ("succeeded", 50, 1, 50, 0),  # its own write had no outcomes; none were added now
        "run-c": ("succeeded", 50, 1, 50, 50),
    }
    again = write_batches(engine, frame[list(PREDICTION_COLUMNS)], _outcomes(frame))
    assert all(w.duplicate for w in again)
    assert _written(engine, ids)["run-a"] == ("succeeded", 50, 1, 50, 50)
    engine.dispose()


def test_write_batches_waits_for_a_delivery_holding_one_key_then_writes_only_the_others(fresh_pg_url) -> None:
    """Another delivery has claimed run-y's key and not committed yet: the run waits on that key (never
    writes run-y beside it), and when that delivery commits, writes run-x and run-z alone."""
    engine = build_engine(fresh_pg_url)
    ids = ["run-x", "run-y", "run-z"]
    _new_batches(engine, ids)
    frame = _frame(ids)
    url = make_url(fresh_pg_url)
    holder = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    outcome: dict[str, object] = {}
    try:
        with holder.cursor() as cur:
            cur.execute(
                "INSERT INTO batch_chunks (batch_id, chunk_index, rows_written, model_version) VALUES ('run-y', 0, 0, '1')"
            )

        def run() -> None:
            try:
                outcome["writes"] = write_batches(engine, frame[list(PREDICTION_COLUMNS)], lock_timeout=30)
            except Exception as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        waiting = wait_until(
            "the run to wait on run-y's key",
            lambda: holder_sees_wait(holder),
            30,
        )
        assert waiting
        assert thread.is_alive()
        holder.commit()  # the other delivery wrote run-y (with no rows, as far as this test cares)
        thread.join(60)
    finally:
        holder.close()
    assert "error" not in outcome, outcome.get("error")
    assert [(w.batch_id, w.duplicate) for w in outcome["writes"]] == [
        ("run-x", False),
        ("run-y", True),
        ("run-z", False),
    ]
    written = _written(engine, ids)
    assert written["run-x"][:4] == ("succeeded", 50, 1, 50)
    assert written["run-z"][:4] == ("succeeded", 50, 1, 50)
    assert written["run-y"][3] == 0  # none of its rows came from the run
    engine.dispose()


def holder_sees_wait(holder) -> bool:
    """Some session of this database waits for a lock (the run, on the held key)."""
    with holder.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cur.fetchone()[0] > 0


def test_write_batches_on_sqlite_writes_each_batch_once(tmp_path) -> None:
    """The embedded store has no COPY: each batch of the run goes in its own transaction, still once."""
    from worker.store.database import migrate

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    migrate(url)
    engine = build_engine(url)
    ids = ["lite-a", "lite-b"]
    _new_batches(engine, ids)
    frame = _frame(ids)
    first = write_batches(engine, frame[list(PREDICTION_COLUMNS)], _outcomes(frame))
    second = write_batches(engine, frame[list(PREDICTION_COLUMNS)], _outcomes(frame))
    assert [(w.duplicate, w.rows_written, w.batch_finished) for w in first] == [(False, 50, True)] * 2
    assert all(w.duplicate for w in second)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ride_predictions")).scalar() == 100
        assert conn.execute(text("SELECT count(*) FROM ride_outcomes")).scalar() == 100
        assert conn.execute(text("SELECT count(DISTINCT status) FROM batch_runs")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_no_write_start_or_mark_touches_a_batch_prune_has_claimed(fresh_pg_url, tmp_path, dialect) -> None:
    """A late message of an old batch that a prune is deleting (status `pruning`): its start leaves it
    pruning, its retry mark too, and its chunk write rolls back with an error that names the prune,
    so no row outlives the batch_runs row the prune deletes last. In a run, on PostgreSQL the whole
    run rolls back (the worker then retries it, and the retry's start leaves the slot out: the test
    below); on SQLite each batch is its own transaction, and this run
    stops at the claimed one, which comes first."""
    from worker.store import writes
    from worker.store.database import migrate

    url = fresh_pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'claimed.db'}"
    if dialect == "sqlite":
        migrate(url)
    engine = build_engine(url)
    ids = ["old-a", "new-b"]
    _new_batches(engine, ids)
    with engine.begin() as conn:
        conn.execute(text("UPDATE batch_runs SET status = 'pruning' WHERE batch_id = 'old-a'"))
    frame = _frame(ids)
    old = frame[frame["batch_id"] == "old-a"][list(PREDICTION_COLUMNS)]

    again = writes.start_batch(
        engine,
        batch_id="old-a",
        trigger="adhoc",
        rides_requested=50,
        chunks_total=1,
        task_id=None,
        seed=None,
        window=None,
        attempt=2,
        redelivered=True,
    )
    assert again["status"] == "pruning"
    writes.mark_batch(engine, "old-a", "retrying", "a late retry")
    with pytest.raises(writes.BatchPruned, match="old-a is being deleted by prune"):
        write_chunk(engine, "old-a", 0, old, True, _outcomes(old))
    with pytest.raises(writes.BatchPruned, match="old-a is being deleted by prune"):
        write_batches(engine, frame[list(PREDICTION_COLUMNS)], _outcomes(frame))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ride_predictions WHERE batch_id = 'old-a'")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM ride_outcomes")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM batch_chunks WHERE batch_id = 'old-a'")).scalar() == 0
        assert conn.execute(text("SELECT status, error FROM batch_runs WHERE batch_id = 'old-a'")).one() == (
            "pruning",
            None,
        )
    # The run's other batch is written once its pruned neighbour is gone (the worker leaves such rows out).
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM batch_runs WHERE batch_id = 'old-a'"))
    young = frame[frame["batch_id"] == "new-b"]
    assert [w.rows_written for w in write_batches(engine, young[list(PREDICTION_COLUMNS)], _outcomes(young))] == [50]
    engine.dispose()


def _left_behind(stack) -> list:
    own = make_url(stack.env["DATABASE_URL"]).database
    admin = build_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    with admin.connect() as conn:
        left = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"{own}_backfill_%"})
        rows = left.all()
    admin.dispose()
    return rows


def test_the_backfill_benchmark_refuses_a_broker_that_workers_listen_on(stack):
    """Its slots would go to the service's worker, into the service's database."""
    done = stack.cli("bench", "--backfill", "0.05", timeout=120)
    assert done.returncode != 0
    assert "bench --backfill needs the broker to itself:" in done.stderr, done.stderr[-2000:]
    assert "worker(s) answer on it (shared@" in done.stderr
    assert _left_behind(stack) == []


def test_the_backfill_benchmark_prints_both_ways_side_by_side_and_leaves_no_database_behind(new_stack):
    """The command the README's backfill figures come from, end to end on a few slots (its own workers)."""
    stack = new_stack()
    done = stack.cli("bench", "--backfill", "0.05", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("  a run_batch", "  run_slots"))]
    assert len(rows) == 2, done.stdout
    for row in rows:
        slots, rides, written, failed = row[-6], row[-5], row[-4], row[-3]
        assert int(slots) == int(written) >= 14 and int(failed) == 0, row
        assert int(rides.replace(",", "")) > 0
        assert row[-1] != "up"  # "did not catch up"
    assert rows[0][-5] == rows[1][-5]  # the same rides both ways
    assert "an hour per message takes" in done.stdout
    assert _left_behind(stack) == []


def test_a_batch_whose_monitoring_fails_is_told_and_the_rest_of_the_run_is_monitored(fresh_pg_url) -> None:
    """monitor_batches' fault path: one batch of the run cannot be measured (here its version's
    reference cannot be had); the callback hears of it, the other batches are stored all the same;
    without a callback the error is raised."""
    engine = build_engine(fresh_pg_url)
    ids = ["mon-ok", "mon-broken", "mon-ok-too"]
    _new_batches(engine, ids)
    frame = _frame(ids)
    frame.loc[frame["batch_id"] == "mon-broken", "model_version"] = "2"
    write_batches(engine, frame[list(PREDICTION_COLUMNS)], _outcomes(frame))
    reference = frame.assign(actual_duration=12.0)

    def references(name: str, version: str):
        if version == "2":
            raise OSError("registry unreachable")
        return reference

    heard: list[tuple[str, str]] = []
    reports = monitor_run(
        engine, ids, references, datetime(2026, 5, 5), 20_000, failed=lambda b, exc: heard.append((b, str(exc)))
    )

    assert heard == [("mon-broken", "registry unreachable")]
    assert sorted((r.batch_id, r.status) for r in reports) == [("mon-ok", "ok"), ("mon-ok-too", "ok")]
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT batch_id, monitor_status, rows FROM batch_metrics ORDER BY 1")).all()
    assert [tuple(row) for row in stored] == [("mon-ok", "ok", 50), ("mon-ok-too", "ok", 50)]
    with pytest.raises(OSError, match="registry unreachable"):
        monitor_run(engine, ids, references, datetime(2026, 5, 5), 20_000)
    engine.dispose()
