"""Fault injection on the worker and broker side (issue 5), with real processes.

Each test injects its fault itself (SIGKILL of a pool child or a whole worker, a second
beat, a beat outage, a parallel duplicate, bad arguments, a pickle message, SIGTERM) into
real `celery worker` / `celery beat` subprocesses on Redis and PostgreSQL, and checks what
the README's Reliability section promises: nothing lost, nothing written twice, the worker
keeps serving. Every wait polls with a deadline and prints the processes' logs on failure.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection
from sqlalchemy import create_engine, text

from tests.stack import CELERY, Stack, migrated_database
from tests.support import REPO_ROOT, registry_client, wait_until
from worker.batch import shadow_step

pytestmark = pytest.mark.reliability

RUN_BATCH = "worker.tasks.run_batch"
PREDICT_CHUNK = "worker.tasks.predict_chunk"
SCORE_RIDES = "worker.tasks.score_rides"
SENDING = "Sending due task run-batch"
# One chunk that takes a few seconds on a 2-core machine (generate, predict, COPY).
BIG_BATCH = 300_000
# One chunk per batch; and no monitoring, whose own message (queued when a batch commits) would sit
# beside the batch's in the queue and unacked set these tests count. Monitoring under faults:
# tests/reliability/test_service_faults.py and tests/integration/test_monitoring.py.
ONE_CHUNK = {"CHUNK_SIZE": "1000000", "MONITORING": "false"}
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ", re.MULTILINE)


# --- helpers -------------------------------------------------------------------------------


def logs(stack: Stack, *names: str) -> str:
    return "".join(f"\n----- {name}.log (tail) -----\n{stack.log_text(name)[-5000:]}" for name in names)


def wait_for(check: Callable[[], Any], seconds: float, what: str, stack: Stack, *names: str, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail with the named logs after `seconds`."""
    try:
        return wait_until(what, check, seconds, every)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{logs(stack, *names)}") from None


def batch(stack: Stack, batch_id: str) -> dict | None:
    rows = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)
    return rows[0]._asdict() if rows else None


def status(stack: Stack, batch_id: str) -> str | None:
    row = batch(stack, batch_id)
    return row["status"] if row else None


def written(stack: Stack, batch_id: str) -> tuple[int, int]:
    """(rows, distinct trip ids) in ride_predictions for the batch."""
    count, distinct = stack.sql(
        "SELECT count(*), count(DISTINCT trip_id) FROM ride_predictions WHERE batch_id = :b", b=batch_id
    )[0]
    return count, distinct


def ledger(stack: Stack, batch_id: str) -> list[tuple[int, int]]:
    rows = stack.sql("SELECT chunk_index, rows_written FROM batch_chunks WHERE batch_id = :b ORDER BY 1", b=batch_id)
    return [tuple(r) for r in rows]


def wait_for_copy(stack: Stack, seconds: float, *names: str) -> None:
    """Wait until a worker is inside a chunk's write transaction: its COPY into the staging table,
    or the move into ride_predictions under the claimed ledger key, runs. A kill now must roll
    the whole transaction back."""
    engine = create_engine(stack.db_url, isolation_level="AUTOCOMMIT")  # a fresh activity snapshot per poll
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
        "AND (query LIKE 'COPY ride_predictions_staging %' OR query LIKE 'INSERT INTO ride_predictions %')"
    )
    try:
        with engine.connect() as conn:
            wait_for(lambda: conn.execute(query).scalar(), seconds, "COPY running", stack, *names, every=0.02)
    finally:
        engine.dispose()


def pool_children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def broker(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.broker_url)


def log_times(text: str, needle: str) -> list[datetime]:
    """Timestamps (local time, as Celery logs them) of the log lines containing `needle`."""
    times = []
    for line in text.splitlines():
        if needle in line and (match := LOG_TIME.match(line)):
            times.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return times


def slot_of(batch_id: str) -> float:
    return datetime.fromisoformat(batch_id.removeprefix("schedule-")).timestamp()


def celery_call(stack: Stack, task: str, kwargs: dict) -> subprocess.Popen:
    """`celery -A worker call TASK --kwargs JSON`, as an operator would type it."""
    return subprocess.Popen(
        [str(CELERY), "-A", "worker", "call", task, "--kwargs", json.dumps(kwargs)],
        cwd=REPO_ROOT,
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sigkill_group(stack: Stack, process: subprocess.Popen) -> None:
    """SIGKILL a worker's whole process group (main process and pool children): no cleanup at all."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    stack.stop(process)  # already dead: only forgets it (and reaps stragglers of the group)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_db() -> Iterator[str]:
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="module")
def faults(make_stack, module_db) -> Iterator[Stack]:
    """One worker (one pool process, one-chunk batches) shared by the tests that leave it running."""
    stack = make_stack(module_db, **ONE_CHUNK)
    try:
        stack.worker = stack.start_worker("faults", concurrency=1)
        # The pool process loads the model now, so a later kill lands in generating, predicting or writing.
        assert stack.client().send_task(RUN_BATCH, kwargs={"rides": 10}).get(timeout=120)["rows_written"] == 10
        yield stack
    finally:
        stack.close()  # frees its Redis db numbers for later stacks of the session


# --- 1. pool child SIGKILL -----------------------------------------------------------------


def test_pool_child_sigkilled_mid_batch_is_requeued_and_written_once(faults):
    """SIGKILL the pool process while it COPYs a batch's rows: PostgreSQL rolls the write and its
    ledger key back, task_reject_on_worker_lost requeues the message at once, the worker's new
    pool process runs the batch again, and it is written exactly once."""
    stack, main = faults, faults.worker
    task_id = str(uuid.uuid4())
    batch_id = f"adhoc-{task_id}"
    result = stack.client().send_task(RUN_BATCH, kwargs={"rides": BIG_BATCH, "seed": 5}, task_id=task_id)
    wait_for_copy(stack, 60, "worker-faults")
    [child] = pool_children(main.pid)
    os.kill(child, signal.SIGKILL)
    killed = time.monotonic()
    assert ledger(stack, batch_id) == [], "the batch had already committed: the kill was not mid-batch"

    out = result.get(timeout=120)
    took = time.monotonic() - killed
    print(f"\n[pool child kill] batch finished {took:.1f}s after the SIGKILL of pid {child}")
    assert out["rows_written"] == BIG_BATCH and out["duplicate"] is False
    assert written(stack, batch_id) == (BIG_BATCH, BIG_BATCH)
    assert ledger(stack, batch_id) == [(0, BIG_BATCH)]
    row = batch(stack, batch_id)
    assert (row["status"], row["rows_written"], row["chunks_done"]) == ("succeeded", BIG_BATCH, 1)
    assert row["attempts"] == 2, "the redelivery is counted in batch_runs.attempts"
    text = stack.log_text("worker-faults")
    assert f"pid:{child} exited with 'signal 9 (SIGKILL)'" in text, logs(stack, "worker-faults")
    assert text.count(f"Task {RUN_BATCH}[{task_id}] received") == 2  # delivered, requeued, delivered again
    assert main.poll() is None and pool_children(main.pid) != [child]


def test_pool_child_sigkilled_mid_run_of_slots_is_requeued_and_writes_each_slot_once(faults):
    """The same kill inside a backfill's run_slots, while its one transaction writes every slot of the
    run: all of them roll back together, and the requeued run writes each slot once."""
    stack, main = faults, faults.worker
    task_id = str(uuid.uuid4())
    slots = [f"2026-09-01T10:{minute:02d}:00+00:00" for minute in (5, 10, 15, 20)]
    ids = [f"schedule-{slot}" for slot in slots]
    per_slot = BIG_BATCH // 4
    result = stack.client().send_task(
        "worker.tasks.run_slots", kwargs={"slots": slots, "interval": 300.0, "rides": per_slot}, task_id=task_id
    )
    wait_for_copy(stack, 60, "worker-faults")
    [child] = pool_children(main.pid)
    os.kill(child, signal.SIGKILL)
    assert all(ledger(stack, b) == [] for b in ids), "the run had already committed: the kill was not mid-write"

    out = result.get(timeout=180)
    assert (out["written"], out["rows_written"], out["already_written"]) == (4, 4 * per_slot, 0)
    for batch_id in ids:
        assert written(stack, batch_id) == (per_slot, per_slot)
        assert ledger(stack, batch_id) == [(0, per_slot)]
        row = batch(stack, batch_id)
        assert (row["status"], row["rows_written"], row["attempts"]) == ("succeeded", per_slot, 2), batch_id
    text = stack.log_text("worker-faults")
    assert f"pid:{child} exited with 'signal 9 (SIGKILL)'" in text, logs(stack, "worker-faults")
    assert text.count(f"Task worker.tasks.run_slots[{task_id}] received") == 2


def test_pool_child_sigkilled_mid_batch_with_a_challenger_writes_its_shadow_rows_once(new_stack):
    """The same kill with a challenger set: the shadow predictions ride in the batch's own transaction,
    so they are rolled back with it and written once with the redelivery, one per sampled ride (the
    chunk is above SHADOW_SAMPLE_ROWS: every 30th of its 300,000 rides, the same ones both times)."""

    stack = new_stack(MODEL_NAME=f"shadow-kill-{uuid.uuid4().hex[:6]}", SHADOW_SAMPLE_ROWS="10000", **ONE_CHUNK)
    small = ("--rides", "20000", "--trees", "5", "--max-depth", "8")
    for seed in ("1", "2"):
        trained = stack.cli("train", *small, "--seed", seed)
        assert trained.returncode == 0, trained.stdout + trained.stderr
    production = registry_client(stack.env["MLFLOW_TRACKING_URI"]).get_registered_model(stack.env["MODEL_NAME"])
    challenger = "2" if production.aliases["production"] == "1" else "1"
    registry_client(stack.env["MLFLOW_TRACKING_URI"]).set_registered_model_alias(
        stack.env["MODEL_NAME"], "challenger", challenger
    )
    main = stack.start_worker("shadowkill", concurrency=1)
    assert stack.client().send_task(RUN_BATCH, kwargs={"rides": 10}).get(timeout=120)["rows_written"] == 10
    task_id = str(uuid.uuid4())
    batch_id = f"adhoc-{task_id}"
    result = stack.client().send_task(RUN_BATCH, kwargs={"rides": BIG_BATCH, "seed": 6}, task_id=task_id)
    wait_for_copy(stack, 90, "worker-shadowkill")
    [child] = pool_children(main.pid)
    os.kill(child, signal.SIGKILL)
    assert ledger(stack, batch_id) == [], "the batch had already committed: the kill was not mid-batch"

    out = result.get(timeout=180)
    assert out["rows_written"] == BIG_BATCH and out["duplicate"] is False
    assert written(stack, batch_id) == (BIG_BATCH, BIG_BATCH)
    row = batch(stack, batch_id)
    assert (row["status"], row["attempts"], row["challenger_version"], row["shadow_error"]) == (
        "succeeded",
        2,
        challenger,
        None,
    )
    shadow, distinct, matched = stack.sql(
        "SELECT count(*), count(DISTINCT s.trip_id), count(p.trip_id) FROM shadow_predictions s "
        "LEFT JOIN ride_predictions p ON p.trip_id = s.trip_id WHERE s.batch_id = :b AND s.model_version = :v",
        b=batch_id,
        v=challenger,
    )[0]
    assert shadow == distinct == matched == len(range(0, BIG_BATCH, shadow_step(BIG_BATCH, 10_000))) == 10_000


# --- 2. whole worker SIGKILL ---------------------------------------------------------------


def test_whole_worker_sigkilled_mid_batch_is_redelivered_after_visibility_timeout(new_stack):
    """SIGKILL a worker's whole process group mid-batch: the message stays unacked in Redis and a
    new worker's sweep puts it back once it is older than VISIBILITY_TIMEOUT; written once."""
    vt = 15
    stack = new_stack(
        VISIBILITY_TIMEOUT=str(vt),
        TASK_TIME_LIMIT="12",
        TASK_SOFT_TIME_LIMIT="10",
        DATABASE_STATEMENT_TIMEOUT="8",
        DATABASE_LOCK_TIMEOUT="5",
        **ONE_CHUNK,
    )
    rides = 150_000  # well inside the 10 s soft limit
    doomed = stack.start_worker("doomed", concurrency=1)
    task_id = str(uuid.uuid4())
    batch_id = f"adhoc-{task_id}"
    result = stack.client().send_task(RUN_BATCH, kwargs={"rides": rides}, task_id=task_id)
    wait_for_copy(stack, 60, "worker-doomed")
    r = broker(stack)
    [(tag, delivered_at)] = r.zrange("unacked_index", 0, -1, withscores=True)
    sigkill_group(stack, doomed)
    killed = time.time()
    assert ledger(stack, batch_id) == [], "the batch had already committed: the kill was not mid-batch"
    assert r.hexists("unacked", tag) and r.llen("celery") == 0  # held for the dead worker, not queued

    stack.start_worker("rescuer", concurrency=1)
    ready = time.time()
    received = f"Task {RUN_BATCH}[{task_id}] received"
    wait_for(lambda: received in stack.log_text("worker-rescuer"), vt + 45, "redelivered", stack, "worker-rescuer")
    redelivered = time.time()
    out = result.get(timeout=60)
    done = time.time()
    print(
        f"\n[whole worker kill] VISIBILITY_TIMEOUT={vt}s; new worker ready {ready - killed:.1f}s after the kill; "
        f"redelivered {redelivered - killed:.1f}s after the kill ({redelivered - delivered_at:.1f}s after the "
        f"first delivery); written {done - killed:.1f}s after the kill"
    )
    assert redelivered - delivered_at >= vt - 1  # the visibility timeout, not something sooner, brought it back
    # ... and the first 10 s sweep after that (and after the rescuer is consuming) did.
    assert redelivered <= max(delivered_at + vt, ready) + 10 + 5
    assert out["rows_written"] == rides and out["duplicate"] is False
    assert written(stack, batch_id) == (rides, rides)
    row = batch(stack, batch_id)
    assert (row["status"], row["rows_written"]) == ("succeeded", rides)
    assert row["attempts"] == 2, "the redelivery is counted in batch_runs.attempts"
    assert r.hlen("unacked") == 0 and r.llen("celery") == 0


# --- 3. two beats --------------------------------------------------------------------------


def test_two_beats_by_mistake_write_each_slot_once(new_stack):
    """Two beat processes (own schedule files) send every slot twice; the slot is the batch id,
    so each slot is one batch_runs row with RIDES_PER_BATCH rows and the second send writes nothing."""
    per_batch = 25
    stack = new_stack(BATCH_INTERVAL_SECONDS="3", RIDES_PER_BATCH=str(per_batch))
    stack.start_worker("twobeats", concurrency=2)
    beats = [
        stack.start("beat", "--loglevel=INFO", f"--schedule={stack.logs / f'schedule-{n}'}", name=f"beat-{n}")
        for n in ("a", "b")
    ]
    names = ("beat-a", "beat-b", "worker-twobeats")
    wait_for(
        lambda: min(stack.log_text(n).count(SENDING) for n in ("beat-a", "beat-b")) >= 3,
        45,
        "both beats sent three slots",
        stack,
        *names,
    )
    for beat in beats:
        stack.stop(beat)
    sends = sum(stack.log_text(n).count(SENDING) for n in ("beat-a", "beat-b"))
    wait_for(
        lambda: stack.log_text("worker-twobeats").count("succeeded in") >= sends,
        60,
        "every send processed",
        stack,
        *names,
    )
    runs = stack.sql("SELECT batch_id, status, rows_written FROM batch_runs ORDER BY batch_id")
    slots = [r.batch_id for r in runs]
    duplicates = sends - len(slots)
    print(f"\n[two beats] {sends} sends for {len(slots)} slots: {duplicates} duplicate sends wrote nothing")
    assert all(s.startswith("schedule-") for s in slots) and len(set(slots)) == len(slots)
    assert duplicates >= 2, logs(stack, *names)
    assert all((r.status, r.rows_written) == ("succeeded", per_batch) for r in runs)
    counts = dict(stack.sql("SELECT batch_id, count(*) FROM ride_predictions GROUP BY 1"))
    assert counts == dict.fromkeys(slots, per_batch)
    assert stack.sql("SELECT count(DISTINCT trip_id) FROM ride_predictions")[0][0] == per_batch * len(slots)
    text = stack.log_text("worker-twobeats")
    assert text.count("was already written") == duplicates, logs(stack, "worker-twobeats")


# --- 4. the same chunk twice at the same time ----------------------------------------------


def test_same_chunk_run_twice_in_parallel_writes_once(faults):
    """Two workers run the same chunk at the same moment; the second waits on the first's
    uncommitted ledger key, then finds it taken and writes nothing.

    In production this is what a batch running longer than the visibility timeout would cause
    (Redis hands the still-running task to a second worker). The settings validator forbids
    VISIBILITY_TIMEOUT <= TASK_TIME_LIMIT, so the parallel duplicate is injected directly: two
    predict_chunk messages with identical kwargs, one to each of two single-process workers.
    To make the two writes collide every time (not only when their timing happens to line
    up), the test holds a lock on the batch's batch_runs row: the first writer then stops
    inside its transaction after claiming the key and copying its rows, the second blocks on
    that key, and the test releases the lock only once it has seen both waiting.
    """
    stack = faults
    twin = stack.start_worker("twin", concurrency=1)
    holder = create_engine(stack.db_url)
    watcher = create_engine(stack.db_url, isolation_level="AUTOCOMMIT")
    waiting = text("SELECT query FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
    names = ("worker-faults", "worker-twin")
    try:
        batch_id = f"adhoc-parallel-{uuid.uuid4().hex[:8]}"
        rides = 100_000
        kwargs = {
            "batch_id": batch_id,
            "chunk_index": 0,
            "rides": rides,
            "seed": 42,
            "window": ["2026-11-26T09:00:00", "2026-11-26T09:05:00"],
            # The version run_batch pinned, as it sends it with every chunk.
            "model_name": stack.env["MODEL_NAME"],
            "model_version": "1",
        }
        with holder.begin() as conn:  # the batch_runs row run_batch makes before it fans out
            conn.execute(
                text(
                    "INSERT INTO batch_runs (batch_id, trigger, seed, rides_requested, chunks_total, status, "
                    "window_start, window_end) VALUES (:b, 'adhoc', :seed, :n, 1, 'running', :s, :e)"
                ),
                {
                    "b": batch_id,
                    "seed": str(kwargs["seed"]),
                    "n": rides,
                    "s": kwargs["window"][0],
                    "e": kwargs["window"][1],
                },
            )
        client = stack.client()
        with holder.connect() as hold, watcher.connect() as watch:
            hold.execute(text("SELECT 1 FROM batch_runs WHERE batch_id = :b FOR UPDATE"), {"b": batch_id})
            results = [client.send_task(PREDICT_CHUNK, kwargs=kwargs) for _ in range(2)]

            def both_blocked() -> bool:
                queries = [q for (q,) in watch.execute(waiting)]
                return any(q.startswith("UPDATE batch_runs") for q in queries) and any(
                    q.startswith("INSERT INTO batch_chunks") for q in queries
                )

            wait_for(both_blocked, 90, "one writer inside its transaction, the other blocked on the key", stack, *names)
            hold.rollback()  # release: the first commits, the second finds the key taken
        outs = [r.get(timeout=60) for r in results]

        first, second = sorted(outs, key=lambda o: o["duplicate"])
        print(f"\n[parallel duplicate] writer {first['timings']}, duplicate {second['timings']}")
        assert (first["duplicate"], first["rows_written"]) == (False, rides)
        assert (second["duplicate"], second["rows_written"]) == (True, 0)
        assert written(stack, batch_id) == (rides, rides)
        assert ledger(stack, batch_id) == [(0, rides)]
        row = batch(stack, batch_id)
        assert (row["status"], row["rows_written"], row["chunks_done"]) == ("succeeded", rides, 1)
        for name in names:  # one copy on each worker
            assert sum(f"[{r.id}] received" in stack.log_text(name) for r in results) == 1, logs(stack, name)
        said = "".join(stack.log_text(n) for n in names)
        assert f"batch {batch_id} chunk 0 was already written; this delivery writes nothing" in said
    finally:
        holder.dispose()
        watcher.dispose()
        stack.stop(twin)


# --- 5. beat down for a while --------------------------------------------------------------


def test_beat_restarted_after_outage_sends_one_batch_not_a_flood(new_stack):
    """Stop beat for ~5 intervals and start it again on the same schedule file: the missed
    slots are not back-filled; it sends the current slot once, then one batch per slot."""
    interval = 2
    stack = new_stack(BATCH_INTERVAL_SECONDS=str(interval), RIDES_PER_BATCH="10")
    stack.start_worker("outage", concurrency=1)
    schedule = f"--schedule={stack.logs / 'outage-schedule'}"
    first = stack.start("beat", "--loglevel=INFO", schedule, name="beat-first")
    wait_for(lambda: stack.log_text("beat-first").count(SENDING) >= 2, 30, "beat sent", stack, "beat-first")
    stack.stop(first)  # SIGTERM: beat saves its schedule file
    stopped = time.time()
    before = stack.log_text("beat-first").count(SENDING)
    time.sleep(5 * interval)  # the outage: five slots nobody sends

    second = stack.start("beat", "--loglevel=INFO", schedule, name="beat-second")
    restarted = time.time()
    wait_for(lambda: stack.log_text("beat-second").count(SENDING) >= 4, 30, "beat resumed", stack, "beat-second")
    stack.stop(second)
    after = stack.log_text("beat-second").count(SENDING)
    wait_for(
        lambda: len(stack.sql("SELECT 1 FROM batch_runs WHERE status = 'succeeded'")) == before + after,
        30,
        "every send written",
        stack,
        "beat-second",
        "worker-outage",
    )

    slots = sorted(slot_of(r.batch_id) for r in stack.sql("SELECT batch_id FROM batch_runs"))
    pre = [s for s in slots if s <= stopped]
    post = [s for s in slots if s > stopped]
    sends = log_times(stack.log_text("beat-second"), SENDING)
    first_send = sends[0].timestamp()
    next_boundary = (math.floor(first_send / interval) + 1) * interval
    in_first_interval = sum(1 for t in sends if t.timestamp() < next_boundary)
    missed = (post[0] - pre[-1]) / interval - 1
    print(
        f"\n[beat outage] down {restarted - stopped:.1f}s; slots missed and not back-filled: {missed:.0f}; "
        f"sends by the restarted beat before its first regular tick: {in_first_interval}; "
        f"first send {first_send - restarted:.1f}s after the restart"
    )
    assert len(pre) == before and len(post) == after == len(sends)
    assert in_first_interval == 1, logs(stack, "beat-second")
    # The one send on restart is for the current slot, not one of the missed ones.
    assert post[0] == math.floor(first_send / interval) * interval
    assert missed >= 4
    assert all(b - a == interval for a, b in itertools.pairwise(post)), post  # then slot after slot
    assert all(n == 10 for (n,) in stack.sql("SELECT rows_written FROM batch_runs"))


# --- 6. bad arguments through `celery call` ------------------------------------------------


BAD_CALLS = [
    (RUN_BATCH, {"rides": -1}, "rides must be at least 1"),
    (RUN_BATCH, {"rides": "abc"}, "rides must be a whole number, got 'abc'"),
    (RUN_BATCH, {"rides": 10**15}, "rides must be at most MAX_RIDES_PER_REQUEST=1000000"),
    (RUN_BATCH, {"rides": 10, "colour": "red"}, "unexpected keyword argument 'colour'"),
    (
        SCORE_RIDES,
        {
            "rides": [
                {
                    "pickup_community_area": 999,
                    "dropoff_community_area": 8,
                    "trip_start_timestamp": "not a time",
                    "fare": 10.0,
                    "trip_miles": 2.0,
                }
            ]
        },
        "pickup_community_area outside 1..77",
    ),
]


def test_bad_arguments_from_celery_call_fail_clearly_without_retry(faults):
    """An operator's `celery -A worker call` with bad kwargs: FAILURE with a clear message, no
    retry, nothing written, and the worker keeps serving."""
    stack = faults
    calls = [celery_call(stack, task, kwargs) for task, kwargs, _ in BAD_CALLS]
    task_ids = []
    for call in calls:
        stdout, stderr = call.communicate(timeout=120)
        assert call.returncode == 0, stderr
        task_ids.append(stdout.strip().splitlines()[-1])
    client = stack.client()
    for task_id, (task, kwargs, message) in zip(task_ids, BAD_CALLS, strict=True):
        result = client.AsyncResult(task_id)
        with pytest.raises(Exception) as failure:
            result.get(timeout=60)
        assert result.state == "FAILURE", (task, kwargs)
        assert message in str(failure.value), (kwargs, str(failure.value))
        assert (result.retries or 0) == 0
        assert batch(stack, f"adhoc-{task_id}") is None  # refused before anything was recorded
    text = stack.log_text("worker-faults")
    assert not any(f"[{task_id}] retry" in text for task_id in task_ids)

    good = celery_call(stack, RUN_BATCH, {"rides": 50})
    stdout, stderr = good.communicate(timeout=120)
    assert good.returncode == 0, stderr
    task_id = stdout.strip().splitlines()[-1]
    assert client.AsyncResult(task_id).get(timeout=60)["rows_written"] == 50
    assert written(stack, f"adhoc-{task_id}") == (50, 50)
    assert stack.worker.poll() is None


# --- 7. pickle message ---------------------------------------------------------------------


class _Evil:
    """Unpickling this creates `path`: proof that a pickle body was deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_task_messages_are_refused(faults, tmp_path):
    """A pickle-serialized run_batch (a proper Celery message from a pickle-enabled client) and a
    raw pickle payload under a run_batch header: the worker (accept_content=json) refuses to
    decode both, runs nothing, writes nothing, and keeps serving."""
    stack = faults
    client = Celery("pickle-client", broker=stack.broker_url, backend=stack.env["CELERY_RESULT_BACKEND"])
    client.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    proper_id = str(uuid.uuid4())
    client.send_task(RUN_BATCH, kwargs={"rides": 11}, task_id=proper_id, serializer="pickle")

    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe))).close()  # the payload is live: unpickling it creates the file
    assert probe.exists()
    marker = tmp_path / "unpickled"
    raw_id = str(uuid.uuid4())
    with Connection(stack.broker_url) as conn:
        conn.Producer(serializer="pickle").publish(
            ((), {"rides": 12}, _Evil(marker)),
            routing_key="celery",
            headers={"lang": "py", "task": RUN_BATCH, "id": raw_id, "root_id": raw_id, "retries": 0},
            delivery_mode=2,
        )

    refused = "Refusing to deserialize untrusted content of type pickle"
    wait_for(
        lambda: stack.log_text("worker-faults").count(refused) >= 2,
        30,
        "both pickle messages refused",
        stack,
        "worker-faults",
    )
    good = stack.client().send_task(RUN_BATCH, kwargs={"rides": 13}).get(timeout=60)
    assert good["rows_written"] == 13  # still serving, and the queue behind the refused messages drained
    assert not marker.exists(), "the worker unpickled the payload"
    for task_id in (proper_id, raw_id):
        assert batch(stack, f"adhoc-{task_id}") is None
        assert f"[{task_id}] received" not in stack.log_text("worker-faults")
    assert broker(stack).llen("celery") == 0 and broker(stack).hlen("unacked") == 0  # dropped, not requeued
    assert stack.worker.poll() is None


# --- 8. graceful SIGTERM -------------------------------------------------------------------


def test_sigterm_lets_the_running_batch_finish_then_exits(new_stack):
    """SIGTERM to the worker's main process mid-batch is a warm shutdown: it stops taking work,
    lets the running batch finish and acknowledge, then exits. A batch sent after the SIGTERM
    stays queued (not lost, not half-run) and the next worker writes it."""
    stack = new_stack(**ONE_CHUNK)
    worker = stack.start_worker("term", concurrency=1)
    client = stack.client()
    task_id = str(uuid.uuid4())
    batch_id = f"adhoc-{task_id}"
    client.send_task(RUN_BATCH, kwargs={"rides": BIG_BATCH}, task_id=task_id)
    wait_for(lambda: status(stack, batch_id) == "running", 60, "batch started", stack, "worker-term")
    os.kill(worker.pid, signal.SIGTERM)
    signalled = time.monotonic()
    assert ledger(stack, batch_id) == [], "the batch had already committed: SIGTERM was not mid-batch"
    later = client.send_task(RUN_BATCH, kwargs={"rides": 30})
    try:
        code = worker.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within 90 s of SIGTERM{logs(stack, 'worker-term')}")
    print(f"\n[SIGTERM] worker exited {time.monotonic() - signalled:.1f}s after SIGTERM with code {code}")
    stack.stop(worker)
    assert code == 0, logs(stack, "worker-term")
    row = batch(stack, batch_id)
    assert (row["status"], row["rows_written"]) == ("succeeded", BIG_BATCH), logs(stack, "worker-term")
    assert written(stack, batch_id) == (BIG_BATCH, BIG_BATCH)
    text = stack.log_text("worker-term")
    assert "Warm shutdown" in text and f"[{task_id}] succeeded in" in text
    r = broker(stack)
    assert r.hlen("unacked") == 0, "the finished batch was not acknowledged"
    assert batch(stack, f"adhoc-{later.id}") is None and r.llen("celery") == 1  # the later batch waits

    stack.start_worker("next", concurrency=1)
    assert later.get(timeout=60)["rows_written"] == 30
    assert written(stack, f"adhoc-{later.id}") == (30, 30)
