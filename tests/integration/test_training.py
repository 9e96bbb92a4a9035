"""Training against a real MLflow tracking server: registration, the alias, promotion, real-trip quality."""

from __future__ import annotations

import json
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.support import free_port
from worker.lifecycle.training import train_and_register
from worker.model.evaluation import evaluate_production
from worker.model.registry import configure_mlflow, load_version
from worker.model.training import ForestParams
from worker.rides.cleaning import DataError
from worker.rides.generator import RIDE_COLUMNS

pytestmark = pytest.mark.integration

MAX_REAL_MAE_MINUTES = 2.75
MAX_MODEL_MEGABYTES = 50.0
SMALL = ForestParams(n_estimators=10, max_depth=10, min_samples_leaf=10)
TINY = ForestParams(n_estimators=2, max_depth=2, min_samples_leaf=50)


def client_for(settings) -> MlflowClient:
    return configure_mlflow(settings)


def alias_version(settings) -> str:
    return str(client_for(settings).get_model_version_by_alias(settings.MODEL_NAME, settings.MODEL_ALIAS).version)


def raw_rides(**columns) -> pd.DataFrame:
    """Raw ride columns as a caller would send them: int areas, datetime64 starts, float money and miles."""
    base = {
        "pickup_community_area": np.array([8, 32, 76, 6], dtype=np.int64),
        "dropoff_community_area": np.array([32, 8, 32, 7], dtype=np.int64),
        "trip_start_timestamp": pd.to_datetime(
            ["2025-03-14 18:30", "2025-03-11 04:15", "2025-03-12 09:00", "2025-03-15 23:45"]
        ),
        "fare": np.array([9.45, 7.25, 41.25, 6.05]),
        "trip_total": np.array([11.45, 7.25, 50.0, 7.05]),
        "trip_miles": np.array([2.0, 1.6, 17.0, 1.1]),
    }
    base.update(columns)
    return pd.DataFrame(base)


def production_pyfunc(settings):
    configure_mlflow(settings)
    return mlflow.pyfunc.load_model(f"models:/{settings.MODEL_NAME}@{settings.MODEL_ALIAS}")


def as_minutes(predictions) -> np.ndarray:
    values = np.asarray(predictions, dtype=float).reshape(-1)
    assert np.isfinite(values).all()
    return values


# --- registration and the alias ---------------------------------------------------------------


def test_training_registers_a_version_and_sets_the_alias(trained_model):
    settings, result = trained_model
    client = client_for(settings)
    assert result.version == "1"
    assert result.promoted and result.previous_version is None and result.previous_mae is None
    assert result.reason == f"nothing at {settings.model_uri} yet"
    assert 0 < result.mae < result.rmse
    assert alias_version(settings) == "1"
    version = client.get_model_version(settings.MODEL_NAME, "1")
    assert version.run_id == result.run_id
    assert version.tags["promoted"] == "true"
    assert float(version.tags["mae_minutes"]) == pytest.approx(result.mae, abs=1e-4)
    run = client.get_run(result.run_id)
    assert run.data.metrics["mae_minutes"] == pytest.approx(result.mae)
    assert run.data.params["source"] == "generated:20000:seed=7"
    assert run.data.params["rows_train"] == "16000" and run.data.params["rows_test"] == "4000"


def test_pyfunc_round_trip_on_raw_columns(trained_model):
    settings, result = trained_model
    model = production_pyfunc(settings)
    rides = raw_rides()
    minutes = as_minutes(model.predict(rides))
    assert minutes.shape == (len(rides),)
    assert (minutes > 0).all() and (minutes < 180).all()
    # Sensible ordering: 17 miles from O'Hare takes longer than 1-2 miles in town.
    assert minutes[2] > 2 * max(minutes[0], minutes[1], minutes[3])
    assert 10 < minutes[2] < 90
    # The registry's pyfunc and the sklearn flavour the workers load agree.
    sklearn_model = load_version(settings.MODEL_NAME, result.version)
    np.testing.assert_allclose(minutes, sklearn_model.predict(rides[list(RIDE_COLUMNS)]), rtol=1e-9)


def test_pyfunc_predicts_without_trip_total(trained_model):
    settings, _ = trained_model
    minutes = as_minutes(production_pyfunc(settings).predict(raw_rides().drop(columns=["trip_total"])))
    assert minutes.shape == (4,) and (minutes > 0).all()


def test_pyfunc_predicts_for_a_missing_area(trained_model):
    settings, _ = trained_model
    rides = raw_rides(pickup_community_area=np.array([np.nan, 32.0, 76.0, 6.0]))
    minutes = as_minutes(production_pyfunc(settings).predict(rides))
    assert minutes.shape == (4,) and (minutes > 0).all()


def test_pyfunc_predicts_for_an_unknown_area(trained_model):
    settings, _ = trained_model
    rides = raw_rides(dropoff_community_area=np.array([99, 8, 32, 7], dtype=np.int64))
    minutes = as_minutes(production_pyfunc(settings).predict(rides))
    assert minutes.shape == (4,) and (minutes > 0).all()
    # Rows with known areas are predicted exactly as before.
    known = as_minutes(production_pyfunc(settings).predict(raw_rides()))
    np.testing.assert_allclose(minutes[1:], known[1:])


def test_pyfunc_predicts_for_everything_wrong_at_once(trained_model):
    settings, _ = trained_model
    rides = raw_rides(
        pickup_community_area=np.array([np.nan, 99.0, 0.0, 6.0]),
        dropoff_community_area=np.array([32.0, np.nan, 78.0, 99.0]),
        fare=np.array([np.nan, 7.25, 41.25, 6.05]),
    ).drop(columns=["trip_total"])
    minutes = as_minutes(production_pyfunc(settings).predict(rides))
    assert minutes.shape == (4,) and (minutes > 0).all()


# --- promotion --------------------------------------------------------------------------------


def test_promotion_refuses_a_worse_model_until_forced(make_settings):
    settings = make_settings()
    good = train_and_register(settings, rides=20_000, seed=1, params=SMALL)
    assert good.promoted and good.version == "1"

    worse = train_and_register(settings, rides=2_000, seed=2, params=TINY)
    assert worse.version == "2"
    assert not worse.promoted
    assert worse.previous_version == "1"
    assert worse.previous_mae < worse.mae  # compared on the same held-out rides
    assert "worse than production v1" in worse.reason and "--force" in worse.reason
    assert alias_version(settings) == "1"
    client = client_for(settings)
    assert client.get_model_version(settings.MODEL_NAME, "2").tags["promoted"] == "false"
    run = client.get_run(worse.run_id)
    assert run.data.metrics["production_mae_minutes_same_data"] == pytest.approx(worse.previous_mae)

    forced = train_and_register(settings, rides=2_000, seed=2, params=TINY, force=True)
    assert forced.version == "3"
    assert forced.promoted and forced.reason.startswith("forced")
    assert forced.previous_version == "1"
    assert alias_version(settings) == "3"


def test_an_equally_good_model_is_promoted(make_settings):
    settings = make_settings()
    first = train_and_register(settings, rides=5_000, seed=3, params=SMALL)
    again = train_and_register(settings, rides=5_000, seed=3, params=SMALL)
    assert again.previous_version == "1"
    assert again.mae == pytest.approx(again.previous_mae, abs=1e-9) == pytest.approx(first.mae, abs=1e-9)
    assert again.promoted and "not worse" in again.reason
    assert alias_version(settings) == "2"


def test_bad_data_fails_before_anything_is_registered(make_settings, tmp_path):
    settings = make_settings()
    with pytest.raises(DataError):
        train_and_register(settings, data=tmp_path / "missing.csv")
    client = client_for(settings)
    assert client.search_registered_models(filter_string=f"name='{settings.MODEL_NAME}'") == []


def test_training_on_real_trips_logs_the_cleaning_report(make_settings, real_sample_path):
    settings = make_settings()
    result = train_and_register(settings, data=real_sample_path, params=SMALL)
    assert result.promoted
    client = client_for(settings)
    run = client.get_run(result.run_id)
    assert run.data.params["source"] == "file:chicago_taxi_trips_2013_2014.csv"
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="cleaning.json")
    with open(path) as handle:
        report = json.load(handle)
    assert report["rows_read"] == 9_533
    assert report["rows_kept"] == int(run.data.params["rows_train"]) + int(run.data.params["rows_test"])
    assert report["rows_read"] == report["rows_kept"] + sum(report["dropped"].values())


# --- quality on real trips --------------------------------------------------------------------


def test_model_trained_on_generated_rides_predicts_real_trips(make_settings, real_sample_path):
    settings = make_settings()
    started = time.perf_counter()
    result = train_and_register(settings, rides=100_000, seed=42, params=ForestParams())
    train_seconds = time.perf_counter() - started
    evaluation = evaluate_production(settings, real_sample_path)
    print(
        f"\nreal-trip MAE {evaluation.mae_minutes:.3f} min (median baseline "
        f"{evaluation.median_baseline_mae_minutes:.3f}), held-out generated MAE {result.mae:.3f}, "
        f"model {evaluation.model_megabytes:.2f} MB, load {evaluation.load_seconds:.2f}s, train {train_seconds:.1f}s"
    )
    assert evaluation.model_version == result.version == "1"
    assert evaluation.rows_read == 9_533
    assert evaluation.rows_evaluated > 5_000
    assert evaluation.mae_minutes <= MAX_REAL_MAE_MINUTES
    assert evaluation.mae_minutes < evaluation.median_baseline_mae_minutes / 2
    assert 0 < evaluation.model_megabytes <= MAX_MODEL_MEGABYTES


def test_legacy_stage_uri_serves_the_version_in_that_stage(make_settings):
    """README: MODEL_URI=models:/NAME/Production still works (stages are deprecated in MLflow)."""
    from worker.model.registry import ModelCache, find_version

    settings = make_settings()
    small = ForestParams(n_estimators=3, max_depth=6, min_samples_leaf=10)
    first = train_and_register(settings, rides=3000, seed=1, params=small)
    second = train_and_register(settings, rides=3000, seed=2, params=small, force=True)
    client = client_for(settings)
    client.transition_model_version_stage(settings.MODEL_NAME, first.version, "Production")

    legacy = make_settings(MODEL_NAME=settings.MODEL_NAME, MODEL_URI=f"models:/{settings.MODEL_NAME}/Production")
    assert find_version(client, legacy.model_uri) == (settings.MODEL_NAME, first.version)
    assert ModelCache(legacy).current().version == first.version != second.version  # not the alias's version
    empty = make_settings(MODEL_NAME=settings.MODEL_NAME, MODEL_URI=f"models:/{settings.MODEL_NAME}/Staging")
    assert find_version(client, empty.model_uri) is None


def test_pinned_version_loads_from_the_configured_registry_not_the_environments(trained_model, monkeypatch):
    """A new pool process may get a pinned retry before it ever resolved the alias; its load must
    still go to MLFLOW_TRACKING_URI from the settings, not to a registry URI the process inherited."""
    from worker.model.registry import ModelCache

    settings, result = trained_model
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", dead)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    assert mlflow.get_registry_uri() == dead  # what an unconfigured process would ask

    loaded = ModelCache(settings).get(settings.MODEL_NAME, result.version)
    assert (loaded.name, loaded.version) == (settings.MODEL_NAME, result.version)
    assert mlflow.get_registry_uri() == settings.MLFLOW_TRACKING_URI
