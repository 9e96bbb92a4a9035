"""What each model version was trained on: a reference sample logged with the version.

Drift is always measured against the reference of the version that scored a
batch, so a retrain on other data moves the baseline with it. The sample is
held-out rows (predictions on training rows would look better than any new
batch), with the raw input columns, the version's predictions and the true
durations. Workers only read references; training (or `python -m worker
reference` for a version registered before references existed) writes them.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from worker.rides.generator import RIDE_COLUMNS

log = logging.getLogger(__name__)

REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
REFERENCE_ROWS = 50_000  # ~1.5 MB of Parquet; a few hundred rows even for the quietest hour of the day
REFERENCE_TAG = "reference"
HELDOUT_MAE_TAG = "mae_minutes"


def build_reference(rides: pd.DataFrame, predicted: np.ndarray, actual_minutes: pd.Series, seed: int) -> pd.DataFrame:
    """At most REFERENCE_ROWS held-out rows: raw inputs, the version's prediction, the true duration."""
    frame = rides[list(RIDE_COLUMNS)].copy()
    frame["predicted_duration"] = np.round(np.asarray(predicted, dtype=float), 3)
    frame["actual_duration"] = np.asarray(actual_minutes, dtype=float)
    if len(frame) > REFERENCE_ROWS:
        frame = frame.sample(REFERENCE_ROWS, random_state=seed % 2**32)  # numpy takes 0..2**32-1
    return frame.reset_index(drop=True)


def log_reference(frame: pd.DataFrame) -> None:
    """Log the reference into the active MLflow run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / REFERENCE_FILE
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)


def _logged(client: MlflowClient, run_id: str | None) -> bool:
    return bool(run_id) and any(f.path.endswith(REFERENCE_FILE) for f in client.list_artifacts(run_id, REFERENCE_DIR))


def has_reference(client: MlflowClient, name: str, version: str) -> bool:
    """Whether the version's run logged a reference (a tag alone does not say: the file may be missing)."""
    return _logged(client, client.get_model_version(name, version).run_id)


def load_reference(client: MlflowClient, name: str, version: str) -> pd.DataFrame | None:
    """The version's reference, or None if it was registered without one (or is gone).
    Other registry errors (unreachable, refused) propagate: the caller waits and retries."""
    try:
        run_id = client.get_model_version(name, version).run_id
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if not _logged(client, run_id):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, f"{REFERENCE_DIR}/{REFERENCE_FILE}", tmp)
        return pd.read_parquet(local)


def heldout_mae(client: MlflowClient, name: str, version: str) -> float | None:
    """The MAE the version scored on held-out rides when it was trained (its `mae_minutes` tag)."""
    value = client.get_model_version(name, version).tags.get(HELDOUT_MAE_TAG)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ReferenceCache:
    """One per process: references by version (they never change once logged), and "none" answers
    for a while, so a version without a reference costs one registry call per few minutes."""

    def __init__(self, client_factory, retry_missing_seconds: float = 300.0) -> None:
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str], pd.DataFrame] = {}
        self._missing: dict[tuple[str, str], float] = {}
        self._heldout: dict[tuple[str, str], float | None] = {}
        self._retry_missing = retry_missing_seconds

    def get(self, name: str, version: str, now: float) -> pd.DataFrame | None:
        key = (name, version)
        with self._lock:
            if key in self._found:
                return self._found[key]
            if now - self._missing.get(key, -1e18) < self._retry_missing:
                return None
        frame = load_reference(self._client_factory(), name, version)  # outside the lock: a download
        with self._lock:
            if frame is None:
                self._missing[key] = now
            else:
                self._found[key] = frame
                self._missing.pop(key, None)
        return frame

    def heldout_mae(self, name: str, version: str) -> float | None:
        key = (name, version)
        with self._lock:
            if key in self._heldout:
                return self._heldout[key]
        value = heldout_mae(self._client_factory(), name, version)
        with self._lock:
            self._heldout[key] = value
        return value
