"""Operating the schedule with real Redis, PostgreSQL, MLflow, worker and beat processes:
backfill, missed slots in status, batches, rerun, prune, the world knobs, one model version per batch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from tests.stack import migrated_database
from tests.support import REPO_ROOT, assert_each_batch_written_once, registry_client, wait_until
from worker import batch
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import Window, World

pytestmark = pytest.mark.integration

INTERVAL = 4  # seconds between beat slots in these tests


def _batch_of(result) -> str:
    return next(line.split()[1].rstrip(":") for line in result.stdout.splitlines() if line.startswith("batch "))


def _slot(at: float, interval: float = INTERVAL) -> datetime:
    return datetime.fromtimestamp(math.floor(at / interval) * interval, UTC)


def _scheduled(stack) -> dict[str, tuple]:
    rows = stack.sql(
        "SELECT batch_id, status, rows_written, rides_requested, attempts FROM batch_runs WHERE trigger = 'schedule'"
    )
    return {row.batch_id: row for row in rows}


def test_backfill_fills_the_slots_beat_missed_and_skips_the_ones_it_wrote(new_stack):
    stack = new_stack(BATCH_INTERVAL_SECONDS=str(INTERVAL), RIDES_PER_BATCH="25")
    stack.start_worker("ops", concurrency=2)
    beat = stack.start("beat", "--loglevel=INFO", f"--schedule={stack.logs / 'beat-schedule'}", name="beat")
    wait_until(
        "beat to write two slots",
        lambda: sum(r.status == "succeeded" for r in _scheduled(stack).values()) >= 2,
        90,
    )
    stack.stop(beat)
    beat_slots = sorted(_scheduled(stack))
    first = datetime.fromisoformat(beat_slots[0].removeprefix("schedule-"))
    # Beat is down: its slots go missed, once they are settled (the current slot and the one before it
    # are still beat's and the workers').
    status = wait_until(
        "three slots missed",
        lambda: (
            (found := json.loads(stack.cli("status", "--json").stdout))
            and len(found["database"]["missed_slots_24h"]) >= 3
            and found
        ),
        60,
        every=1,
    )
    missed = status["database"]["missed_slots_24h"]
    assert all(f"schedule-{slot}" not in beat_slots for slot in missed)
    assert status["database"]["fill_command"].startswith("python -m worker backfill --from ")

    # From two slots before beat's first one up to the current slot: overlaps beat's slots, fills the gap.
    start = first - timedelta(seconds=2 * INTERVAL)
    end = _slot(time.time())
    done = stack.cli("backfill", "--from", start.isoformat(), "--to", end.isoformat(), "--wait", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = [start + timedelta(seconds=INTERVAL * k) for k in range(int((end - start).total_seconds()) // INTERVAL)]
    ids = [f"schedule-{slot.isoformat()}" for slot in expected]
    already = sum(b in beat_slots for b in ids)
    assert f"{len(ids) - already} written" in done.stdout, done.stdout
    assert f"{already} already there, 0 failed" in done.stdout, done.stdout
    assert already == len(beat_slots)
    assert_each_batch_written_once(stack, ids)

    # Every missed slot before `end` is filled; only slots since then may still be listed.
    status = json.loads(stack.cli("status", "--json").stdout)
    assert all(datetime.fromisoformat(slot) >= end for slot in status["database"]["missed_slots_24h"]), status

    # The same range again: everything is already there, nothing is written twice.
    again = stack.cli("backfill", "--from", start.isoformat(), "--to", end.isoformat(), "--wait", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"0 to send, {len(ids)} already written" in again.stdout
    assert f"0 written (0 rows), {len(ids)} already there, 0 failed" in again.stdout
    assert_each_batch_written_once(stack, ids)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-11-26T10:00", "--to", "2026-11-26T10:00"], "is not after --from"),
        (["--from", "2026-11-26T10:05", "--to", "2026-11-26T10:00"], "is not after --from"),
        (["--from", "{past}", "--to", "{future}"], "future slots are beat's job"),
        (["--from", "2026-01-01T00:00", "--to", "2026-01-08T00:01"], "is more than 2016"),
        # 13 million slots: every one was built (minutes, gigabytes) before this refusal, and --yes sent them
        (["--from", "1900-01-02T00:00", "--to", "2026-11-26T10:00"], "13348632 slots is more than 105408"),
        (["--from", "1900-01-02T00:00", "--to", "2026-11-26T10:00", "--yes"], "send it in parts"),
        # the worker refused every slot of year 1 with an OverflowError, and a rerun never helped
        (["--from", "0001-01-01T00:00+00:00", "--to", "0001-01-01T01:00+00:00"], "outside the years 1900..2199"),
        (["--from", "yesterday", "--to", "2026-11-26T10:00"], "--from 'yesterday' is not an ISO 8601 time"),
        (["--from", "2026-11-01T01:30", "--to", "2026-11-01T03:00"], "happens twice in Chicago"),
        (["--from", "2026-03-08T02:30", "--to", "2026-03-08T04:00"], "does not exist in Chicago"),
        (["--from", "2026-11-26T10:00", "--to", "2026-11-26T11:00", "--speed-factor", "9"], "must be from 0.2 to 5"),
        (["--from", "2026-11-26T10:00", "--to", "2026-11-26T11:00", "--rides", "0"], "must be at least 1"),
    ],
)
def test_refused_backfills_send_nothing(new_stack, args, message):
    stack = new_stack()  # no worker: anything sent would stay in the queue
    now = datetime.now(UTC)
    args = [
        a.format(past=(now - timedelta(hours=1)).isoformat(), future=(now + timedelta(hours=1)).isoformat())
        for a in args
    ]
    before = stack.queue_length()
    result = stack.cli("backfill", *args, extra_env={"BATCH_INTERVAL_SECONDS": "300"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert [message in line for line in result.stderr.strip().splitlines()] == [True], result.stderr  # one line
    assert "Traceback" not in result.stderr
    assert stack.queue_length() == before == 0
    assert stack.sql("SELECT count(*) FROM batch_runs")[0][0] == 0


def _fail_chunk(stack, chunk_index: int) -> None:
    """The database refuses the ledger key of one chunk, as a broken database would, every time."""
    stack.sql_exec(
        f"""
        CREATE FUNCTION refuse_chunk() RETURNS trigger AS $$
        BEGIN
          IF NEW.chunk_index = {chunk_index} THEN RAISE EXCEPTION 'test: chunk % refused', NEW.chunk_index; END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER refuse_chunk BEFORE INSERT ON batch_chunks FOR EACH ROW EXECUTE FUNCTION refuse_chunk();
        """
    )


def _heal(stack) -> None:
    stack.sql_exec("DROP TRIGGER refuse_chunk ON batch_chunks; DROP FUNCTION refuse_chunk();")


def _planned_rows(row, chunk_size: int) -> pd.DataFrame:
    """The rides a clean run of this batch would write: from its id, seed, window and knobs alone."""
    world = World(row.speed_factor, row.fare_factor)
    window = Window(row.window_start, row.window_end)
    frames = [
        generated_chunk(row.batch_id, int(row.seed), i, n, window, world, row.started_at)
        for i, n in enumerate(batch.chunk_sizes(row.rides_requested, chunk_size))
    ]
    return pd.concat(frames, ignore_index=True)


def test_a_failed_knobbed_batch_is_rerun_to_exactly_its_planned_rows(new_stack):
    """Failed twice (the database refuses one chunk), then rerun by a worker whose CHUNK_SIZE was
    changed meanwhile: it still writes exactly the rows of the batch's stored plan."""
    stack = new_stack(CHUNK_SIZE="2000")
    worker = stack.start_worker("knobs", concurrency=2)
    _fail_chunk(stack, 2)
    try:
        sent = stack.cli("dispatch", "--rides", "9000", "--seed", "77", "--speed-factor", "0.7", "--fare-factor", "1.1")
        assert sent.returncode == 0, sent.stderr
        batch_id = next(line.split()[1] for line in sent.stdout.splitlines() if line.startswith("batch "))
        failed = wait_until(
            "the batch to fail, its other four chunks written",
            lambda: next(
                iter(
                    stack.sql(
                        "SELECT * FROM batch_runs WHERE batch_id = :b AND status = 'failed' AND chunks_done = 4",
                        b=batch_id,
                    )
                ),
                None,
            ),
            120,
        )
        assert "chunk 2 refused" in failed.error
        assert failed.chunks_done == 4 and failed.rows_written == 7000

        again = stack.cli(
            "rerun", batch_id, "--wait", timeout=300
        )  # still broken: it fails again, writes nothing twice
        assert again.returncode == 1 and "chunk 2 refused" in again.stdout, again.stdout + again.stderr
        row = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)[0]
        assert (row.status, row.attempts, row.chunks_done, row.rows_written) == ("failed", 2, 4, 7000), (
            again.stdout + again.stderr
        )
    finally:
        _heal(stack)
    stack.stop(worker)
    stack.start_worker("resized", concurrency=2, extra_env={"CHUNK_SIZE": "3000"})
    rerun = stack.cli("rerun", batch_id, "--wait", timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "done: 9000 rows written" in rerun.stdout

    row = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)[0]
    assert (row.status, row.speed_factor, row.fare_factor, row.chunks_done) == ("succeeded", 0.7, 1.1, 5)
    written = pd.DataFrame(
        stack.sql(
            "SELECT trip_id::text AS trip_id, pickup_community_area, dropoff_community_area, trip_start_timestamp, "
            "fare, trip_miles FROM ride_predictions WHERE batch_id = :b",
            b=batch_id,
        )
    )
    planned = _planned_rows(row, chunk_size=2000)
    planned["trip_id"] = planned["trip_id"].map(lambda h: f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    columns = [
        "trip_id",
        "pickup_community_area",
        "dropoff_community_area",
        "trip_start_timestamp",
        "fare",
        "trip_miles",
    ]
    merged = planned[columns].merge(written, on="trip_id", suffixes=("", "_db"), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all() and len(merged) == 9000
    for column in columns[1:]:
        assert (merged[column] == merged[column + "_db"]).all(), column
    ledger = stack.sql("SELECT chunk_index, rows_written FROM batch_chunks WHERE batch_id = :b ORDER BY 1", b=batch_id)
    assert [tuple(r) for r in ledger] == [(0, 2000), (1, 2000), (2, 2000), (3, 2000), (4, 1000)]

    history = json.loads(stack.cli("batches", "--json", "--last", "50").stdout)
    mine = next(b for b in history if b["batch_id"] == batch_id)
    assert (mine["speed_factor"], mine["fare_factor"], mine["status"]) == (0.7, 1.1, "succeeded")
    table = stack.cli("batches", "--status", "succeeded").stdout
    assert f"{batch_id} [what-if speed ×0.7, fare ×1.1]" in table and "9000/9000" in table


@pytest.mark.parametrize(
    ("prune_step", "said"),
    [
        ("UPDATE batch_runs SET status = 'pruning' WHERE batch_id = :b", "is being deleted by prune"),
        (
            "DELETE FROM batch_runs WHERE batch_id = :b",
            "was deleted by prune (older than the retention) while this waited",
        ),
    ],
)
def test_a_rerun_that_prune_claims_or_deletes_while_it_waits_ends_its_wait_at_once(new_stack, prune_step, said):
    """No worker takes the rerun's message, so the batch waits, shown as retrying; prune then claims
    it (or has deleted it). --wait says so and stops: before, it printed `pruning` and waited out its
    whole timeout, since no status it knew would ever come."""
    stack = new_stack()
    batch_id = f"adhoc-old-{uuid.uuid4().hex[:8]}"
    stack.sql_exec(
        "INSERT INTO batch_runs (batch_id, trigger, seed, rides_requested, chunks_total, status, error, window_start, "
        "window_end, started_at) VALUES (:b, 'adhoc', '5', 20, 1, 'failed', 'lost', '2026-01-05T09:00', "
        "'2026-01-05T09:05', now() - interval '40 days')",
        b=batch_id,
    )
    output = stack.logs / f"rerun-{uuid.uuid4().hex[:6]}.log"
    with open(output, "w") as out:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "worker", "rerun", batch_id, "--wait", "--timeout", "120"],
            cwd=REPO_ROOT,
            env=stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until("the rerun to wait on its batch", lambda: "retrying: 0/20 rows" in output.read_text(), 60)
        stack.sql_exec(prune_step, b=batch_id)
        assert waiting.wait(timeout=30) == 1, output.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert f"failed: batch {batch_id} {said}" in output.read_text()
    assert "timed out" not in output.read_text()


def test_a_dispatch_whose_worker_writes_to_another_database_ends_its_wait_saying_so(new_stack):
    """The task succeeds, but the database this command reads never gets the batch: --wait says why
    once the task's result is in, instead of waiting out its timeout and calling it still running."""
    stack = new_stack()
    with migrated_database() as elsewhere:
        worker = stack.start_worker("elsewhere", concurrency=1, extra_env={"DATABASE_URL": elsewhere})
        try:
            waited = stack.cli("dispatch", "--rides", "5", "--wait", "--timeout", "120", timeout=200)
        finally:
            stack.stop(worker)
        there = create_engine(elsewhere)
        try:
            with there.connect() as conn:
                written = conn.execute(text("SELECT batch_id, status FROM batch_runs")).all()
        finally:
            there.dispose()
    assert waited.returncode == 1, waited.stdout + waited.stderr
    batch_id = _batch_of(waited)
    assert written == [(batch_id, "succeeded")]
    assert f"the task of batch {batch_id} succeeded but this database has no such batch" in waited.stdout
    assert "another DATABASE_URL" in waited.stdout and "timed out" not in waited.stdout
    assert stack.sql("SELECT count(*) FROM batch_runs")[0][0] == 0


@pytest.mark.parametrize(
    ("batch_id", "message"),
    [
        ("adhoc-no-such-batch", "there is no batch"),
        ("{succeeded}", "there is nothing to rerun"),
        ("{scored}", "which are not kept"),
        ("{running}", "a worker may still be writing it"),
        ("{retrying}", "it is queued to run again"),
        ("{pruning}", "is being deleted by prune (older than the retention); it cannot be rerun"),
    ],
)
def test_rerun_refuses_what_it_cannot_or_must_not_do(stack, batch_id, message):
    if batch_id == "{succeeded}":
        batch_id = _batch_of(stack.cli("dispatch", "--rides", "5", "--wait"))
    elif batch_id == "{scored}":  # rides a caller gave by `celery call`: nothing to regenerate them from
        ride = {
            "pickup_community_area": 8,
            "dropoff_community_area": 32,
            "trip_start_timestamp": "2026-11-26T08:00:00",
            "fare": 9.0,
            "trip_miles": 2.0,
        }
        done = stack.client().send_task("worker.tasks.score_rides", kwargs={"rides": [ride]}).get(timeout=60)
        batch_id = done["batch_id"]
        stack.sql_exec("UPDATE batch_runs SET status = 'failed' WHERE batch_id = :b", b=batch_id)
    elif batch_id in (
        "{running}",
        "{retrying}",
        "{pruning}",
    ):  # an old failed batch a prune has claimed, for the latter
        status = batch_id.strip("{}")
        batch_id = f"adhoc-{uuid.uuid4()}"
        stack.sql_exec(
            "INSERT INTO batch_runs (batch_id, trigger, seed, rides_requested, status, window_start, window_end, "
            "attempt_started_at) VALUES (:b, 'adhoc', '1', 10, :s, now(), now(), now())",
            b=batch_id,
            s=status,
        )
    before = stack.queue_length()
    try:
        result = stack.cli("rerun", batch_id)
    finally:  # the stack is shared: a made-up row left `pruning` would be finished by the prune tests' prunes
        if message.startswith("is being deleted"):
            stack.sql_exec("DELETE FROM batch_runs WHERE batch_id = :b", b=batch_id)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert stack.queue_length() == before


def test_the_same_seed_in_a_slower_world_takes_longer_and_costs_more(stack):
    results = {}
    for factor in ("1.0", "0.7"):
        sent = stack.cli("dispatch", "--rides", "3000", "--seed", "5", "--speed-factor", factor, "--wait")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        batch_id = _batch_of(sent)
        results[factor] = stack.sql(
            "SELECT avg(p.fare) AS fare, avg(p.predicted_duration) AS predicted, avg(p.trip_miles) AS miles, "
            "avg(o.actual_duration) AS actual, count(o.trip_id) AS outcomes "
            "FROM ride_predictions p JOIN ride_outcomes o USING (trip_id) WHERE p.batch_id = :b",
            b=batch_id,
        )[0]
    calm, jam = results["1.0"], results["0.7"]
    assert calm.outcomes == jam.outcomes == 3000
    assert jam.miles == pytest.approx(calm.miles)  # the same trips ...
    assert jam.actual > calm.actual * 1.3  # ... take longer in slower traffic (speeds x 0.7: ~1.4x) ...
    assert jam.fare > calm.fare * 1.05  # ... so the meter charges more waiting time
    assert jam.predicted > calm.predicted * 1.1  # and the model, reading the fare, predicts longer trips


def test_a_redelivered_knobbed_batch_writes_the_same_rows_once(stack):
    task_id = str(uuid.uuid4())
    kwargs = {"rides": 500, "seed": 9, "speed_factor": 0.7, "fare_factor": 1.25}
    first = stack.client().send_task("worker.tasks.run_batch", kwargs=kwargs, task_id=task_id).get(timeout=120)
    trips = stack.sql("SELECT trip_id, fare FROM ride_predictions WHERE batch_id = :b ORDER BY 1", b=first["batch_id"])
    stack.client().send_task("worker.tasks.run_batch", kwargs=kwargs, task_id=task_id)
    # The backend keeps the first SUCCESS for this task id; the second delivery says so in its log.
    stack.wait_for_log("worker-shared", f"batch {first['batch_id']} was already written (500 rows)", 60)
    assert first["duplicate"] is False
    assert (first["speed_factor"], first["fare_factor"], first["rows_written"]) == (0.7, 1.25, 500)
    assert (
        stack.sql("SELECT trip_id, fare FROM ride_predictions WHERE batch_id = :b ORDER BY 1", b=first["batch_id"])
        == trips
    )
    # The same plan regenerated: the stored knobs give back exactly these rides.
    row = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=first["batch_id"])[0]
    planned = _planned_rows(row, chunk_size=2000)
    assert sorted(planned["fare"]) == sorted(fare for _, fare in trips)


def test_prune_deletes_old_batches_with_all_their_rows(stack):
    young = _batch_of(stack.cli("dispatch", "--rides", "20", "--wait"))
    sent = stack.cli("dispatch", "--rides", "50", "--wait")
    batch_id = next(line.split()[1] for line in sent.stdout.splitlines() if line.startswith("batch "))
    wait_until(
        "the batch monitored", lambda: stack.sql("SELECT 1 FROM batch_metrics WHERE batch_id = :b", b=batch_id), 60
    )
    trips = [r[0] for r in stack.sql("SELECT trip_id FROM ride_predictions WHERE batch_id = :b", b=batch_id)]
    assert stack.sql("SELECT count(*) FROM ride_outcomes WHERE trip_id = ANY(:t)", t=trips)[0][0] == 50
    # As a challenger would have shadow-scored it.
    stack.sql_exec(
        "INSERT INTO shadow_predictions (trip_id, model_version, batch_id, predicted_duration) "
        "SELECT trip_id, '99', batch_id, predicted_duration FROM ride_predictions WHERE batch_id = :b",
        b=batch_id,
    )
    stack.sql_exec("UPDATE batch_runs SET started_at = now() - interval '40 days' WHERE batch_id = :b", b=batch_id)
    asked = stack.cli("prune", "--older-than", "30")
    assert "1 batches started before" in asked.stdout and "50 predictions, would be deleted" in asked.stdout
    assert "nothing deleted" in asked.stdout
    assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0] == 50
    done = stack.cli("prune", "--older-than", "30", "--yes")
    assert done.returncode == 0, done.stderr
    assert "50 ride_predictions" in done.stdout and "1 batch_runs" in done.stdout
    assert "50 shadow_predictions" in done.stdout
    for table in (
        "ride_predictions",
        "batch_chunks",
        "batch_runs",
        "batch_metrics",
        "column_drift",
        "shadow_predictions",
    ):
        assert stack.sql(f"SELECT count(*) FROM {table} WHERE batch_id = :b", b=batch_id)[0][0] == 0
    assert stack.sql("SELECT count(*) FROM ride_outcomes WHERE trip_id = ANY(:t)", t=trips)[0][0] == 0
    assert stack.sql("SELECT rows_written FROM batch_runs WHERE batch_id = :b", b=young) == [(20,)]  # younger ones stay

    # What beat sends daily with RETENTION_DAYS: the same, through the task.
    stack.sql_exec("UPDATE batch_runs SET started_at = now() - interval '40 days' WHERE batch_id = :b", b=young)
    removed = stack.client().send_task("worker.tasks.prune_batches", kwargs={"older_than_days": 30}).get(timeout=120)
    assert removed["batch_runs"] == 1 and removed["ride_predictions"] == 20
    assert stack.sql("SELECT count(*) FROM batch_runs WHERE batch_id = :b", b=young)[0][0] == 0
    bad = stack.client().send_task("worker.tasks.prune_batches", kwargs={"older_than_days": -1})
    with pytest.raises(Exception, match="older_than_days must be a positive number"):
        bad.get(timeout=60)


def test_a_batch_keeps_its_version_when_the_alias_moves_and_fails_when_that_version_is_deleted(
    make_stack, fresh_pg_url, make_settings
):

    from tests.conftest import SMALL_FOREST, SMALL_RIDES
    from worker.lifecycle.training import train_and_register
    from worker.model.training import ForestParams

    settings = make_settings()
    first = train_and_register(settings, rides=SMALL_RIDES, seed=1, params=ForestParams(**SMALL_FOREST))
    second = train_and_register(settings, rides=SMALL_RIDES, seed=2, force=True, params=ForestParams(**SMALL_FOREST))
    registry = registry_client(settings.MLFLOW_TRACKING_URI)
    registry.set_registered_model_alias(settings.MODEL_NAME, "production", first.version)

    stack = make_stack(fresh_pg_url, MODEL_NAME=settings.MODEL_NAME, CHUNK_SIZE="2000", MODEL_REFRESH_SECONDS="0.5")
    worker = stack.start_worker("pinned", concurrency=1)
    sent = stack.cli("dispatch", "--rides", "100000")  # 50 chunks, one at a time
    batch_id = next(line.split()[1] for line in sent.stdout.splitlines() if line.startswith("batch "))
    wait_until(
        "two chunks written",
        lambda: stack.sql("SELECT 1 FROM batch_runs WHERE batch_id = :b AND chunks_done >= 2", b=batch_id),
        120,
        every=0.05,
    )
    in_flight = stack.sql("SELECT chunks_done, chunks_total FROM batch_runs WHERE batch_id = :b", b=batch_id)[0]
    registry.set_registered_model_alias(settings.MODEL_NAME, "production", second.version)
    moved_at = stack.sql("SELECT now()")[0][0]
    assert in_flight.chunks_done < in_flight.chunks_total, "the batch finished before the alias moved"
    row = wait_until(
        "the batch to finish",
        lambda: next(
            iter(stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b AND status <> 'running'", b=batch_id)), None
        ),
        300,
    )
    assert row.status == "succeeded" and row.rows_written == 100_000
    assert stack.sql("SELECT DISTINCT model_version FROM ride_predictions WHERE batch_id = :b", b=batch_id) == [
        (first.version,)
    ]
    assert (row.model_version, row.model_pinned_by) == (first.version, "alias")
    later_chunks = stack.sql(
        "SELECT count(*) FROM batch_chunks WHERE batch_id = :b AND written_at > :t", b=batch_id, t=moved_at
    )[0][0]
    assert later_chunks > 0  # chunks written after the move still used the pinned version
    later = stack.cli("dispatch", "--rides", "10", "--wait")
    assert f"with {settings.MODEL_NAME} version {second.version}" in later.stdout, later.stdout

    # A batch pinned to a version that then disappears from the registry fails clearly, without retries.
    registry.set_registered_model_alias(settings.MODEL_NAME, "production", first.version)
    time.sleep(1)  # past MODEL_REFRESH_SECONDS
    _fail_chunk(stack, 1)
    try:
        sent = stack.cli("dispatch", "--rides", "5000")
        pinned = next(line.split()[1] for line in sent.stdout.splitlines() if line.startswith("batch "))
        wait_until(
            "the batch pinned to the first version to fail",
            lambda: stack.sql("SELECT 1 FROM batch_runs WHERE batch_id = :b AND status = 'failed'", b=pinned),
            120,
        )
    finally:
        _heal(stack)
    registry.set_registered_model_alias(settings.MODEL_NAME, "production", second.version)
    registry.delete_model_version(settings.MODEL_NAME, first.version)
    stack.stop(worker)
    stack.start_worker("fresh", concurrency=1)  # a process that never loaded the deleted version
    before = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=pinned)[0]
    assert before.chunks_done == 2  # chunks 0 and 2 of 3 written; the injected fault refused chunk 1
    # A rerun would fail the same way: refused, naming the version (it used to send it to fail again).
    rerun = stack.cli("rerun", pinned, "--wait", timeout=120)
    assert rerun.returncode == 2, rerun.stdout + rerun.stderr
    assert f"pinned to version {first.version}, which is not in the registry (deleted?)" in rerun.stderr
    # Nor may --repin finish it with another version: two of its chunks were written by the first.
    repinned = stack.cli("rerun", pinned, "--repin", timeout=120)
    assert repinned.returncode == 2 and f"2 of its chunks were written by version {first.version}" in repinned.stderr
    row = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=pinned)[0]
    assert (row.status, row.model_version, row.attempts, row.chunks_done) == (
        "failed",
        first.version,
        before.attempts,
        2,
    )


def test_backfill_reruns_a_failed_slot_reports_it_honestly_and_old_slots_are_never_missed(new_stack):
    """A fresh install whose first scheduled batches are backfilled ones from yesterday: nothing is
    missed since. A slot that failed is sent again by the next backfill (and counted as written only
    once it really is); a slot still running is left alone."""
    stack = new_stack(BATCH_INTERVAL_SECONDS="300", RIDES_PER_BATCH="30")
    stack.start_worker("fill", concurrency=2)
    end = _slot(time.time(), 300) - timedelta(days=1)
    start = end - timedelta(minutes=15)
    ids = [f"schedule-{(start + timedelta(minutes=5 * k)).isoformat()}" for k in range(3)]
    _fail_chunk(stack, 0)
    try:
        first = stack.cli("backfill", "--from", start.isoformat(), "--to", end.isoformat(), "--wait", timeout=300)
        assert first.returncode == 1 and "0 written (0 rows), 0 already there, 3 failed" in first.stdout, first.stdout
    finally:
        _heal(stack)
    status = json.loads(stack.cli("status", "--json").stdout)["database"]
    assert status["missed_slots_24h"] == []  # backfilled yesterday: the schedule was never seen running
    # One slot is still running on another worker: the backfill must leave it to that worker.
    stack.sql_exec("UPDATE batch_runs SET status = 'running' WHERE batch_id = :b", b=ids[2])
    again = stack.cli(
        "backfill", "--from", start.isoformat(), "--to", ids[2].removeprefix("schedule-"), "--wait", timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 to send, 0 already written, 0 in flight" in again.stdout
    assert "2 written (60 rows), 0 already there, 0 failed" in again.stdout
    rows = {r.batch_id: r for r in stack.sql("SELECT * FROM batch_runs WHERE batch_id = ANY(:ids)", ids=ids)}
    assert [(rows[b].status, rows[b].attempts) for b in ids[:2]] == [("succeeded", 2), ("succeeded", 2)]
    in_flight = stack.cli("backfill", "--from", ids[2].removeprefix("schedule-"), "--to", end.isoformat())
    assert "1 slots from" in in_flight.stdout and "0 to send, 0 already written, 1 in flight" in in_flight.stdout


def test_a_backfill_leaves_a_slot_a_prune_is_deleting_and_says_so_with_and_without_wait(new_stack):
    """A slot whose old batch a prune has claimed (its rows may be half deleted) is not sent: the
    plan, the summary of --wait and the line without --wait each say so, and the slot is untouched."""
    stack = new_stack(BATCH_INTERVAL_SECONDS="300", RIDES_PER_BATCH="30")
    stack.start_worker("fill", concurrency=1)
    end = _slot(time.time(), 300) - timedelta(days=1)
    start = end - timedelta(minutes=15)
    ids = [f"schedule-{(start + timedelta(minutes=5 * k)).isoformat()}" for k in range(3)]
    stack.sql_exec(
        "INSERT INTO batch_runs (batch_id, trigger, rides_requested, chunks_total, status) "
        "VALUES (:b, 'schedule', 30, 1, 'pruning')",
        b=ids[1],
    )
    span = ("--from", start.isoformat(), "--to", end.isoformat())
    waited = stack.cli("backfill", *span, "--wait", timeout=300)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "2 to send, 0 already written, 0 in flight, 1 being deleted by prune (not sent)" in waited.stdout
    assert "2 written (60 rows), 0 already there, 0 failed, 1 not sent as prune was deleting them" in waited.stdout
    again = stack.cli("backfill", *span)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to send, 2 already written, 0 in flight, 1 being deleted by prune (not sent)" in again.stdout
    assert "1 slots not sent: a prune is deleting their old batches" in again.stdout
    rows = {r.batch_id: r.status for r in stack.sql("SELECT batch_id, status FROM batch_runs")}
    assert rows == {ids[0]: "succeeded", ids[1]: "pruning", ids[2]: "succeeded"}
    assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=ids[1])[0][0] == 0


def test_a_backfill_the_worker_refuses_ends_its_wait_with_the_workers_reason(new_stack):
    """The worker's own MAX_RIDES_PER_REQUEST is below the slots' size (`--rides 30`), which this
    command's settings allow: the worker refuses each run before it records a batch, so no batch row
    will ever say so.
    --wait reads the messages' failure from the result backend and says why, instead of waiting out
    its timeout and calling the slots still running."""
    stack = new_stack(BATCH_INTERVAL_SECONDS="300", RIDES_PER_BATCH="30")
    # Its own RIDES_PER_BATCH within its limit: a process whose settings contradict each other stops at start.
    small = stack.start_worker(
        "small", concurrency=1, extra_env={"MAX_RIDES_PER_REQUEST": "10", "RIDES_PER_BATCH": "10"}
    )
    end = _slot(time.time(), 300) - timedelta(days=1)
    start = end - timedelta(minutes=15)
    result = stack.cli(
        "backfill", "--from", start.isoformat(), "--to", end.isoformat(), "--rides", "30", "--wait", "--timeout", "150",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 written (0 rows), 0 already there, 3 failed" in result.stdout, result.stdout
    assert "still running" not in result.stdout
    assert "3 slots were refused by the worker before it recorded them" in result.stdout
    assert "must be at most MAX_RIDES_PER_REQUEST=10, got 30" in result.stdout
    assert stack.sql("SELECT count(*) FROM batch_runs")[0][0] == 0  # nothing half-written
    # Once the worker takes such slots, the same backfill writes them.
    stack.stop(small)
    stack.start_worker("large", concurrency=1)
    again = stack.cli("backfill", "--from", start.isoformat(), "--to", end.isoformat(), "--wait", timeout=300)
    assert again.returncode == 0 and "3 written (90 rows), 0 already there, 0 failed" in again.stdout, again.stdout


def test_a_chunk_message_without_a_pinned_version_pins_one_like_run_batch(stack, trained_model):
    """Messages queued before versions were pinned carry none: the chunk pins the batch's version first."""
    _, trained = trained_model
    batch_id = f"adhoc-legacy-{uuid.uuid4().hex[:8]}"
    stack.sql_exec(
        "INSERT INTO batch_runs (batch_id, trigger, seed, rides_requested, chunks_total, status, window_start, "
        "window_end) VALUES (:b, 'adhoc', '3', 100, 1, 'running', '2026-11-26T09:00', '2026-11-26T09:05')",
        b=batch_id,
    )
    kwargs = {
        "batch_id": batch_id,
        "chunk_index": 0,
        "rides": 100,
        "seed": 3,
        "window": ["2026-11-26T09:00:00", "2026-11-26T09:05:00"],
    }
    done = stack.client().send_task("worker.tasks.predict_chunk", kwargs=kwargs).get(timeout=120)
    assert (done["rows_written"], done["model_version"]) == (100, trained.version)
    row = stack.sql("SELECT status, model_version, model_pinned_by FROM batch_runs WHERE batch_id = :b", b=batch_id)[0]
    assert tuple(row) == ("succeeded", trained.version, "alias")


def test_operations_work_in_embedded_mode_without_any_server(tmp_path):
    """No Redis, PostgreSQL or MLflow: the filesystem broker and SQLite, as `make run` uses them."""
    env = {"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path / "local"), "BATCH_INTERVAL_SECONDS": "300"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
        )

    assert cli("migrate").returncode == 0
    end = _slot(time.time(), 300) - timedelta(hours=2)
    sent = cli("backfill", "--from", (end - timedelta(minutes=30)).isoformat(), "--to", end.isoformat())
    assert sent.returncode == 0, sent.stderr
    assert "6 to send" in sent.stdout and "sent 6/6 slots" in sent.stdout
    status = json.loads(cli("status", "--json").stdout)
    # Waiting for a worker, in the embedded queue: a run_slots message per clock hour the six slots touch.
    hours = {math.ceil((end - timedelta(minutes=5 * k)).timestamp() / 3600) for k in range(1, 7)}
    assert status["broker"]["queue_length"] == len(hours)
    listed = cli("batches", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    pruned = cli("prune", "--older-than", "1", "--yes")
    assert pruned.returncode == 0 and "deleted nothing" in pruned.stdout, pruned.stdout + pruned.stderr


def test_a_slot_whose_message_a_worker_refused_or_dropped_says_why(stack):
    """Two scheduled slots that never get a batch: one asks for more rides than the worker's
    MAX_RIDES_PER_REQUEST (a setting the worker refuses), one's message expired in the queue (no
    worker took it in time; the worker drops it on receipt). Each is kept in slot_refusals with its
    reason, which status and the report show beside the missed slot; neither has a batch row."""
    refused_slot, expired_slot = (datetime(2026, 10, 12, 10, 5 * k, tzinfo=UTC) for k in (1, 2))
    client = stack.client()
    too_many = client.send_task(
        "worker.tasks.run_batch",
        kwargs={"slot": refused_slot.isoformat(), "interval": 300.0, "rides": 10**9, "sent_by": "backfill"},
    )
    with pytest.raises(Exception, match="MAX_RIDES_PER_REQUEST"):
        too_many.get(timeout=60)
    client.send_task(
        "worker.tasks.run_batch",
        kwargs={"slot": expired_slot.isoformat(), "interval": 300.0, "rides": 10, "sent_by": "beat"},
        expires=datetime.now(UTC) - timedelta(seconds=1),
    )
    ids = [f"schedule-{slot.isoformat()}" for slot in (refused_slot, expired_slot)]
    rows = wait_until(
        "both refusals recorded",
        lambda: (
            (found := stack.sql("SELECT * FROM slot_refusals WHERE batch_id = ANY(:ids) ORDER BY slot", ids=ids))
            and len(found) == 2
            and found
        ),
        60,
    )
    assert [(row.batch_id, row.slot, row.sent_by) for row in rows] == [
        (ids[0], refused_slot, "backfill"),
        (ids[1], expired_slot, "beat"),
    ]
    assert rows[0].error.startswith("BadRequest: rides must be at most MAX_RIDES_PER_REQUEST="), rows[0].error
    assert rows[1].error == "TaskRevoked: expired in the queue before a worker ran it", rows[1].error
    assert stack.sql("SELECT count(*) FROM batch_runs WHERE batch_id = ANY(:ids)", ids=ids)[0][0] == 0


def test_status_masks_a_database_password_with_a_slash_or_a_space(tmp_path):
    """SQLAlchemy reads a password up to the first @, so it connects with one holding a / or a space; status
    printed such a URL whole (the URL pattern stopped at the /, urlsplit found no password or `Db`)."""
    with migrated_database() as url:
        with_password = url.replace("postgresql+psycopg2://postgres@", "postgresql+psycopg2://postgres:Db/Pw 7@")
        done = subprocess.run(
            [sys.executable, "-m", "worker", "status", "--json"],
            cwd=REPO_ROOT,
            env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "DATABASE_URL": with_password},
            capture_output=True,
            text=True,
            timeout=180,
        )
    report = json.loads(done.stdout)
    assert report["database"]["ok"], done.stdout  # trust auth: the password is sent and ignored
    assert report["database"]["url"] == with_password.replace(":Db/Pw 7@", ":***@")
    assert "Pw 7" not in done.stdout + done.stderr and "Db/" not in done.stdout + done.stderr


def test_status_names_a_failure_newer_than_the_last_success(new_stack):
    """With only failed batches status said "no finished batch yet", while the exporter and the report
    showed the failures; a failure older than the last success is history and stays out of it."""
    stack = new_stack()
    stack.sql_exec(
        "INSERT INTO batch_runs (batch_id, trigger, rides_requested, status, error, finished_at) VALUES "
        "('adhoc-failed-old', 'adhoc', 5, 'failed', 'OperationalError: old', now() - interval '2 hours'), "
        "('adhoc-failed-new', 'adhoc', 5, 'failed', "
        "'OperationalError: connection to postgresql://u:Pw-9f2@db failed', now() - interval '1 minute')"
    )
    first = stack.cli("status", "--json")
    failure = json.loads(first.stdout)["database"]["last_failure"]
    assert failure["batch_id"] == "adhoc-failed-new" and "Pw-9f2" not in first.stdout
    assert failure["error"] == "OperationalError: connection to postgresql://u:***@db failed"
    text = stack.cli("status").stdout
    assert "no batch succeeded yet" in text and "last batch FAILED: adhoc-failed-new" in text, text

    stack.sql_exec(
        "INSERT INTO batch_runs (batch_id, trigger, rides_requested, rows_written, status, finished_at, model_version) "
        "VALUES ('adhoc-ok', 'adhoc', 5, 5, 'succeeded', now(), '1')"
    )
    later = stack.cli("status", "--json")
    assert json.loads(later.stdout)["database"]["last_failure"] is None
    assert "FAILED" not in stack.cli("status").stdout
