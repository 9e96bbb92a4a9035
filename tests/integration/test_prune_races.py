"""What other writers do while `prune` deletes a batch (real PostgreSQL): whichever commits first, no
row outlives the batch it belongs to, since no later prune would ever find it.

Each race is made to happen at its worst moment: the other writer stops inside its transaction (a
trigger waits on an advisory lock the test holds), the prune runs, and the test lets go once the
prune has either finished or is itself waiting for a lock; then both finish."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import pandas as pd
import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.support import start_one_chunk_batch, wait_until
from worker.monitor.batches import record_failure
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import Window
from worker.store import monitoring, retention, writes
from worker.store.database import build_engine
from worker.store.writes import PREDICTION_COLUMNS, write_batches

HOLD = 7_919  # the advisory lock key the paused writer waits on


def _predictions(batch_id: str, chunk_index: int = 0, rides: int = 40) -> pd.DataFrame:
    """A chunk's made-up rides with a prediction each, as a worker writes them."""
    end = datetime(2026, 5, 4, 12, 0)
    window = Window(end - timedelta(minutes=5), end)
    frame = generated_chunk(batch_id, seed=3, chunk_index=chunk_index, n=rides, window=window)
    frame = frame.assign(predicted_duration=9.5, model_name="race-test", model_version="1", batch_id=batch_id)
    return frame[list(PREDICTION_COLUMNS)]


def _write_batch(engine, batch_id: str, rides: int = 40) -> pd.DataFrame:
    """An ad-hoc batch written whole, with no outcomes yet (as a scored file's); returns its predictions."""
    start_one_chunk_batch(engine, batch_id, rides)
    frame = _predictions(batch_id, rides=rides)
    [written] = write_batches(engine, frame)
    assert written.rows_written == rides
    return frame


def _pause_inserts_into(holder, table: str) -> None:
    """Every insert into `table` waits, inside its transaction, until the holder lets go of HOLD."""
    with holder.cursor() as cur:
        cur.execute(
            "CREATE FUNCTION wait_for_test() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_advisory_xact_lock({HOLD}); RETURN NEW; END $$"
        )
        cur.execute(
            f"CREATE TRIGGER wait_for_test BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION wait_for_test()"
        )
        cur.execute("SELECT pg_advisory_lock(%s)", (HOLD,))


def _waiting_on(holder, kind: str) -> int:
    """How many sessions of this database wait for a lock of this kind (advisory, tuple, transactionid)."""
    with holder.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = %s",
            (kind,),
        )
        return cur.fetchone()[0]


def _in_thread(target: Callable[[], object], result: dict, key: str) -> threading.Thread:
    """Start `target`; its return lands in result[key], an exception in result[key + '_error'], so
    the test's assertions see both (an exception in a thread would otherwise only be printed)."""

    def run() -> None:
        try:
            result[key] = target()
        except Exception as exc:  # reported by the test's assertions
            result[f"{key}_error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def raced(fresh_pg_url):
    """The engine, and a psycopg2 connection in autocommit that sets up the pause and holds its lock."""
    engine = build_engine(fresh_pg_url)
    holder = psycopg2.connect(make_url(fresh_pg_url).set(drivername="postgresql").render_as_string(False))
    holder.autocommit = True
    yield engine, holder
    holder.close()
    engine.dispose()


def _race_a_prune(engine, holder, table: str, write, batch_id: str) -> dict:
    """Run `write` until it pauses before inserting into `table`, prune the batch meanwhile, and let the
    writer go once the prune has finished or waits for a row the writer holds; both must succeed."""
    _pause_inserts_into(holder, table)
    result: dict = {}
    writer = _in_thread(write, result, "write")
    wait_until(f"the writer to pause before inserting into {table}", lambda: _waiting_on(holder, "advisory"), 30)
    prune = _in_thread(lambda: retention.delete_batches(engine, [batch_id]), result, "prune")
    wait_until(
        "the prune to finish or to wait for the paused writer",
        lambda: not prune.is_alive() or _waiting_on(holder, "transactionid") or _waiting_on(holder, "tuple"),
        30,
    )
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", (HOLD,))
    prune.join(30)
    writer.join(30)
    assert not prune.is_alive() and not writer.is_alive()
    assert "write_error" not in result and "prune_error" not in result, result
    assert result["prune"]["batch_runs"] == 1
    return result["prune"]


def test_outcomes_loaded_while_a_prune_deletes_their_batch_go_with_it(raced) -> None:
    """load_outcomes had looked up the batch's predictions and was about to insert their outcomes when
    a prune deleted the batch: before, the prune committed first and the outcomes then landed with
    no prediction left to find them by. Now the prune waits for the load, then deletes them too."""
    engine, holder = raced
    frame = _write_batch(engine, "pruned-while-loading")
    outcomes = frame[["trip_id"]].assign(actual_duration=11.0)
    load = lambda: monitoring.load_outcomes(engine, outcomes)  # noqa: E731
    pruned = _race_a_prune(engine, holder, "ride_outcomes", load, "pruned-while-loading")
    assert pruned["ride_outcomes"] == 40  # the prune went second, and took the load's outcomes with it
    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT (SELECT count(*) FROM ride_outcomes), (SELECT count(*) FROM ride_predictions)")
        )
        assert tuple(left.one()) == (0, 0)


def test_a_monitoring_pass_that_ends_after_a_prune_leaves_no_metrics_of_the_batch(raced) -> None:
    """A batch's monitoring read it as succeeded and was storing its metrics when a prune deleted it;
    the metrics row then outlived its batch for good. Now the store waits for, or skips, the prune."""
    engine, holder = raced
    _write_batch(engine, "pruned-while-monitored")
    values = {"batch_id": "pruned-while-monitored", "rows": 40, "monitor_status": "ok", "prediction_mean": 9.5}
    store = lambda: monitoring.save_batch_metrics(engine, values)  # noqa: E731
    pruned = _race_a_prune(engine, holder, "batch_metrics", store, "pruned-while-monitored")
    assert pruned["batch_metrics"] == 1  # the prune went second, and took the stored row with it
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM batch_metrics")).scalar() == 0


def test_a_monitoring_failure_of_a_batch_that_is_gone_or_being_pruned_is_not_stored(raced) -> None:
    """record_failure wrote a metrics row for a batch id with no batch (one pruned since its message was
    sent) and for one a prune had claimed: rows no prune would find again."""
    engine, _ = raced
    _write_batch(engine, "claimed-by-a-prune")
    with engine.begin() as conn:
        assert retention._claim(conn, ["claimed-by-a-prune"]) == ["claimed-by-a-prune"]
    record_failure(engine, "claimed-by-a-prune", "failed", "the registry was down")
    record_failure(engine, "never-was", "failed", "the registry was down")
    _write_batch(engine, "still-here")  # and one that is there still gets its rows
    record_failure(engine, "still-here", "waiting", "the registry was down")
    assert monitoring.get_batch_metrics(engine, "still-here")["monitor_status"] == "waiting"
    drift = [{"column_name": "fare", "method": "psi", "score": 0.3, "threshold": 0.2, "drifted": True}]
    monitoring.save_batches_metrics(
        engine,
        [({"batch_id": b, "rows": 40, "monitor_status": "ok"}, drift) for b in ("claimed-by-a-prune", "still-here")],
    )
    monitoring.save_target_drift(engine, "claimed-by-a-prune", {**drift[0], "column_name": "actual_duration"})
    with engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT batch_id, count(*) FROM column_drift GROUP BY batch_id UNION ALL SELECT batch_id, 0 FROM batch_metrics"
            )
        ).all()
    assert sorted(stored) == [("still-here", 0), ("still-here", 1)]
    assert monitoring.get_batch_metrics(engine, "still-here")["monitor_status"] == "ok"


def test_outcomes_of_a_batch_a_prune_has_claimed_are_counted_unknown_and_not_stored(raced) -> None:
    """Loaded after the claim, before the prune deleted the predictions: they would outlive them."""
    engine, _ = raced
    frame = _write_batch(engine, "claimed-before-the-load")
    kept = _write_batch(engine, "loaded-as-usual")
    with engine.begin() as conn:
        assert retention._claim(conn, ["claimed-before-the-load"]) == ["claimed-before-the-load"]
    both = pd.concat([frame, kept])[["trip_id"]].assign(actual_duration=11.0)
    counts = monitoring.load_outcomes(engine, both)
    assert (counts["written"], counts["unknown"], counts["already_known"]) == (40, 40, 0)
    with engine.connect() as conn:
        loaded = conn.execute(
            text("SELECT p.batch_id, count(*) FROM ride_outcomes o JOIN ride_predictions p USING (trip_id) GROUP BY 1")
        ).all()
    assert loaded == [("loaded-as-usual", 40)]


def test_an_outcome_load_does_not_hold_up_the_next_chunk_of_a_batch_still_being_written(raced) -> None:
    """Outcomes of a multi-chunk batch's first chunk are loaded while its second chunk is written: the
    load holds the batch's row against a prune's claim only (FOR KEY SHARE), so the chunk's write,
    which updates that row, goes on at once. With FOR SHARE it waited for the whole load, and a load
    longer than DATABASE_LOCK_TIMEOUT made the chunk fail and be retried."""
    engine, holder = raced
    batch_id = "written-while-loading"
    writes.start_batch(
        engine,
        batch_id=batch_id,
        trigger="adhoc",
        rides_requested=80,
        chunks_total=2,
        task_id=None,
        seed=None,
        window=None,
        attempt=1,
    )
    chunks = [_predictions(batch_id, chunk_index=i) for i in range(2)]
    assert not writes.write_chunk(engine, batch_id, 0, chunks[0], ids_are_new=True).batch_finished
    _pause_inserts_into(holder, "ride_outcomes")
    result: dict = {}
    outcomes = chunks[0][["trip_id"]].assign(actual_duration=11.0)
    loader = _in_thread(lambda: monitoring.load_outcomes(engine, outcomes), result, "load")
    try:
        wait_until("the load to pause before inserting its outcomes", lambda: _waiting_on(holder, "advisory"), 30)
        second = writes.write_chunk(engine, batch_id, 1, chunks[1], ids_are_new=True, lock_timeout=2.0)
    finally:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (HOLD,))
        loader.join(30)
    assert second.batch_finished and second.rows_written == 40
    assert not loader.is_alive() and "load_error" not in result, result
    assert (result["load"]["written"], result["load"]["unknown"]) == (40, 0)
    with engine.connect() as conn:
        state = conn.execute(
            text(
                "SELECT status, rows_written, (SELECT count(*) FROM ride_outcomes) FROM batch_runs WHERE batch_id = :b"
            ),
            {"b": batch_id},
        )
        assert tuple(state.one()) == ("succeeded", 80, 40)
