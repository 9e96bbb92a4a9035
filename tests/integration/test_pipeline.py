"""The Celery pipeline end to end: real Redis, PostgreSQL, MLflow server and worker processes."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import datetime

import pandas as pd
import pytest

from tests.stack import CELERY
from tests.support import REPO_ROOT
from worker.lifecycle.training import train_and_register
from worker.model.training import ForestParams

pytestmark = pytest.mark.integration


def batch_row(stack, batch_id: str) -> dict:
    rows = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)
    assert rows, f"no batch_runs row for {batch_id}"
    return rows[0]._asdict()


def test_dispatch_wait_writes_typed_rows_with_lineage(stack, trained_model):
    settings, result = trained_model
    done = stack.cli("dispatch", "--rides", "300", "--seed", "11", "--wait")
    assert done.returncode == 0, done.stderr + done.stdout
    lines = done.stdout.splitlines()
    batch_id = next(line.split()[1] for line in lines if line.startswith("batch "))
    assert lines[-1].startswith("done: 300 rows written with")
    assert f"version {result.version}" in lines[-1]

    rows = stack.sql("SELECT * FROM ride_predictions WHERE batch_id = :b", b=batch_id)
    assert len(rows) == 300
    first = rows[0]._asdict()
    assert isinstance(first["trip_id"], uuid.UUID | str) and uuid.UUID(str(first["trip_id"]))
    assert 1 <= first["pickup_community_area"] <= 77 and 1 <= first["dropoff_community_area"] <= 77
    assert isinstance(first["trip_start_timestamp"], datetime) and first["trip_start_timestamp"].tzinfo is None
    assert first["created_at"].tzinfo is not None
    for column in ("fare", "trip_total", "trip_miles", "predicted_duration"):
        assert isinstance(first[column], float)
    assert all(r.predicted_duration > 0 for r in rows)
    assert {(r.model_name, r.model_version) for r in rows} == {(settings.MODEL_NAME, result.version)}
    assert len({r.trip_id for r in rows}) == 300

    run = batch_row(stack, batch_id)
    assert run["status"] == "succeeded" and run["trigger"] == "adhoc"
    assert run["rides_requested"] == 300 and run["rows_written"] == 300
    assert run["model_version"] == result.version and run["finished_at"] >= run["started_at"]


def test_large_request_is_split_into_chunks_that_all_complete(stack):
    done = stack.cli("dispatch", "--rides", "9000", "--wait")  # CHUNK_SIZE is 2000 in the test stack
    assert done.returncode == 0, done.stderr + done.stdout
    batch_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("batch "))
    chunks = stack.sql("SELECT chunk_index, rows_written FROM batch_chunks WHERE batch_id = :b ORDER BY 1", b=batch_id)
    assert [(c.chunk_index, c.rows_written) for c in chunks] == [(0, 2000), (1, 2000), (2, 2000), (3, 2000), (4, 1000)]
    count, distinct = stack.sql(
        "SELECT count(*), count(DISTINCT trip_id) FROM ride_predictions WHERE batch_id = :b", b=batch_id
    )[0]
    assert count == distinct == 9000
    run = batch_row(stack, batch_id)
    assert (run["status"], run["chunks_done"], run["chunks_total"], run["rows_written"]) == ("succeeded", 5, 5, 9000)


def test_same_task_delivered_twice_writes_once_and_says_so(stack):
    client = stack.client()
    task_id = str(uuid.uuid4())
    first = client.send_task("worker.tasks.run_batch", kwargs={"rides": 120}, task_id=task_id).get(timeout=120)
    assert first["duplicate"] is False and first["rows_written"] == 120
    client.send_task("worker.tasks.run_batch", kwargs={"rides": 120}, task_id=task_id)
    # The backend keeps the first SUCCESS for this task id; the second run says so in its log and result.
    stack.wait_for_log("worker-shared", f"batch adhoc-{task_id} was already written", 60)
    stack.wait_for_log("worker-shared", "'duplicate': True, 'seconds'", 10)
    assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=f"adhoc-{task_id}")[0][0] == 120


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rides": -1}, "rides must be at least 1"),
        ({"rides": "abc"}, "rides must be a whole number"),
        ({"rides": 10**12}, "MAX_RIDES_PER_REQUEST"),
        ({"rides": 10, "colour": "red"}, "unexpected keyword argument 'colour'"),
        ({"rides": 10, "seed": "x"}, "seed must be a whole number"),
    ],
)
def test_bad_task_arguments_fail_clearly_without_retry(stack, kwargs, message):
    client = stack.client()
    result = client.send_task("worker.tasks.run_batch", kwargs=kwargs)
    with pytest.raises(Exception) as failure:
        result.get(timeout=60)
    assert message in str(failure.value)
    assert result.state == "FAILURE"
    assert (result.retries or 0) == 0
    # The worker keeps serving.
    assert client.send_task("worker.tasks.run_batch", kwargs={"rides": 5}).get(timeout=60)["rows_written"] == 5


@pytest.mark.parametrize(
    ("rides", "message"),
    [
        ("not a list", "non-empty list"),
        ([{"fare": 3}], "missing column"),
        (
            [
                {
                    "pickup_community_area": 999,
                    "dropoff_community_area": 8,
                    "trip_start_timestamp": "2026-11-26T10:00:00",
                    "fare": 10.0,
                    "trip_miles": 2.0,
                }
            ],
            "pickup_community_area outside 1..77",
        ),
    ],
)
def test_malformed_ride_list_is_refused(stack, rides, message):
    result = stack.client().send_task("worker.tasks.score_rides", kwargs={"rides": rides})
    with pytest.raises(Exception) as failure:
        result.get(timeout=60)
    assert message in str(failure.value)
    assert (result.retries or 0) == 0


def test_score_rides_task_keeps_given_trip_ids(stack):
    trip = str(uuid.uuid4())
    rides = [
        {
            "trip_id": trip,
            "pickup_community_area": 8,
            "dropoff_community_area": 32,
            "trip_start_timestamp": "2026-11-26T08:15:00",
            "fare": 9.25,
            "trip_total": 11.0,
            "trip_miles": 1.9,
        },
        {
            "pickup_community_area": 76,
            "dropoff_community_area": 8,
            "trip_start_timestamp": "2026-11-26T09:00:00",
            "fare": 41.0,
            "trip_miles": 17.2,
        },
    ]
    out = stack.client().send_task("worker.tasks.score_rides", kwargs={"rides": rides}).get(timeout=60)
    assert out["rows_written"] == 2
    rows = stack.sql(
        "SELECT trip_id, trip_total, predicted_duration FROM ride_predictions WHERE batch_id = :b ORDER BY fare",
        b=out["batch_id"],
    )
    assert str(rows[0].trip_id) == trip and rows[0].trip_total == 11.0
    assert rows[1].trip_total is None
    assert rows[1].predicted_duration > rows[0].predicted_duration  # O'Hare to downtown takes longer


def _rides_file(tmp_path, rows: list[dict], name: str = "rides.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


GOOD = {
    "pickup_community_area": 8,
    "dropoff_community_area": 32,
    "trip_start_timestamp": "2026-11-26 08:15:00",
    "fare": 9.25,
    "trip_total": 11.0,
    "trip_miles": 1.9,
}


def test_score_file_writes_every_row(stack, tmp_path):
    given = str(uuid.uuid4())
    path = _rides_file(tmp_path, [{**GOOD, "trip_id": given}] + [{**GOOD, "trip_id": ""} for _ in range(24)])
    done = stack.cli("score", str(path), "--wait")
    assert done.returncode == 0, done.stderr + done.stdout
    batch_id = done.stdout.split()[1].rstrip(":")
    rows = stack.sql("SELECT trip_id FROM ride_predictions WHERE batch_id = :b", b=batch_id)
    assert len(rows) == 25 and given in {str(r.trip_id) for r in rows}
    assert batch_row(stack, batch_id)["trigger"] == "file"


def test_score_file_with_bad_rows_is_refused_whole_with_reasons(stack, tmp_path):
    bad = [
        GOOD,
        {**GOOD, "fare": "cheap"},
        {**GOOD, "pickup_community_area": 999},
        {**GOOD, "trip_start_timestamp": "yesterday-ish"},
        {**GOOD, "trip_miles": "'; DROP TABLE ride_predictions; --"},
        {**GOOD, "fare": "1e39"},  # beyond float32: it failed the batch in the worker, even with --skip-invalid
        {**GOOD, "trip_start_timestamp": "now"},  # pandas' "now", stored as if Chicago time
    ]
    path = _rides_file(tmp_path, bad)
    before = stack.sql("SELECT count(*) FROM ride_predictions")[0][0]
    done = stack.cli("score", str(path))
    assert done.returncode == 2
    assert "row 2: fare is not a number" in done.stderr
    assert "row 3: pickup_community_area outside 1..77" in done.stderr
    assert "row 4: trip_start_timestamp is not a date and time" in done.stderr
    assert "row 5: trip_miles is not a number" in done.stderr
    assert "row 6: fare is over 100,000" in done.stderr
    assert "row 7: trip_start_timestamp is not a date and time" in done.stderr
    assert "file refused, nothing written" in done.stderr
    assert stack.sql("SELECT count(*) FROM ride_predictions")[0][0] == before

    skipped = stack.cli("score", str(path), "--skip-invalid", "--wait")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 6 invalid rows" in skipped.stderr
    assert stack.sql("SELECT count(*) FROM ride_predictions")[0][0] == before + 1


def test_score_file_with_missing_columns_is_refused(stack, tmp_path):
    path = _rides_file(tmp_path, [{"fare": 1.0, "trip_miles": 2.0}])
    done = stack.cli("score", str(path))
    assert done.returncode == 2
    assert "missing column(s) pickup_community_area" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be at least 1"),
        ("-3", "must be at least 1"),
        ("abc", "is not a whole number"),
        ("2000001", "over MAX_RIDES_PER_REQUEST=2000000"),
    ],
)
def test_dispatch_refuses_bad_counts_and_enqueues_nothing(stack, value, message):
    before = stack.queue_length()
    done = stack.cli("dispatch", "--rides", value, extra_env={"MAX_RIDES_PER_REQUEST": "2000000"})
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert stack.queue_length() == before


def test_status_reports_every_part(stack):
    done = stack.cli("status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["broker"]["ok"] and isinstance(report["broker"]["queue_length"], int)
    assert report["database"]["schema_ready"] is True
    assert report["registry"]["model_version"]
    down = stack.cli("status", "--json", extra_env={"DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none"})
    assert down.returncode == 1
    assert json.loads(down.stdout)["database"]["ok"] is False
    # Reachable but without the tables, every other part up: no command can run, so not ok and exit 1
    # (it said ok, exit 0, while every other command failed pointing at status).
    from tests.stack import create_database, drop_database

    name, empty = create_database()
    try:
        bare = stack.cli("status", "--json", extra_env={"DATABASE_URL": empty})
    finally:
        drop_database(name)
    found = json.loads(bare.stdout)
    assert found["broker"]["ok"] and found["registry"]["ok"] and found["database"]["ok"], found
    assert found["database"]["schema_ready"] is False and "migrate" in found["database"]["schema_problem"]
    assert bare.returncode == 1 and found["ok"] is False


def test_moved_alias_is_used_by_next_batch_without_restart(new_stack, mlflow_server, tmp_path):
    from tests.conftest import with_record
    from worker.settings import Settings

    own = with_record(
        Settings(MLFLOW_TRACKING_URI=mlflow_server, LOCAL_DIR=tmp_path, MODEL_NAME=f"alias-move-{uuid.uuid4().hex[:6]}")
    )
    small = ForestParams(n_estimators=5, max_depth=8, min_samples_leaf=10)
    v1 = train_and_register(own, rides=5000, seed=1, params=small)
    stack = new_stack(MODEL_NAME=own.MODEL_NAME)
    stack.start_worker("alias", concurrency=1)
    client = stack.client()
    assert (
        client.send_task("worker.tasks.run_batch", kwargs={"rides": 20}).get(timeout=120)["model_version"] == v1.version
    )

    v2 = train_and_register(own, rides=5000, seed=2, params=small, force=True)
    assert v2.promoted and v2.version != v1.version
    # MODEL_REFRESH_SECONDS=1 in the test stack: the next batch after a second uses v2. On a loaded
    # machine a registry call can time out (the worker then keeps v1 and warns), so allow a few batches.
    time.sleep(1.5)
    versions = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and v2.version not in versions:
        versions.append(
            client.send_task("worker.tasks.run_batch", kwargs={"rides": 20}).get(timeout=120)["model_version"]
        )
    assert versions[-1] == v2.version, f"versions used after the alias moved: {versions}"
    assert f"loaded model {own.MODEL_NAME} version {v2.version}" in stack.log_text("worker-alias")


def test_celery_call_by_name_runs_a_batch(stack):
    done = subprocess.run(
        [str(CELERY), "-A", "worker", "call", "worker.tasks.run_batch", "--kwargs", '{"rides": 50}'],
        cwd=REPO_ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip().splitlines()[-1]
    assert stack.client().AsyncResult(task_id).get(timeout=60)["rows_written"] == 50
    assert batch_row(stack, f"adhoc-{task_id}")["rows_written"] == 50


def test_skip_invalid_on_a_file_of_several_messages_writes_every_valid_row(stack, tmp_path):
    """10,500 rows read in two chunks of up to 10,000, 1,000 invalid, and one trip id that repeats
    across the chunk boundary: every other valid row is written (9,499), the repeat is refused."""
    repeated = str(uuid.uuid4())
    rows = [{**GOOD, "trip_id": ""} for _ in range(10_500)]
    for i in range(0, 10_500, 21)[:500]:
        rows[i] = {**GOOD, "fare": "cheap", "trip_id": ""}
    for i in range(1, 10_500, 21)[:500]:
        rows[i] = {**GOOD, "pickup_community_area": 999, "trip_id": ""}
    rows[5] = {**GOOD, "trip_id": repeated}
    rows[10_400] = {**GOOD, "trip_id": repeated}
    path = _rides_file(tmp_path, rows)
    done = stack.cli("score", str(path), "--skip-invalid", "--wait", timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "skipped 1001 invalid rows" in done.stderr
    batch_id = done.stdout.split()[1].rstrip(":")
    assert "9499 rides sent in 1 task(s)" in done.stdout
    count = stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0]
    assert count == 9_499
    assert batch_row(stack, batch_id)["rows_written"] == 9_499


def test_retrying_batch_whose_message_expires_is_marked_failed(new_stack):
    """No model under this name: the batch retries with backoff until its message expires; the
    revoked retry must not leave batch_runs saying 'retrying' forever."""
    stack = new_stack(MODEL_NAME=f"no-such-model-{uuid.uuid4().hex[:6]}")
    stack.start_worker("expiry", concurrency=1)
    sent = stack.client().send_task("worker.tasks.run_batch", kwargs={"rides": 10}, expires=8)
    batch_id = f"adhoc-{sent.id}"
    deadline = time.monotonic() + 90
    row = {}
    while time.monotonic() < deadline:
        rows = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)
        row = rows[0]._asdict() if rows else {}
        if row.get("status") == "failed":
            break
        time.sleep(0.5)
    assert row.get("status") == "failed", f"{row}\n{stack.log_text('worker-expiry')[-3000:]}"
    assert "expired" in row["error"]
    assert row["attempts"] >= 2  # it did retry before the message expired
    assert row["rows_written"] == 0
    assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0] == 0
