"""How good, big and quick the production model is, on real trips.

Gives the README's model figures from one command anyone can rerun:
`python -m worker evaluate --data ../shared/data/chicago_taxi_trips_2013_2014.csv`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
from sklearn.metrics import mean_absolute_error

from worker.model.registry import configure_mlflow, resolve_version
from worker.model.trust import load_checked
from worker.rides.cleaning import load_real_trips
from worker.rides.generator import RIDE_COLUMNS
from worker.settings import Settings


@dataclass(frozen=True)
class Evaluation:
    model_version: str
    rows_read: int
    rows_evaluated: int
    mae_minutes: float
    median_baseline_mae_minutes: float
    model_megabytes: float
    load_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def folder_megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def evaluate_production(settings: Settings, data: str | Path) -> Evaluation:
    trips, report = load_real_trips(data)
    client = configure_mlflow(settings)
    name, version = resolve_version(client, settings.model_uri)
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        megabytes = folder_megabytes(local)
        started = time.perf_counter()
        # The workers' own checked load (skops, the project's trusted types), so this is their load time.
        model = load_checked(local, name, version, allow_pickle=settings.ALLOW_PICKLE_MODELS)
        load_seconds = time.perf_counter() - started
    predicted = np.asarray(model.predict(trips[list(RIDE_COLUMNS)]))
    truth = trips["trip_minutes"]
    return Evaluation(
        model_version=version,
        rows_read=report.rows_read,
        rows_evaluated=report.rows_kept,
        mae_minutes=float(mean_absolute_error(truth, predicted)),
        median_baseline_mae_minutes=float(np.mean(np.abs(truth - truth.median()))),
        model_megabytes=megabytes,
        load_seconds=load_seconds,
    )
