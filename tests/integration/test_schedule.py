"""Beat on a short interval, and Flower's API, with real processes."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from tests.support import free_port, wait_for_http

pytestmark = pytest.mark.integration


def test_beat_batches_land_on_their_slots(new_stack):
    stack = new_stack(BATCH_INTERVAL_SECONDS="3", RIDES_PER_BATCH="40")
    stack.start_worker("sched", concurrency=1)
    stack.start("beat", "--loglevel=INFO", f"--schedule={stack.logs / 'beat-schedule'}", name="beat")
    deadline = time.monotonic() + 60
    rows = []
    while time.monotonic() < deadline:
        rows = stack.sql("SELECT * FROM batch_runs WHERE status = 'succeeded' ORDER BY batch_id")
        if len(rows) >= 3:
            break
        time.sleep(0.5)
    assert len(rows) >= 3, stack.log_text("beat")[-3000:]
    for row in rows:
        assert row.trigger == "schedule" and row.batch_id.startswith("schedule-")
        assert row.rows_written == 40
        # The window is the 3 s before the slot, in Chicago local time.
        assert (row.window_end - row.window_start).total_seconds() == 3
    slots = [row.batch_id for row in rows]
    assert len(set(slots)) == len(slots)
    counts = stack.sql(
        "SELECT r.batch_id, count(*) FROM ride_predictions p JOIN batch_runs r USING (batch_id) GROUP BY 1"
    )
    assert all(n == 40 for _, n in counts)


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_flower_lists_run_batch_and_requires_credentials(stack):
    port = free_port()
    flower = stack.start(
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        name="flower",
        extra_env={"FLOWER_BASIC_AUTH": "ops:s3cret-test"},
    )
    assert wait_for_http(f"http://127.0.0.1:{port}/healthcheck", flower, 60)
    # Flower sees only the events sent after its receiver connected, which can lag its HTTP server
    # on a busy machine: send a batch every few seconds until one shows up, with arguments and result.
    client = stack.client()
    deadline = time.monotonic() + 90
    listed = None
    next_send = 0.0
    while listed is None and time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            client.send_task("worker.tasks.run_batch", kwargs={"rides": 7})
            next_send = time.monotonic() + 8
        status, body = _get(f"http://127.0.0.1:{port}/api/tasks?taskname=worker.tasks.run_batch", "ops:s3cret-test")
        assert status == 200
        listed = next((t for t in json.loads(body).values() if t.get("state") == "SUCCESS"), None)
        time.sleep(0.5)
    assert listed is not None, "Flower never listed a finished run_batch task:\n" + stack.log_text("flower")[-3000:]
    assert "'rides': 7" in listed["kwargs"]
    assert "'rows_written': 7" in listed["result"]
    assert _get(f"http://127.0.0.1:{port}/api/tasks")[0] == 401
    assert _get(f"http://127.0.0.1:{port}/", "ops:wrong")[0] == 401
    stack.stop(flower)
