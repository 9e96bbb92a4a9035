"""Helpers shared by fixtures and tests: free ports, waiting for HTTP services, stopping process trees."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"
REAL_SAMPLE = SHARED_DATA / "chicago_taxi_trips_2013_2014.csv"

# One clean trip as the city's export spells it (portal column names), for hand-made data files.
REAL_TRIP_ROW = {
    "trip_start_timestamp": "2013-06-01T12:15:00",
    "trip_seconds": 600,
    "trip_miles": 2.0,
    "pickup_community_area": 8,
    "dropoff_community_area": 32,
    "fare": 9.45,
}


def wait_until(what: str, check: Callable[[], Any], seconds: float, every: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(every)


def cli_with_only(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python -m worker ARGS` with nothing of this environment but PATH and `env`: what a user with
    just these settings sees (settings are read and refused before any service is asked)."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]


def unique_model_name(label: str) -> str:
    """A registered-model name no other test uses: the label made URL-safe plus a random suffix."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[:60] or "test"
    return f"{slug}-{uuid.uuid4().hex[:8]}"


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_for_http(url: str, process: subprocess.Popen, deadline_seconds: float) -> bool:
    """Poll `url` until it answers 200; False if the process dies or the deadline passes."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if http_ok(url):
            return True
        time.sleep(0.25)
    return False


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 15.0) -> None:
    """Stop a process started with start_new_session=True together with every child it spawned."""
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid == process.pid:  # our own session: safe to signal the whole group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    else:
        process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        if pgid is not None and pgid == process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=grace_seconds)
    # Children (uvicorn) may outlive the leader for a moment; make sure the group is gone.
    if pgid is not None and pgid == process.pid:
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def required_tool(name: str, package: str = "prometheus prometheus-alertmanager") -> str:
    """The tool's path. Missing: a failure under CI (.ci/run installs it), else a skip that says how to get it."""
    found = shutil.which(name)
    if found is None:
        hint = f"{name} missing: apt-get install --no-install-recommends {package} (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(hint)
        pytest.skip(hint)
    return found


def registry_client(uri: str):
    """An MlflowClient for this tracking server's registry too: a bare MlflowClient(uri) takes its
    registry from MLFLOW_REGISTRY_URI when that is exported, which may name another test's server."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def assert_each_batch_written_once(stack, batch_ids: list[str]) -> None:
    """Each batch succeeded with all its rows, once: no trip id twice, one ledger key per chunk."""
    rows = {r.batch_id: r for r in stack.sql("SELECT * FROM batch_runs WHERE batch_id = ANY(:ids)", ids=batch_ids)}
    assert set(rows) == set(batch_ids)
    for batch_id, row in rows.items():
        assert row.status == "succeeded", (batch_id, row.status, row.error)
        assert row.rows_written == row.rides_requested
    counts = dict(
        stack.sql(
            "SELECT batch_id, count(*) FROM ride_predictions WHERE batch_id = ANY(:ids) GROUP BY 1", ids=batch_ids
        )
    )
    assert counts == {b: rows[b].rows_written for b in batch_ids}
    dupes = stack.sql("SELECT trip_id FROM ride_predictions GROUP BY 1 HAVING count(*) > 1")
    assert dupes == []
    ledger = stack.sql(
        "SELECT batch_id, count(*) FROM batch_chunks WHERE batch_id = ANY(:ids) GROUP BY 1", ids=batch_ids
    )
    assert dict(ledger) == {b: rows[b].chunks_total for b in batch_ids}


def start_one_chunk_batch(engine, batch_id: str, rides: int) -> None:
    """Record an ad-hoc batch of one chunk, as a worker does before writing it (no plan to regenerate)."""
    from worker.store.writes import start_batch

    start_batch(
        engine,
        batch_id=batch_id,
        trigger="adhoc",
        rides_requested=rides,
        chunks_total=1,
        task_id=None,
        seed=None,
        window=None,
        attempt=1,
    )
