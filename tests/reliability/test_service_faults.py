"""Issue 5, services side: faults injected into real Redis, PostgreSQL and MLflow server processes,
and hostile files fed to `python -m worker score`.

The machine's shared PostgreSQL (5432) and Redis (6379) are never touched by a fault: every test
that stops a service starts its own instance (tests/reliability/services.py) and stops *that*.
Everything is polled with deadlines; on failure the processes' logs are printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest
import redis
from celery import states

from tests.reliability.services import MlflowServer, PostgresServer, RedisServer, run_measured
from tests.support import REPO_ROOT, unique_model_name, wait_until
from worker.settings import Settings
from worker.store.database import get_engine, migrate

pytestmark = pytest.mark.reliability

RUN_BATCH = "worker.tasks.run_batch"
MAX_CLI_RSS_MB = 300  # measured 127 MB refusing a file, 184 MB streaming 200,000 rides


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def logs_on_failure(stack, *extra: Path) -> Iterator[None]:
    """Print every log of the stack (and `extra` logs) if the block fails."""
    try:
        yield
    except BaseException:
        paths = sorted(stack.logs.glob("*.log")) if stack is not None else []
        for path in [*paths, *extra]:
            if path.exists():
                print(f"\n===== {path} =====\n{path.read_text(errors='replace')[-8000:]}")
        raise


def release(stack) -> None:
    """Stop the stack's processes and hand its shared Redis db numbers back now, not at session end:
    other test sessions on this machine draw from the same few numbers."""
    stack.close()


def batch_run(stack, batch_id: str) -> dict | None:
    rows = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)
    return rows[0]._asdict() if rows else None


def rows_of(stack, batch_id: str) -> tuple[int, int]:
    """(rows, distinct trip ids) written for a batch."""
    count, distinct = stack.sql(
        "SELECT count(*), count(DISTINCT trip_id) FROM ride_predictions WHERE batch_id = :b", b=batch_id
    )[0]
    return count, distinct


def counts_by_batch(stack) -> dict[str, int]:
    return dict(stack.sql("SELECT batch_id, count(*) FROM ride_predictions GROUP BY batch_id"))


def slot_time(batch_id: str) -> float:
    return datetime.fromisoformat(batch_id.removeprefix("schedule-")).timestamp()


def retries_logged(log: str, task_id: str) -> list[float]:
    """The countdowns (s) of every retry the worker logged for a task."""
    pattern = rf"Task {RUN_BATCH}\[{re.escape(task_id)}\] retry: Retry in ([0-9.]+)s"
    return [float(s) for s in re.findall(pattern, log)]


def own_database(pg: PostgresServer) -> str:
    pg.create_database()
    migrate(pg.url)
    get_engine(pg.url).dispose()  # hold no connection to the server we are about to crash
    return pg.url


# ---------------------------------------------------------------- 1. Redis restarts


def test_redis_restart_worker_and_beat_reconnect_by_themselves(make_stack, fresh_pg_url):
    """kill -9 our own redis-server under a running worker and beat (3 s slots), restart it 10 s later."""
    with RedisServer() as broker:
        stack = make_stack(
            fresh_pg_url,
            CELERY_BROKER_URL=broker.url(0),
            CELERY_RESULT_BACKEND=broker.url(1),
            BATCH_INTERVAL_SECONDS="3",
            RIDES_PER_BATCH="40",
        )
        release(stack)  # this stack runs on our own Redis: give back the shared db numbers it claimed
        try:
            with logs_on_failure(stack, broker.log):
                stack.start_worker("redis", concurrency=1)
                stack.start("beat", "--loglevel=INFO", f"--schedule={stack.logs / 'beat-schedule'}", name="beat")

                def succeeded() -> list:
                    return stack.sql("SELECT batch_id FROM batch_runs WHERE status = 'succeeded' ORDER BY batch_id")

                wait_until("2 scheduled batches before the outage", lambda: len(succeeded()) >= 2, 45)
                before = counts_by_batch(stack)
                assert before and all(n == 40 for n in before.values()), before

                down_at = time.time()
                broker.crash()
                stack.wait_for_log("worker-redis", "Connection to broker lost", 20)
                lost_after = time.time() - down_at
                time.sleep(max(0.0, 10 - (time.time() - down_at)))
                broker.start()
                up_at = time.time()

                def after_restart() -> list[str]:
                    return [r.batch_id for r in succeeded() if slot_time(r.batch_id) > up_at]

                new = wait_until(
                    "2 scheduled batches after the restart", lambda: len(b := after_restart()) >= 2 and b, 45
                )
                first_after = min(slot_time(b) for b in new) - up_at

                # Both reconnected by themselves: nothing was restarted but redis-server.
                assert all(p.poll() is None for p in stack.processes), "a Celery process died"
                worker_log, beat_log = stack.log_text("worker-redis"), stack.log_text("beat")
                connected = re.findall(rf"Connected to redis://\S*127\.0\.0\.1:{broker.port}/0", worker_log)
                assert len(connected) >= 2, worker_log[-3000:]  # at start, and again after the restart

                # Batches committed before the crash are intact, and every batch is whole and written once.
                after = counts_by_batch(stack)
                assert {b: after[b] for b in before} == before
                runs = stack.sql("SELECT batch_id, status, rows_written FROM batch_runs ORDER BY batch_id")
                for run in runs:
                    if run.status == "succeeded":
                        assert run.rows_written == 40 and rows_of(stack, run.batch_id) == (40, 40), run

                # The outage's slots: beat fails to publish one ("Couldn't apply scheduled task": skipped), then
                # blocks in the result backend's reconnect loop (up to 20 x 1 s) and, once Redis is back, sends
                # the slot it was due for; the ticks that fell due while it was blocked are never sent.
                slots = sorted(slot_time(r.batch_id) for r in runs)
                outage_slots = [s for s in np.arange(slots[0], slots[-1] + 1, 3.0) if down_at + 1 < s < up_at - 1]
                present = set(slots)
                skipped = [s for s in outage_slots if s not in present]
                assert skipped, f"expected the outage's slots to be missing, slots={slots}"
                assert "Couldn't apply scheduled task" in beat_log or "Connection" in beat_log, beat_log[-3000:]
                unfinished = [r for r in runs if r.status != "succeeded"]
                print(
                    "\nslots (s from the crash):",
                    [(round(float(s - down_at), 1), s in present) for s in np.arange(slots[0], slots[-1] + 1, 3.0)],
                )
                print(
                    f"redis down {up_at - down_at:.1f}s; worker noticed after {lost_after:.1f}s; "
                    f"first new slot {first_after:.1f}s after restart; {len(before)} batches before, "
                    f"{len(new)}+ after; outage slots {len(outage_slots)}, skipped {len(skipped)}; "
                    f"unfinished {[(r.batch_id, r.status) for r in unfinished]}; "
                    f"beat 'Couldn't apply' lines: {beat_log.count('Couldn' + chr(39) + 't apply scheduled task')}"
                )
        finally:
            release(stack)


# ---------------------------------------------------------------- 2. PostgreSQL crashes


def copy_backend(pg: PostgresServer, batch_id: str, seconds: float = 60) -> int:
    """Wait until the batch's rows are streaming in (its COPY runs inside the write transaction); its pid."""
    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname=pg.database)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:

            def copying() -> int | None:
                cur.execute(
                    "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                    "AND state = 'active' AND query LIKE 'COPY ride_predictions%'"
                )
                row = cur.fetchone()
                return row[0] if row else None

            pid = wait_until(f"the COPY of {batch_id}", copying, seconds, every=0.02)
            cur.execute("SELECT status FROM batch_runs WHERE batch_id = %s", (batch_id,))
            assert cur.fetchone()[0] in ("running", "retrying")
            return pid
    finally:
        conn.close()


def retry_errors(log: str, task_id: str) -> list[str]:
    return re.findall(rf"\[{re.escape(task_id)}\] retry: Retry in [0-9.]+s: (\w+\(.{{0,150}})", log)


@pytest.mark.parametrize(("append_only", "survives"), [(True, True), (False, False)])
def test_queued_batch_survives_a_redis_crash_only_with_append_only_persistence(
    make_stack, fresh_pg_url, append_only, survives
):
    """A batch waits in the queue (no worker yet) when redis-server is killed -9 and restarted.
    With append-only persistence (as the compose file runs Redis) it is still there and a worker
    then writes it; without (as this machine's Redis runs) it is gone."""
    with RedisServer(append_only=append_only) as broker:
        stack = make_stack(fresh_pg_url, CELERY_BROKER_URL=broker.url(0), CELERY_RESULT_BACKEND=broker.url(1))
        release(stack)  # this stack runs on our own Redis
        try:
            with logs_on_failure(stack, broker.log):
                done = stack.cli("dispatch", "--rides", "60")
                assert done.returncode == 0, done.stderr
                batch_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("batch "))
                queue = redis.Redis.from_url(broker.url(0))
                assert queue.llen("celery") == 1
                broker.crash()
                broker.start()
                assert queue.llen("celery") == (1 if survives else 0)
                stack.start_worker("aof", concurrency=1)
                if survives:
                    wait_until("the queued batch written after the restart", lambda: batch_run(stack, batch_id), 60)
                    wait_until("the batch to succeed", lambda: batch_run(stack, batch_id)["status"] == "succeeded", 60)
                    assert batch_run(stack, batch_id)["rows_written"] == 60
                else:
                    # A batch sent after the restart: once the worker (one process) wrote it, it had
                    # taken whatever the queue held before it. The lost batch was not among that.
                    later = stack.cli("dispatch", "--rides", "60")
                    assert later.returncode == 0, later.stderr
                    later_id = next(line.split()[1] for line in later.stdout.splitlines() if line.startswith("batch "))
                    wait_until(
                        "the batch sent after the restart to succeed",
                        lambda: (batch_run(stack, later_id) or {}).get("status") == "succeeded",
                        60,
                    )
                    assert batch_run(stack, batch_id) is None
        finally:
            release(stack)


def test_postgres_crash_mid_batch_retries_with_backoff_and_writes_once(make_stack):
    """Our own PostgreSQL: the COPY of a 100,000-ride batch is cancelled by the server, then another
    batch's COPY dies with `pg_ctl stop -m immediate`; both are retried and written exactly once."""
    rides = 100_000
    with PostgresServer() as pg:
        stack = make_stack(own_database(pg), CHUNK_SIZE="200000")
        try:
            with logs_on_failure(stack, pg.log):
                stack.start_worker("pg", concurrency=1)
                client = stack.client()
                log = lambda: stack.log_text("worker-pg")  # noqa: E731
                committed = client.send_task(RUN_BATCH, kwargs={"rides": 500, "seed": 3}).get(timeout=120)
                assert committed["status"] == "succeeded"
                before = counts_by_batch(stack)

                # (a) The server cancels the write (pg_cancel_backend, as statement_timeout would): the
                # connection survives, the transaction is rolled back, the task must retry.
                cancelled = str(uuid.uuid4())
                client.send_task(RUN_BATCH, kwargs={"rides": rides, "seed": 4}, task_id=cancelled)
                pid = copy_backend(pg, f"adhoc-{cancelled}")
                stack.sql("SELECT pg_cancel_backend(:pid)", pid=pid)
                run = wait_until(
                    "the cancelled batch to succeed",
                    lambda: (
                        (r := batch_run(stack, f"adhoc-{cancelled}")) and r["status"] in ("succeeded", "failed") and r
                    ),
                    60,
                )
                assert run["status"] == "succeeded", run["error"]
                assert run["attempts"] == 2 and rows_of(stack, f"adhoc-{cancelled}") == (rides, rides)
                assert "QueryCanceled" in retry_errors(log(), cancelled)[0]
                before = counts_by_batch(stack)

                # (b) PostgreSQL crashes in the middle of the COPY.
                task_id = str(uuid.uuid4())
                batch_id = f"adhoc-{task_id}"
                client.send_task(RUN_BATCH, kwargs={"rides": rides, "seed": 5}, task_id=task_id)
                copy_backend(pg, batch_id)
                crashed_at = time.monotonic()
                pg.crash()

                wait_until("two retries while PostgreSQL is down", lambda: len(retries_logged(log(), task_id)) >= 2, 60)
                time.sleep(max(0.0, 5 - (time.monotonic() - crashed_at)))  # an outage of 5 s at least
                down_for = time.monotonic() - crashed_at
                pg.start()
                restarted_at = time.monotonic()

                run = wait_until(
                    "the batch to succeed after the restart",
                    lambda: (r := batch_run(stack, batch_id)) and r["status"] == "succeeded" and r,
                    120,
                )
                recovered_in = time.monotonic() - restarted_at
                countdowns = retries_logged(log(), task_id)
                assert rows_of(stack, batch_id) == (rides, rides)
                assert run["rows_written"] == rides and run["chunks_done"] == run["chunks_total"] == 1
                assert run["attempts"] == len(countdowns) + 1 >= 3, (run["attempts"], countdowns)
                assert stack.sql("SELECT count(*) FROM batch_chunks WHERE batch_id = :b", b=batch_id)[0][0] == 1
                after = counts_by_batch(stack)
                assert {b: after[b] for b in before} == before  # committed before the crash: intact
                assert set(after) == {*before, batch_id}
                errors = retry_errors(log(), task_id)
                # The first try died inside its write (the server went away), not at connect.
                assert "Connection refused" not in errors[0], errors[0]
                print(
                    f"\npostgres down {down_for:.1f}s; retries {countdowns}; attempts {run['attempts']}; "
                    f"succeeded {recovered_in:.1f}s after restart; rows {rides} once; errors {errors}"
                )
        finally:
            release(stack)


# ---------------------------------------------------------------- 3. The MLflow server is down


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory) -> Iterator[tuple[MlflowServer, Settings, str]]:
    """Our own MLflow server with one small model registered under @production."""
    from tests.conftest import with_record
    from worker.lifecycle.training import train_and_register
    from worker.model.training import ForestParams

    with MlflowServer() as server:
        settings = with_record(
            Settings(
                MLFLOW_TRACKING_URI=server.uri,
                LOCAL_DIR=tmp_path_factory.mktemp("own-registry"),
                MODEL_NAME=unique_model_name("registry-faults"),
                MODEL_URI="",
            )
        )
        result = train_and_register(
            settings, rides=5000, seed=3, params=ForestParams(n_estimators=5, max_depth=8, min_samples_leaf=10)
        )
        assert result.promoted, result.reason
        yield server, settings, result.version


@pytest.fixture
def registry(own_registry) -> tuple[MlflowServer, Settings, str]:
    server, _, _ = own_registry
    if not server.up:
        server.start()
    return own_registry


def test_registry_down_when_worker_starts_retries_and_never_writes_without_a_model(make_stack, fresh_pg_url, registry):
    server, settings, version = registry
    server.stop()
    stack = make_stack(fresh_pg_url, MLFLOW_TRACKING_URI=server.uri, MODEL_NAME=settings.MODEL_NAME)
    try:
        with logs_on_failure(stack, server.log):
            stack.start_worker("noreg", concurrency=1)
            client = stack.client()
            task_id = str(uuid.uuid4())
            batch_id = f"adhoc-{task_id}"
            sent = time.monotonic()
            result = client.send_task(RUN_BATCH, kwargs={"rides": 200}, task_id=task_id)

            run = wait_until(
                "the batch to be marked retrying",
                lambda: (r := batch_run(stack, batch_id)) and r["status"] == "retrying" and r,
                90,
            )
            first_retry_after = time.monotonic() - sent
            assert "ModelUnavailable" in run["error"], run["error"]
            assert f"cannot load models:/{settings.MODEL_NAME}@production" in run["error"]
            assert run["model_version"] is None
            state_while_down = result.state  # RETRY, or STARTED when the next try has already begun
            assert state_while_down not in states.READY_STATES, state_while_down
            assert rows_of(stack, batch_id) == (0, 0)
            wait_until(
                "a second try while the registry is down",
                lambda: len(retries_logged(stack.log_text("worker-noreg"), task_id)) >= 2,
                90,
            )
            assert rows_of(stack, batch_id) == (0, 0)

            server.start()
            restarted = time.monotonic()
            out = result.get(timeout=120)
            recovered_in = time.monotonic() - restarted
            assert out["status"] == "succeeded" and out["model_version"] == version
            assert rows_of(stack, batch_id) == (200, 200)
            unversioned = stack.sql(
                "SELECT count(*) FROM ride_predictions WHERE model_version IS NULL OR model_version = ''"
            )[0][0]
            assert unversioned == 0
            final = batch_run(stack, batch_id)
            assert final["status"] == "succeeded" and final["error"] is None and final["attempts"] >= 3
            print(
                f"\nregistry down: first 'retrying' after {first_retry_after:.1f}s (task state {state_while_down}); retries "
                f"{retries_logged(stack.log_text('worker-noreg'), task_id)}; attempts {final['attempts']}; "
                f"succeeded with v{version} {recovered_in:.1f}s after the registry came back"
            )
    finally:
        release(stack)


def test_registry_down_while_worker_runs_keeps_serving_the_cached_model(make_stack, fresh_pg_url, registry):
    server, settings, version = registry
    stack = make_stack(
        fresh_pg_url, MLFLOW_TRACKING_URI=server.uri, MODEL_NAME=settings.MODEL_NAME, MODEL_REFRESH_SECONDS="1"
    )
    try:
        with logs_on_failure(stack, server.log):
            stack.start_worker("cached", concurrency=1)  # one process: one cache
            client = stack.client()
            first = client.send_task(RUN_BATCH, kwargs={"rides": 100}).get(timeout=120)
            assert first["model_version"] == version

            server.stop()
            time.sleep(1.5)  # past MODEL_REFRESH_SECONDS: the next batch asks the registry again
            started = time.monotonic()
            second = client.send_task(RUN_BATCH, kwargs={"rides": 100}).get(timeout=120)
            took = time.monotonic() - started
            assert second["status"] == "succeeded" and second["model_version"] == version
            assert first["model_pinned_by"] == "alias" and second["model_pinned_by"] == "fallback"
            assert second["rows_written"] == 100 and not second["duplicate"]
            assert rows_of(stack, second["batch_id"]) == (100, 100)
            stack.wait_for_log("worker-cached", "model registry unreachable", 10)
            stack.wait_for_log("worker-cached", f"keep serving cached version {version}", 1)
            assert batch_run(stack, second["batch_id"])["attempts"] == 1  # no retry was needed
            print(f"\nregistry down: batch with cached v{version} took {took:.1f}s (registry probe included)")
    finally:
        release(stack)


def test_registry_down_while_monitoring_needs_a_reference_waits_and_catches_up(make_stack, fresh_pg_url, registry):
    """The batch is written; its monitoring cannot load the version's reference while the registry is
    down, says so (`waiting`), retries with backoff, and completes once the registry is back. The
    batch itself stays succeeded with its rows throughout."""
    server, settings, version = registry
    env = {"MLFLOW_TRACKING_URI": server.uri, "MODEL_NAME": settings.MODEL_NAME}
    stack = make_stack(fresh_pg_url, **env)
    try:
        with logs_on_failure(stack, server.log):
            writer = stack.start_worker("writer", concurrency=1, extra_env={"MONITORING": "false"})
            done = stack.client().send_task(RUN_BATCH, kwargs={"rides": 300}).get(timeout=120)
            batch_id = done["batch_id"]
            stack.stop(writer)
            assert stack.sql("SELECT count(*) FROM batch_metrics")[0][0] == 0  # monitoring was off

            server.stop()
            stack.start_worker("monitor", concurrency=1)  # never loaded the reference
            stack.client().send_task("worker.tasks.monitor_batch", kwargs={"batch_id": batch_id})
            waiting = wait_until(
                "monitoring to wait for the registry",
                lambda: stack.sql(
                    "SELECT monitor_error FROM batch_metrics WHERE batch_id = :b AND monitor_status = 'waiting'",
                    b=batch_id,
                ),
                120,
            )
            assert waiting[0][0]  # names why
            assert batch_run(stack, batch_id)["status"] == "succeeded" and rows_of(stack, batch_id) == (300, 300)

            server.start()
            row = wait_until(
                "monitoring to complete once the registry is back",
                lambda: next(
                    iter(
                        stack.sql(
                            "SELECT * FROM batch_metrics WHERE batch_id = :b AND monitor_status = 'ok'", b=batch_id
                        )
                    ),
                    None,
                ),
                240,
            )
            assert row.model_version == version and row.rows == 300 and row.columns_checked == 6
            assert batch_run(stack, batch_id)["status"] == "succeeded"
    finally:
        release(stack)


# ---------------------------------------------------------------- 4. Malformed and hostile files

HEADER = "pickup_community_area,dropoff_community_area,trip_start_timestamp,fare,trip_miles"
GOOD = "8,32,2026-11-26 08:15:00,9.25,1.9"


def table_state(stack) -> dict[str, object]:
    exist = stack.sql(
        "SELECT to_regclass('public.ride_predictions') IS NOT NULL, to_regclass('public.batch_runs') IS NOT NULL, "
        "to_regclass('public.batch_chunks') IS NOT NULL"
    )[0]
    return {
        "exist": tuple(exist),
        "ride_predictions": stack.sql("SELECT count(*), max(created_at) FROM ride_predictions")[0],
        "batch_runs": stack.sql("SELECT count(*) FROM batch_runs")[0][0],
        "batch_chunks": stack.sql("SELECT count(*) FROM batch_chunks")[0][0],
    }


def score_cli(stack, path: Path, *args: str, extra_env: dict[str, str] | None = None):
    env = {**stack.env, **(extra_env or {})}
    return run_measured([sys.executable, "-m", "worker", "score", str(path), *args], env=env, cwd=REPO_ROOT)


SQL_TRIP = "'); DROP TABLE ride_predictions; --"
SQL_FARE = "0; DELETE FROM batch_runs; --"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("a,b,c\n1,2,3\n", ["missing column(s) pickup_community_area"], id="wrong-columns"),
        pytest.param(
            f"{HEADER}\n{GOOD}\neight,32,2026-11-26 08:15:00,ten,1.9\n8,32,yesterday,9.25,-1\n",
            [
                "row 2: pickup_community_area is not a number; fare is not a number",
                "row 3: trip_start_timestamp is not a date and time; trip_miles is negative",
                "2 of 3 rows invalid; file refused, nothing written",
            ],
            id="bad-types",
        ),
        pytest.param(
            f"{HEADER}\n{GOOD}\n999,32,2026-11-26 08:15:00,9.25,1.9\n",
            ["row 2: pickup_community_area outside 1..77", "1 of 2 rows invalid"],
            id="area-999",
        ),
        pytest.param(
            f'trip_id,{HEADER}\n"{SQL_TRIP}",{GOOD}\n{uuid.uuid4()},8,32,2026-11-26 08:15:00,"{SQL_FARE}",1.9\n'
            f'{uuid.uuid4()},"1; DROP TABLE batch_runs",32,2026-11-26 08:15:00,9.25,1.9\n',
            [
                "row 1: trip_id is not a UUID",
                "row 2: fare is not a number",
                "row 3: pickup_community_area is not a number",
                "3 of 3 rows invalid",
            ],
            id="sql-in-fields",
        ),
        pytest.param(
            f"{HEADER}\n{GOOD}\n{GOOD},extra,fields\n", ["line 3 has", "more than the header's"], id="ragged-rows"
        ),
        pytest.param(HEADER + "\n", ["has a header but no rows"], id="header-only"),
    ],
)
def test_hostile_file_is_refused_with_reasons_and_tables_unchanged(stack, tmp_path, content, expected):
    path = tmp_path / "rides.csv"
    path.write_text(content)
    before = table_state(stack)
    done = score_cli(stack, path, "--wait")
    assert done.returncode == 2, done.stdout + done.stderr
    for line in expected:
        assert line in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert table_state(stack) == before == {**before, "exist": (True, True, True)}


def test_sql_text_is_data_with_skip_invalid_valid_rows_written_tables_intact(stack, tmp_path):
    ids = [uuid.uuid4() for _ in range(3)]
    path = tmp_path / "mixed.csv"
    path.write_text(
        f"trip_id,{HEADER}\n"
        f'"{SQL_TRIP}",{GOOD}\n'
        f"{ids[0]},{GOOD}\n"
        f'{ids[1]},8,32,2026-11-26 08:15:00,"{SQL_FARE}",1.9\n'
        f"{ids[2]},76,8,2026-11-26 09:00:00,41.0,17.2\n"
    )
    before = table_state(stack)
    done = score_cli(stack, path, "--skip-invalid", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped 2 invalid rows" in done.stderr
    batch_id = re.search(r"batch (file-[0-9a-f-]+): 2 rides sent", done.stdout).group(1)
    written = stack.sql("SELECT trip_id FROM ride_predictions WHERE batch_id = :b", b=batch_id)
    assert {str(r.trip_id) for r in written} == {str(ids[0]), str(ids[2])}
    after = table_state(stack)
    assert after["exist"] == (True, True, True)
    assert after["ride_predictions"][0] == before["ride_predictions"][0] + 2
    assert after["batch_runs"] == before["batch_runs"] + 1


def sparse_file(path: Path, size: int, header: str = HEADER) -> Path:
    with open(path, "w") as handle:
        handle.write(header + "\n")
    os.truncate(path, size)
    assert os.stat(path).st_blocks * 512 < 1 << 20, "expected a sparse file"
    return path


def test_one_gigabyte_file_is_refused_at_once_with_bounded_memory(stack, tmp_path):
    path = sparse_file(tmp_path / "huge.csv", 1 << 30)
    before = table_state(stack)
    done = score_cli(stack, path, "--wait")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "1074 MB is more than MAX_RIDES_PER_REQUEST=1000000" in done.stderr
    assert "split the file" in done.stderr
    assert done.seconds < 30 and done.peak_rss_mb < MAX_CLI_RSS_MB, (done.seconds, done.peak_rss_mb)
    assert table_state(stack) == before
    print(f"\n1 GiB file refused in {done.seconds:.1f}s, CLI peak RSS {done.peak_rss_mb:.0f} MB")


def test_one_line_file_under_the_size_limit_is_refused_with_bounded_memory(stack, tmp_path):
    """256 MiB passes the size check (400 MB by default) but is one line of NUL bytes: the reader
    must not hold that line whole."""
    path = sparse_file(tmp_path / "one-line.csv", 256 << 20)
    before = table_state(stack)
    done = score_cli(stack, path, "--wait")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "longer than" in done.stderr, done.stderr[-2000:]
    assert done.peak_rss_mb < MAX_CLI_RSS_MB, done.peak_rss_mb
    assert table_state(stack) == before
    print(f"\n256 MiB one-line file refused in {done.seconds:.1f}s, CLI peak RSS {done.peak_rss_mb:.0f} MB")


def test_large_allowed_file_is_streamed_with_bounded_memory(stack, tmp_path):
    rides = 200_000
    rng = np.random.default_rng(11)
    start = pd.Timestamp("2026-11-26 00:00:00")
    frame = pd.DataFrame(
        {
            "pickup_community_area": rng.integers(1, 78, rides),
            "dropoff_community_area": rng.integers(1, 78, rides),
            "trip_start_timestamp": (start + pd.to_timedelta(rng.integers(0, 86_400, rides), unit="s")).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "fare": np.round(rng.uniform(3.25, 60, rides), 2),
            "trip_miles": np.round(rng.uniform(0.1, 20, rides), 2),
        }
    )
    path = tmp_path / "large.csv"
    frame.to_csv(path, index=False)
    size_mb = path.stat().st_size / 1e6
    done = score_cli(stack, path, "--wait", extra_env={"MAX_RIDES_PER_REQUEST": str(rides)})
    assert done.returncode == 0, done.stdout + done.stderr
    batch_id = re.search(rf"batch (file-[0-9a-f-]+): {rides} rides sent in 20 task\(s\)", done.stdout).group(1)
    assert f"done: {rides} rows written" in done.stdout
    assert rows_of(stack, batch_id) == (rides, rides)
    assert done.peak_rss_mb < MAX_CLI_RSS_MB, done.peak_rss_mb
    print(f"\n{rides} rides ({size_mb:.1f} MB) scored in {done.seconds:.1f}s, CLI peak RSS {done.peak_rss_mb:.0f} MB")


class BreakingProxy:
    """A TCP proxy to Redis that cuts every connection, and takes no new one, once clients have sent
    `limit` bytes through it: a broker lost in the middle of a large send."""

    def __init__(self, target_port: int, limit: int) -> None:
        self.limit, self.sent, self.target_port = limit, 0, target_port
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source, target, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    with self.lock:
                        self.sent += len(data)
                        over = self.sent > self.limit
                    if over:
                        self.cut()
                        return
                target.sendall(data)
        except OSError:
            return

    def cut(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_file_whose_send_breaks_midway_is_recorded_failed_and_says_what_went(stack, tmp_path):
    """30,000 rides are three messages of about 1.5 MB; the broker is lost during the second. Before,
    the batch stayed `running` for ever (its last chunks never coming) and the error named no batch."""
    rides = 30_000
    rng = np.random.default_rng(5)
    pd.DataFrame(
        {
            "pickup_community_area": rng.integers(1, 78, rides),
            "dropoff_community_area": rng.integers(1, 78, rides),
            "trip_start_timestamp": "2026-11-26 08:15:00",
            "fare": np.round(rng.uniform(3.25, 60, rides), 2),
            "trip_miles": np.round(rng.uniform(0.1, 20, rides), 2),
        }
    ).to_csv(tmp_path / "rides.csv", index=False)
    broker = stack.env["CELERY_BROKER_URL"]
    proxy = BreakingProxy(int(broker.rsplit(":", 1)[1].split("/")[0]), limit=2_500_000)
    try:
        cut_broker = re.sub(r":\d+/", f":{proxy.port}/", broker)
        done = score_cli(stack, tmp_path / "rides.csv", extra_env={"CELERY_BROKER_URL": cut_broker})
    finally:
        proxy.cut()
    assert done.returncode == 1, done.stdout + done.stderr
    said = re.search(
        r"the send broke after 1 of 3 chunks \(10,000 of 30,000 rides\): .*batch (file-[0-9a-f-]+) is recorded failed",
        done.stderr,
    )
    assert said, done.stderr
    assert "Traceback" not in done.stderr and "Score the file again" in done.stderr
    batch_id = said.group(1)
    # The chunk that went is written under the batch by the stack's worker; the batch stays failed.
    wait_until("the sent chunk's rows", lambda: rows_of(stack, batch_id) == (10_000, 10_000), 120)
    row = stack.sql("SELECT status, error, chunks_done, chunks_total FROM batch_runs WHERE batch_id = :b", b=batch_id)[
        0
    ]
    assert (row.status, row.chunks_done, row.chunks_total) == ("failed", 1, 3), row
    assert "the send of the file broke after 1 of 3 chunks" in row.error
