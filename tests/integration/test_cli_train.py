"""`python -m worker train` as a user runs it: bad data ends in one line on stderr and leaves the registry alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.support import REAL_SAMPLE, REAL_TRIP_ROW, REPO_ROOT, unique_model_name
from worker.rides.cleaning import REQUIRED_COLUMNS

pytestmark = pytest.mark.integration

CLI_TIMEOUT_SECONDS = 300  # a safety net against hangs, not a performance assertion


def run_train(tracking_uri: str, model_name: str, local_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MODEL_NAME": model_name,
            "MODEL_URI": "",
            "LOCAL_DIR": str(local_dir),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "worker", "train", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


def registered(tracking_uri: str, model_name: str) -> list:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.search_registered_models(filter_string=f"name='{model_name}'")


def _missing(tmp: Path) -> Path:
    return tmp / "does-not-exist.csv"


def _empty(tmp: Path) -> Path:
    path = tmp / "empty.csv"
    path.write_bytes(b"")
    return path


def _header_only(tmp: Path) -> Path:
    path = tmp / "header-only.csv"
    path.write_text(",".join(REAL_TRIP_ROW) + "\n")
    return path


def _missing_column(tmp: Path) -> Path:
    path = tmp / "no-fare.csv"
    pd.DataFrame([REAL_TRIP_ROW] * 3).drop(columns=["fare"]).to_csv(path, index=False)
    return path


def _wrong_columns(tmp: Path) -> Path:
    path = tmp / "weather.csv"
    pd.DataFrame({"date": ["2013-06-01"], "temperature": [21.5]}).to_csv(path, index=False)
    return path


def _no_usable_rows(tmp: Path) -> Path:
    path = tmp / "useless.csv"
    rows = [
        dict(REAL_TRIP_ROW, trip_miles=0.0),
        dict(REAL_TRIP_ROW, trip_seconds=0),
        dict(REAL_TRIP_ROW, pickup_community_area=""),
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _too_few_trips(tmp: Path) -> Path:
    """The real sample's first 29 rows: a handful of trips survive cleaning. A version trained on
    them was registered and promoted, judged on one held-out ride."""
    path = tmp / "tiny.csv"
    pd.read_csv(REAL_SAMPLE, nrows=29).to_csv(path, index=False)
    return path


BAD_FILES = {
    "missing file": (_missing, ["no such file"]),
    "empty file": (_empty, ["empty"]),
    "header only": (_header_only, ["no rows"]),
    "missing column": (_missing_column, ["missing column", "fare"]),
    "wrong columns": (_wrong_columns, ["missing column", *REQUIRED_COLUMNS]),
    "no usable rows": (_no_usable_rows, ["no usable rows", "miles_out_of_range=1", "missing_area=1"]),
    "too few trips": (_too_few_trips, ["trips left after cleaning", "at least 1,000"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_data_is_one_line_on_stderr_and_registers_nothing(case, mlflow_server, tmp_path):
    make_file, expected_words = BAD_FILES[case]
    path = make_file(tmp_path)
    name = unique_model_name(f"cli-{case}")
    result = run_train(mlflow_server, name, tmp_path / "local", "--data", str(path), "--rides", "1000")

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert str(path) in line  # names the file
    for word in expected_words:
        assert word in line, f"{word!r} not in {line!r}"
    assert "registered" not in result.stdout
    assert registered(mlflow_server, name) == []


def test_happy_path_registers_and_promotes_version_1(mlflow_server, tmp_path):
    name = unique_model_name("cli-happy")
    args = ("--rides", "5000", "--trees", "5", "--max-depth", "8", "--seed", "3")
    result = run_train(mlflow_server, name, tmp_path / "local", *args)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout.splitlines()
    assert any(line.startswith(f"registered {name} version 1:") and "MAE" in line for line in out), result.stdout
    assert f"promoted to @production: nothing at models:/{name}@production yet" in out, result.stdout
    models = registered(mlflow_server, name)
    assert len(models) == 1
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.get_model_version_by_alias(name, "production").version == "1"

    # A second, clearly worse run is registered but not promoted, and says so.
    worse = run_train(mlflow_server, name, tmp_path / "local", "--rides", "1000", "--trees", "1", "--max-depth", "1")
    assert worse.returncode == 0, worse.stderr
    assert f"registered {name} version 2:" in worse.stdout
    assert "NOT promoted to @production" in worse.stdout and "--force" in worse.stdout
    assert client.get_model_version_by_alias(name, "production").version == "1"


@pytest.mark.parametrize(
    "bad_args",
    [
        ["--rides", "0"],
        ["--rides", "many"],
        ["--rides", "5"],  # too few to learn from and be judged on (it was promoted)
        ["--rides", "1"],  # scikit-learn's traceback
        ["--trees", "-3"],
        ["--seed", "-1"],  # numpy's and scikit-learn's tracebacks
        ["--seed", "99999999999999999999999"],
    ],
)
def test_bad_arguments_are_refused_without_a_traceback(bad_args, mlflow_server, tmp_path):
    name = unique_model_name("cli-args")
    result = run_train(mlflow_server, name, tmp_path / "local", *bad_args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert bad_args[0] in result.stderr
    assert registered(mlflow_server, name) == []


def test_calibrating_from_too_few_trips_is_refused_and_leaves_the_calibration_alone(tmp_path):
    from worker.rides.calibration import CALIBRATION_PATH

    before = CALIBRATION_PATH.read_bytes()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "worker", "calibrate", "--data", str(_too_few_trips(tmp_path))],
            cwd=REPO_ROOT,
            env={**os.environ, "LOCAL_DIR": str(tmp_path / "local")},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "trips left after cleaning; calibrating needs at least 2,000" in result.stderr
        assert CALIBRATION_PATH.read_bytes() == before
    finally:
        CALIBRATION_PATH.write_bytes(before)  # a calibration from five trips must not outlive a failing run
