"""A registry version must not be a way into the workers (issue 13): hostile artifacts, real MLflow, real workers.

Each hostile version is registered the way an attacker with registry write access would
(MLflow's own log_model), and the alias is moved to it. The controls prove each artifact is
really hostile: MLflow's own loader runs or accepts it, the project's loader refuses it.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.support import wait_until
from worker.cli.errors import UsageError
from worker.cli.rerun import new_pin
from worker.lifecycle.training import train_and_register
from worker.model.reference import load_reference, log_reference
from worker.model.registry import configure_mlflow, load_version
from worker.model.training import ForestParams
from worker.model.trust import ModelRefused, trusted_types
from worker.rides.generator import RIDE_COLUMNS, generate_rides

pytestmark = pytest.mark.integration

SMALL = ForestParams(n_estimators=3, max_depth=6, min_samples_leaf=10)
RUN_BATCH = "worker.tasks.run_batch"


class CreatesFile:
    """Unpickling this calls open(marker, "w"): a file appears wherever it is loaded.

    It has `predict`, so MLflow logs it as an ordinary sklearn model with a pyfunc flavor.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))

    def predict(self, rides):  # never called: loading alone is the attack
        return np.zeros(len(rides))


def register_pickle(settings, payload: object, serialization: str = "cloudpickle", reference=None) -> str:
    """Log `payload` as a pickle-format sklearn model and register it; the alias is not moved.
    With `reference`, the run also gets a reference sample, as `train` logged one before skops."""
    client = configure_mlflow(settings)
    with mlflow.start_run():
        if reference is not None:
            log_reference(reference)
        info = mlflow.sklearn.log_model(
            payload,
            name="model",
            registered_model_name=settings.MODEL_NAME,
            serialization_format=serialization,
            # Explicit requirements: inferring them would load the model in a subprocess here.
            pip_requirements=["scikit-learn"],
        )
    version = str(info.registered_model_version)
    assert client.get_model_version(settings.MODEL_NAME, version)
    return version


def move_alias(settings, version: str) -> None:
    configure_mlflow(settings).set_registered_model_alias(settings.MODEL_NAME, settings.MODEL_ALIAS, version)


def test_trained_versions_are_skops_with_the_projects_trusted_types(trained_model, tmp_path):
    settings, result = trained_model
    configure_mlflow(settings)
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{settings.MODEL_NAME}/{result.version}", dst_path=str(tmp_path))
    )
    flavor = mlflow.models.Model.load(str(local)).flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert flavor["pickled_model"] == "model.skops"
    assert sorted(flavor["skops_trusted_types"]) == sorted(trusted_types())
    assert not list(local.rglob("*.pkl"))
    # What the file really names beyond skops's defaults is all in the project's list.
    assert set(skops.io.get_untrusted_types(file=local / "model.skops")) <= set(trusted_types())
    model = load_version(settings.MODEL_NAME, result.version)
    assert isinstance(model, Pipeline)
    rides = generate_rides(50, seed=1)[list(RIDE_COLUMNS)]
    assert np.isfinite(model.predict(rides)).all()


@pytest.mark.parametrize("serialization", ["cloudpickle", "pickle"])
def test_a_pickle_version_is_refused_before_anything_is_unpickled(make_settings, tmp_path, serialization):
    settings = make_settings()
    marker = tmp_path / f"pwned-by-{serialization}"
    version = register_pickle(settings, CreatesFile(marker), serialization)
    assert not marker.exists()

    with pytest.raises(ModelRefused) as refused:
        load_version(settings.MODEL_NAME, version)
    assert not marker.exists(), "the pickle was deserialized"
    message = str(refused.value)
    assert f"model {settings.MODEL_NAME} version {version} refused" in message
    assert f"it is a {serialization} artifact" in message
    assert f"convert-model --version {version}" in message
    assert refused.value.version == version

    # Control: the artifact really is hostile; MLflow's own loader runs it.
    mlflow.sklearn.load_model(f"models:/{settings.MODEL_NAME}/{version}")
    assert marker.exists()


def test_allow_pickle_models_loads_a_pickle_version_but_still_only_the_projects_pipeline(make_settings, tmp_path):
    settings = make_settings()
    trained = train_and_register(settings, rides=3000, seed=1, params=SMALL)
    skops_model = load_version(settings.MODEL_NAME, trained.version)
    legacy = register_pickle(settings, skops_model, "cloudpickle")  # a version as the project logged them before
    with pytest.raises(ModelRefused, match="cloudpickle artifact"):
        load_version(settings.MODEL_NAME, legacy)
    loaded = load_version(settings.MODEL_NAME, legacy, allow_pickle=True)
    rides = generate_rides(100, seed=2)[list(RIDE_COLUMNS)]
    np.testing.assert_array_equal(loaded.predict(rides), skops_model.predict(rides))

    # Even with pickle allowed, something that is not the project's pipeline is refused after loading.
    foreign = register_pickle(settings, Pipeline([("scale", FunctionTransformer())]), "cloudpickle")
    with pytest.raises(ModelRefused, match="not the project's"):
        load_version(settings.MODEL_NAME, foreign, allow_pickle=True)


def test_a_skops_version_naming_an_untrusted_type_is_refused(make_settings):
    """The trap: MLflow hands skops the trusted list stored in the artifact, chosen by its author."""
    settings = make_settings()
    configure_mlflow(settings)
    # A pipeline whose "feature function" is os.system: skops names it as an untrusted type.
    hostile = Pipeline([("features", FunctionTransformer(os.system))])
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(hostile))
    assert untrusted and not set(untrusted) <= set(trusted_types()), untrusted
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            hostile,
            name="model",
            registered_model_name=settings.MODEL_NAME,
            serialization_format="skops",
            skops_trusted_types=untrusted,  # the attacker vouches for its own types
            pip_requirements=["scikit-learn"],
        )
    version = str(info.registered_model_version)

    # Control: MLflow's own loader trusts the artifact's list and hands back os.system.
    loaded = mlflow.sklearn.load_model(f"models:/{settings.MODEL_NAME}/{version}")
    assert loaded.steps[0][1].func is os.system

    with pytest.raises(ModelRefused) as refused:
        load_version(settings.MODEL_NAME, version)
    assert f"version {version} refused" in str(refused.value)
    assert "types the project does not trust" in str(refused.value)
    assert untrusted[0] in str(refused.value)


def test_a_skops_version_of_a_trusted_but_foreign_model_is_refused(make_settings):
    """skops trusts every scikit-learn estimator by default; the workers want the project's pipeline only."""
    from sklearn.linear_model import LinearRegression

    settings = make_settings()
    configure_mlflow(settings)
    rides = generate_rides(200, seed=3)
    foreign = LinearRegression().fit(rides[["fare", "trip_miles"]], rides["trip_seconds"])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            foreign, name="model", registered_model_name=settings.MODEL_NAME, serialization_format="skops"
        )
    with pytest.raises(ModelRefused, match="LinearRegression, not the project's"):
        load_version(settings.MODEL_NAME, str(info.registered_model_version))


def test_convert_model_relogs_a_pickle_version_as_skops_and_moves_the_alias(make_settings, caplog):
    from worker.lifecycle.training import convert_model as convert_to_skops

    settings = make_settings()
    trained = train_and_register(settings, rides=3000, seed=4, params=SMALL)
    pipeline = load_version(settings.MODEL_NAME, trained.version)
    client = configure_mlflow(settings)
    reference = load_reference(client, settings.MODEL_NAME, trained.version)
    assert reference is not None
    legacy = register_pickle(settings, pipeline, "cloudpickle", reference=reference)
    move_alias(settings, legacy)
    with pytest.raises(ModelRefused):
        load_version(settings.MODEL_NAME, legacy)

    with caplog.at_level("WARNING", logger="worker.model.conversion"):
        result = convert_to_skops(settings)
    assert result.source_version == legacy and result.version is not None and result.promoted
    assert f"reading pickle version {legacy} once in this process" in caplog.text  # said before it is read
    caplog.clear()
    client = configure_mlflow(settings)
    assert str(client.get_model_version_by_alias(settings.MODEL_NAME, settings.MODEL_ALIAS).version) == result.version
    assert client.get_model_version(settings.MODEL_NAME, result.version).tags["converted_from_version"] == legacy
    # The copy carries the original's reference sample, which drift is measured against.
    pd.testing.assert_frame_equal(load_reference(client, settings.MODEL_NAME, result.version), reference)
    rides = generate_rides(500, seed=5)[list(RIDE_COLUMNS)]
    np.testing.assert_array_equal(
        load_version(settings.MODEL_NAME, result.version).predict(rides), pipeline.predict(rides)
    )
    # A batch pinned to the pickle is moved to its checked copy by a rerun, which predicts the same.
    assert client.get_model_version(settings.MODEL_NAME, result.version).tags["conversion_checked"]
    row = {"batch_id": "adhoc-x", "model_name": settings.MODEL_NAME, "model_version": legacy}
    assert new_pin(settings, None, row, repin=False) == (legacy, result.version, "converted")
    # Running it again on the now-skops production version does nothing.
    again = convert_to_skops(settings)
    assert again.version is None and not again.promoted and "already is skops" in again.reason
    assert "reading pickle" not in caplog.text  # no pickle was read: the CLI warned of one before it looked


def test_a_rerun_of_a_batch_pinned_to_a_refused_or_deleted_version_is_refused_unless_repinned(make_settings, tmp_path):
    from sqlalchemy import insert

    from worker.store.database import build_engine, migrate
    from worker.store.schema import batch_chunks

    settings = make_settings()
    good = train_and_register(settings, rides=2000, seed=1, params=SMALL)
    hostile = register_pickle(settings, CreatesFile(tmp_path / "pwned-by-rerun"))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    migrate(url)
    engine = build_engine(url)
    row = {"batch_id": "adhoc-x", "model_name": settings.MODEL_NAME, "model_version": hostile}
    with pytest.raises(UsageError, match=rf"pinned to version {hostile}, which is refused by the workers: it is a "):
        new_pin(settings, engine, row, repin=False)
    assert new_pin(settings, engine, row, repin=True) == (hostile, good.version, "repinned")
    with engine.begin() as conn:  # one chunk already written by that version: one batch, one model
        conn.execute(
            insert(batch_chunks).values(batch_id="adhoc-x", chunk_index=0, rows_written=9, model_version=hostile)
        )
    with pytest.raises(UsageError, match=rf"1 of its chunks were written by version {hostile}; --repin would"):
        new_pin(settings, engine, row, repin=True)
    configure_mlflow(settings).delete_model_version(settings.MODEL_NAME, hostile)
    with pytest.raises(UsageError, match=rf"version {hostile}, which is not in the registry \(deleted\?\)"):
        new_pin(settings, engine, row, repin=False)
    # A version the workers can score with is kept; --repin is refused for it.
    assert new_pin(settings, engine, {**row, "model_version": good.version}, repin=False) is None
    with pytest.raises(UsageError, match="which the workers can score with"):
        new_pin(settings, engine, {**row, "model_version": good.version}, repin=True)
    engine.dispose()


def test_train_refuses_to_compare_against_a_pickle_production_until_forced(make_settings, tmp_path):
    settings = make_settings()
    marker = tmp_path / "pwned-by-train"
    move_alias(settings, register_pickle(settings, CreatesFile(marker)))
    with pytest.raises(ModelRefused, match="cloudpickle artifact"):
        train_and_register(settings, rides=2000, seed=1, params=SMALL)
    forced = train_and_register(settings, rides=2000, seed=1, params=SMALL, force=True)
    assert forced.promoted and "not comparable" in forced.reason
    assert not marker.exists()


def test_a_worker_never_runs_a_hostile_version_and_keeps_serving_the_old_one(make_settings, new_stack, tmp_path):
    """A real `celery worker`; the alias moves to a pickle whose unpickling creates a file.

    The batch that starts then is pinned to the hostile version: it fails at once, without a
    retry, writes nothing and names the refusal. The worker stays up and serves the good version
    again once the alias is back on it.
    """
    settings = make_settings()
    good = train_and_register(settings, rides=3000, seed=6, params=SMALL)
    stack = new_stack(MODEL_NAME=settings.MODEL_NAME, MODEL_REFRESH_SECONDS="1")
    client = stack.client()
    marker = tmp_path / "pwned-by-worker"
    try:
        stack.start_worker("w1", concurrency=1)
        before = client.send_task(RUN_BATCH, kwargs={"rides": 40}).get(timeout=120)
        assert before["model_version"] == good.version

        hostile = register_pickle(settings, CreatesFile(marker))
        move_alias(settings, hostile)
        time.sleep(1.5)  # past MODEL_REFRESH_SECONDS: the next batch asks the registry again
        task_id = str(uuid.uuid4())
        client.send_task(RUN_BATCH, kwargs={"rides": 40}, task_id=task_id)
        batch_id = f"adhoc-{task_id}"
        failed = wait_until(
            "the batch pinned to the hostile version to fail",
            lambda: next(
                iter(stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b AND status = 'failed'", b=batch_id)),
                None,
            ),
            90,
        )
        assert f"version {hostile} refused" in failed.error and "cloudpickle artifact" in failed.error, failed.error
        assert failed.error.startswith("ModelRefused") and failed.attempts == 1  # permanent: never retried
        assert failed.model_version == hostile
        assert not marker.exists(), "a worker unpickled the hostile version"
        assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0] == 0
        listed = stack.cli("batches", "--status", "failed").stdout
        assert batch_id in listed and "ModelRefused" in listed

        move_alias(settings, good.version)  # the operator puts the alias back
        time.sleep(1.5)
        after = client.send_task(RUN_BATCH, kwargs={"rides": 40}).get(timeout=120)
        assert after["status"] == "succeeded" and after["rows_written"] == 40
        assert after["model_version"] == good.version  # same worker process, still serving
        assert not marker.exists(), "a worker unpickled the hostile version"
        assert stack.sql("SELECT count(*) FROM ride_predictions WHERE model_version = :v", v=hostile)[0][0] == 0

        # A rerun of the failed batch would fail again on the same version: refused, naming why.
        refused = stack.cli("rerun", batch_id)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"pinned to version {hostile}, which is refused by the workers" in refused.stderr, refused.stderr
        assert "a rerun would fail again" in refused.stderr and "--repin" in refused.stderr
        assert stack.sql("SELECT status FROM batch_runs WHERE batch_id = :b", b=batch_id)[0][0] == "failed"
        # --repin scores it with the version the alias points at now, and says so.
        moved = stack.cli("rerun", batch_id, "--repin", "--wait", "--timeout", "120")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert f"to be scored by version {good.version} (repinned)" in moved.stdout
        rerun = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)[0]
        assert (rerun.status, rerun.model_version, rerun.model_pinned_by) == ("succeeded", good.version, "repinned")
        assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0] == 40
        assert not marker.exists(), "a worker unpickled the hostile version"
    finally:
        stack.close()
    # Control: the same artifact, loaded by MLflow's own loader, does create the file.
    mlflow.sklearn.load_model(f"models:/{settings.MODEL_NAME}/{hostile}")
    assert marker.exists()
