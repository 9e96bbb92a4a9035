"""Training the duration model and registering it; deciding whether it may serve.

A new version is always registered (its run keeps the evidence), but it should
serve only when its MAE on the same held-out rides is not worse than the current
production version's, or when forced. Nothing here moves an alias: every move goes
through worker/lifecycle/moves.py, which puts it on the record first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, DataType, Schema
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_absolute_error, root_mean_squared_error
from sklearn.model_selection import train_test_split

from worker.model.features import feature_pipeline
from worker.model.reference import (
    HELDOUT_MAE_TAG,
    REFERENCE_DIR,
    REFERENCE_FILE,
    REFERENCE_TAG,
    build_reference,
    log_reference,
)
from worker.model.registry import configure_mlflow, ensure_experiment, find_version, load_version
from worker.model.trust import ModelRefused, trusted_types
from worker.rides.cleaning import CleaningReport, DataError, load_real_trips
from worker.rides.generator import RIDE_COLUMNS, generate_rides
from worker.settings import Settings

TARGET = "trip_minutes"


@dataclass(frozen=True)
class ForestParams:
    n_estimators: int = 30
    max_depth: int = 12
    min_samples_leaf: int = 10
    max_features: float = 0.5


DEFAULT_FOREST = ForestParams()


@dataclass(frozen=True)
class TrainResult:
    version: str
    run_id: str
    mae: float
    rmse: float
    promoted: bool
    previous_version: str | None
    previous_mae: float | None
    reason: str


# Fewer rows than this cannot make a version: its held-out fifth (200 rides) is what promotion
# compares with production, and a forest fitted on a handful of rides was promoted on one held-out ride.
MIN_TRAINING_ROWS = 1_000


def training_frame(data: str | Path | None, rides: int, seed: int) -> tuple[pd.DataFrame, str, CleaningReport | None]:
    """The rides to learn from: generated ones, or a real export after cleaning. Refused (DataError)
    below MIN_TRAINING_ROWS, before anything is fitted or logged."""
    if data is None:
        if rides < MIN_TRAINING_ROWS:
            raise DataError(
                f"--rides {rides}: a version needs at least {MIN_TRAINING_ROWS:,} rides to learn from and be judged on"
            )
        frame = generate_rides(rides, seed)
        frame[TARGET] = frame["trip_seconds"] / 60.0
        return frame, f"generated:{rides}:seed={seed}", None
    frame, report = load_real_trips(data)
    if len(frame) < MIN_TRAINING_ROWS:
        raise DataError(
            f"{data}: {len(frame):,} trips left after cleaning; a version needs at least {MIN_TRAINING_ROWS:,} "
            "to learn from and be judged on"
        )
    return frame, f"file:{Path(data).name}", report


def evaluate(model, frame: pd.DataFrame) -> tuple[float, float]:
    predicted = model.predict(frame[list(RIDE_COLUMNS)])
    return (
        float(mean_absolute_error(frame[TARGET], predicted)),
        float(root_mean_squared_error(frame[TARGET], predicted)),
    )


def fit_pipeline(frame: pd.DataFrame, params: ForestParams, seed: int):
    forest = RandomForestRegressor(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        max_features=params.max_features,
        n_jobs=-1,
        random_state=seed % 2**32,  # scikit-learn takes 0..2**32-1; the commands' seeds go to 2**63-1
    )
    pipeline = feature_pipeline(forest).fit(frame[list(RIDE_COLUMNS)], frame[TARGET])
    # Workers predict in their own process per core; one job avoids oversubscribing them.
    pipeline.set_params(forest__n_jobs=1)
    return pipeline


def model_signature(predictions: np.ndarray) -> ModelSignature:
    """The raw ride columns. Areas take any value (an int, or a missing or unknown one gets a
    prediction too), and trip_total may be left out; MLflow would otherwise refuse both."""
    inputs = Schema(
        [
            ColSpec(AnyType(), "pickup_community_area"),
            ColSpec(AnyType(), "dropoff_community_area"),
            ColSpec(DataType.datetime, "trip_start_timestamp"),
            ColSpec(DataType.double, "fare"),
            ColSpec(DataType.double, "trip_total", required=False),
            ColSpec(DataType.double, "trip_miles"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=infer_signature(None, predictions).outputs)


def log_pipeline(pipeline, example: pd.DataFrame, model_name: str) -> str:
    """Log the pipeline in the active run as skops with the project's trusted types; register it.

    skops, not (cloud)pickle: reading a pickle runs code, so the workers refuse it (see trust.py).
    The trusted types stored here only serve MLflow's own loader (`mlflow.pyfunc.load_model`);
    the workers always load with trusted_types() from their own code.
    """
    info = mlflow.sklearn.log_model(
        pipeline,
        name="model",
        signature=model_signature(pipeline.predict(example)),
        input_example=example,
        registered_model_name=model_name,
        serialization_format="skops",
        skops_trusted_types=list(trusted_types()),
    )
    return str(info.registered_model_version)


TRAINED_ON_TAG = "trained_on"  # what a version learned from, in words (`models` shows it)


def register_version(
    settings: Settings,
    client: MlflowClient,
    pipeline,
    *,
    params: dict,
    metrics: dict[str, float],
    test: pd.DataFrame,
    reference: pd.DataFrame,
    trained_on: str,
    tags: dict[str, str] | None = None,
    documents: dict[str, dict] | None = None,
) -> tuple[str, str]:
    """Log a fitted pipeline with its parameters, metrics and drift reference in a new run and register
    it as a new version of MODEL_NAME; returns (version, run id). Moves no alias: the model's life
    cycle (worker/lifecycle) does that, on the record. The version's tags (held-out MAE, reference,
    what it was trained on) are set before anyone can point an alias at it."""
    experiment_id = ensure_experiment(settings, client)
    example = test[list(RIDE_COLUMNS)].head(5)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        for name, document in (documents or {}).items():
            mlflow.log_dict(document, name)
        log_reference(reference)
        version = log_pipeline(pipeline, example, settings.MODEL_NAME)
    for key, value in {
        HELDOUT_MAE_TAG: f"{metrics['mae_minutes']:.4f}",
        REFERENCE_TAG: f"{REFERENCE_DIR}/{REFERENCE_FILE}",
        TRAINED_ON_TAG: trained_on,
        **(tags or {}),
    }.items():
        client.set_model_version_tag(settings.MODEL_NAME, version, key, value)
    return version, run.info.run_id


def fit_and_register(
    settings: Settings,
    data: str | Path | None = None,
    rides: int = 200_000,
    seed: int = 42,
    force: bool = False,
    params: ForestParams = ForestParams(),
) -> TrainResult:
    """Train on generated rides (or a real export), register the version, and decide whether it
    should serve: `promoted` in the result is that decision, which the caller carries out."""
    frame, source, report = training_frame(data, rides, seed)  # bad data fails here, before MLflow
    train, test = train_test_split(frame, test_size=0.2, random_state=seed % 2**32)

    client = configure_mlflow(settings)
    ensure_experiment(settings, client)
    started = time.perf_counter()
    pipeline = fit_pipeline(train, params, seed)
    fit_seconds = time.perf_counter() - started
    mae, rmse = evaluate(pipeline, test)

    previous_version = previous_mae = None
    refused: ModelRefused | None = None
    # Only "no such model, alias or stage" means there is nothing to beat; any other registry error
    # stops training here, before anything is registered, so a worse model is never promoted blind.
    current = find_version(client, settings.model_uri)
    if current is not None:
        previous_name, previous_version = current
    if previous_version is not None:
        try:
            previous_mae, _ = evaluate(
                load_version(previous_name, previous_version, allow_pickle=settings.ALLOW_PICKLE_MODELS), test
            )
        except ModelRefused as exc:
            # Production cannot be read safely (an old pickle version, say): only --force replaces it.
            if not force:
                raise
            refused = exc

    metrics = {"mae_minutes": mae, "rmse_minutes": rmse, "fit_seconds": fit_seconds}
    if previous_mae is not None:
        metrics["production_mae_minutes_same_data"] = previous_mae
    documents = {}
    if report is not None:
        documents["cleaning.json"] = {
            "rows_read": report.rows_read,
            "rows_kept": report.rows_kept,
            "dropped": report.dropped,
        }
    if data is None:
        trained_on = f"generated: {len(train):,} rides (seed {seed})"
    else:
        trained_on = f"file: {Path(data).name}, {len(train):,} of {len(frame):,} cleaned trips"
    version, run_id = register_version(
        settings,
        client,
        pipeline,
        params={**params.__dict__, "source": source, "rows_train": len(train), "rows_test": len(test), "seed": seed},
        metrics=metrics,
        test=test,
        # What this version was trained on, for drift: held-out rows with its predictions and the truth.
        reference=build_reference(test, pipeline.predict(test[list(RIDE_COLUMNS)]), test[TARGET], seed),
        trained_on=trained_on,
        documents=documents,
    )

    if refused is not None:
        promoted, reason = True, f"forced (production v{previous_version} not comparable: {refused.reason})"
    elif previous_mae is None:
        promoted, reason = True, f"nothing at {settings.model_uri} yet"
    elif force:
        promoted, reason = True, f"forced (production v{previous_version} MAE {previous_mae:.3f})"
    elif mae <= previous_mae:
        promoted, reason = True, f"not worse than production v{previous_version} (MAE {previous_mae:.3f})"
    else:
        promoted, reason = (
            False,
            f"worse than production v{previous_version} (MAE {previous_mae:.3f}); use --force to promote",
        )
    return TrainResult(version, run_id, mae, rmse, promoted, previous_version, previous_mae, reason)


def add_reference(settings: Settings, version: str, rides: int = 50_000, seed: int = 4242) -> int:
    """Log a reference for a version registered before references existed: held-out-like rides
    (generated with a seed training never used) scored by that version. Needs the credentials
    that may write to the registry; returns the rows logged."""
    client = configure_mlflow(settings)
    model_version = client.get_model_version(settings.MODEL_NAME, version)  # an unknown version fails here
    frame = generate_rides(rides, seed)
    frame[TARGET] = frame["trip_seconds"] / 60.0
    model = load_version(settings.MODEL_NAME, version)
    reference = build_reference(frame, model.predict(frame[list(RIDE_COLUMNS)]), frame[TARGET], seed)
    with mlflow.start_run(run_id=model_version.run_id):
        log_reference(reference)
    client.set_model_version_tag(settings.MODEL_NAME, version, REFERENCE_TAG, f"{REFERENCE_DIR}/{REFERENCE_FILE}")
    return len(reference)
