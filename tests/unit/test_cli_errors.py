"""A service that is down gives one line naming it, exit code 1, no traceback.

The services are 'down' by pointing at 127.0.0.1:1, where nothing listens."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO_ROOT

DOWN = "127.0.0.1:1"


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (
            ["dispatch", "--rides", "5"],
            {"CELERY_BROKER_URL": f"redis://{DOWN}/0"},
            "Error 111 connecting to 127.0.0.1:1",
        ),
        (
            ["migrate"],
            {"DATABASE_URL": f"postgresql+psycopg2://u@{DOWN}/x"},
            'connection to server at "127.0.0.1", port 1',
        ),
        (["train", "--rides", "1000"], {"MLFLOW_TRACKING_URI": f"http://{DOWN}"}, "API request to http://127.0.0.1:1"),
        # Celery's Redis result backend retried 20 times, logging each, then raised a RuntimeError traceback
        (
            ["dispatch", "--rides", "5"],
            {"CELERY_BROKER_URL": f"redis://{DOWN}/0", "CELERY_RESULT_BACKEND": f"redis://{DOWN}/1"},
            "Error 111 connecting to 127.0.0.1:1",
        ),
        (
            ["dispatch", "--rides", "5"],
            {"CELERY_RESULT_BACKEND": f"redis://{DOWN}/1"},  # the broker up: the embedded one
            "Error 111 connecting to 127.0.0.1:1",
        ),
    ],
)
def test_service_down_is_one_clear_line(args, env, names, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and names in lines[0]
    assert "python -m worker status" in lines[0]


def test_negative_seed_is_refused_before_anything_is_sent(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "worker", "dispatch", "--rides", "5", "--seed", "-1"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "CELERY_BROKER_URL": f"redis://{DOWN}/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--seed" in done.stderr and "-1" in done.stderr


def test_status_masks_every_password(tmp_path):
    import json

    done = subprocess.run(
        [sys.executable, "-m", "worker", "status", "--json"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "LOCAL_DIR": str(tmp_path),
            "CELERY_BROKER_URL": f"redis://:broker-s3cret@{DOWN}/0",
            "DATABASE_URL": f"postgresql+psycopg2://taxi:db-s3cret@{DOWN}/taxi",
            "MLFLOW_TRACKING_URI": f"http://ops:mlflow-s3cret@{DOWN}",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["ok"] and not any(report[p]["ok"] for p in ("broker", "database", "registry"))
    for secret in ("broker-s3cret", "db-s3cret", "mlflow-s3cret"):
        assert secret not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # each ended as "(python -m worker status shows what is down)", exit 1, though nothing was down
        (["batches", "--last", "99999999999999999999"], "must be below 2**63"),
        (["promote", "abc", "--reason", "x"], "'abc' is not a model version"),
        (["promote", "1.0", "--reason", "x"], "'1.0' is not a model version"),
        (["promote", "99999999999999999999", "--reason", "x"], "is not a model version"),
        # each ended in an OverflowError traceback
        (["batches", "--since", "9999-12-31T23:59"], "--since '9999-12-31T23:59' is outside the years 1900..2199"),
        (["retrain", "--since", "1h", "--until", "0001-01-01T00:30+00:00"], "outside the years 1900..2199"),
        (["prune", "--older-than", "99999999"], "must be at most 36500 days"),
        (["retrain", "--since", "800000d"], "--since '800000d' reaches back more than 36500 days"),
        (["dispatch", "--rides", "0"], "argument --rides: must be at least 1, got 0"),
        # each was accepted and ran until killed, or failed in the database
        (["retrain-check", "--hours", "1e9"], "--hours: must be at most 168 (a week of observed slots), got 1e9"),
        (["monitor-check", "--days", "1e9"], "--days: must be at most 30 (a month of simulated batches)"),
        (["bench", "--sizes", "99999999999", "--no-worker"], "--sizes: must be at most 16,777,216 (the largest batch)"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_problem(args, message, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "shows what is down" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # argparse printed its usage first


@pytest.mark.parametrize("command", ["dispatch", "score"])
def test_a_wait_whose_database_is_down_sends_nothing(command, tmp_path):
    """It sent the batch, then failed reading the database: a batch running that nobody followed."""
    rides = tmp_path / "rides.csv"
    rides.write_text(
        "pickup_community_area,dropoff_community_area,trip_start_timestamp,fare,trip_miles\n"
        "8,32,2026-11-26T10:00:00,12,3.1\n"
    )
    args = ["dispatch", "--rides", "5"] if command == "dispatch" else ["score", str(rides)]
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args, "--wait"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "LOCAL_DIR": str(tmp_path / "local"),  # the embedded broker: its queue is a folder
            "DATABASE_URL": f"postgresql+psycopg2://u@{DOWN}/x",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'connection to server at "127.0.0.1", port 1' in done.stderr and "Traceback" not in done.stderr
    queue = tmp_path / "local" / "broker" / "queue"
    assert not queue.exists() or not any(queue.iterdir()), "a message was sent"
    assert "batch " not in done.stdout


def test_only_a_database_that_cannot_be_reached_or_refuses_is_called_down():
    """A DataError (a value out of its column's range) ended as "status shows what is down"."""
    import psycopg2
    from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError

    from worker.cli.commands import unreachable_cause

    def wrapped(kind, orig):
        try:
            raise kind("SELECT 1", {}, orig) from orig
        except kind as exc:
            return exc

    down = wrapped(OperationalError, psycopg2.OperationalError("connection refused"))
    assert unreachable_cause(down) is down
    denied = psycopg2.errors.InsufficientPrivilege("permission denied for table ride_predictions")
    assert unreachable_cause(wrapped(ProgrammingError, denied)) is denied
    for kind, orig in (
        (DataError, psycopg2.DataError("integer out of range")),
        (IntegrityError, psycopg2.IntegrityError("x")),
    ):
        assert unreachable_cause(wrapped(kind, orig)) is None
