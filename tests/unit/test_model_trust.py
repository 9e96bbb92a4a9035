"""worker/model/trust.py on hand-made model folders: what is refused from the MLmodel file alone, and why.

The end-to-end cases (a real registry, MLflow's own log_model, real workers) are in
tests/security/test_model_artifacts.py; these pin down each refusal reason cheaply.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.ensemble import RandomForestRegressor

from worker.model.features import feature_pipeline
from worker.model.trust import TRUSTED_TYPES, ModelRefused, check_format, load_checked
from worker.rides.generator import RIDE_COLUMNS, generate_rides


def model_folder(root: Path, flavor: str, files: dict[str, bytes] | None = None) -> Path:
    folder = root / "model"
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text(flavor)
    for name, content in (files or {}).items():
        (folder / name).write_bytes(content)
    return folder


def sklearn_mlmodel(serialization: str | None, pickled_model: str = "model.skops") -> str:
    line = f"    serialization_format: {serialization}\n" if serialization else ""
    return f"flavors:\n  sklearn:\n    pickled_model: {pickled_model}\n{line}    sklearn_version: 1.9.1\n"


@pytest.fixture(scope="module")
def pipeline():
    rides = generate_rides(500, seed=1)
    forest = RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0)
    return feature_pipeline(forest).fit(rides[list(RIDE_COLUMNS)], rides["trip_seconds"] / 60)


def test_a_skops_folder_of_the_projects_pipeline_loads(tmp_path, pipeline):
    folder = model_folder(tmp_path, sklearn_mlmodel("skops"), {"model.skops": skops.io.dumps(pipeline)})
    assert check_format(folder, "m", "1") == "skops"
    loaded = load_checked(folder, "m", "1")
    rides = generate_rides(20, seed=2)[list(RIDE_COLUMNS)]
    np.testing.assert_array_equal(loaded.predict(rides), pipeline.predict(rides))
    assert set(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))) <= set(TRUSTED_TYPES)


@pytest.mark.parametrize(
    ("mlmodel", "reason"),
    [
        (sklearn_mlmodel("cloudpickle", "model.pkl"), "it is a cloudpickle artifact"),
        (sklearn_mlmodel("pickle", "model.pkl"), "it is a pickle artifact"),
        (sklearn_mlmodel(None, "model.pkl"), "it is a pickle artifact"),  # MLflow's own default
        (sklearn_mlmodel("joblib"), "unknown serialization format 'joblib'"),
        ("flavors:\n  python_function:\n    loader_module: os\n", "it has no sklearn flavor"),
        ("flavors: [1, 2\n", "its MLmodel file cannot be read"),
    ],
)
def test_refused_from_the_mlmodel_file_alone(tmp_path, mlmodel, reason):
    # The "model" bytes are not even a pickle: nothing is ever read past the MLmodel file.
    folder = model_folder(tmp_path, mlmodel, {"model.pkl": b"not read", "model.skops": b"not read"})
    with pytest.raises(ModelRefused) as refused:
        load_checked(folder, "chicago-taxi-duration", "7")
    assert str(refused.value).startswith("model chicago-taxi-duration version 7 refused: ")
    assert reason in str(refused.value)


def test_a_model_file_outside_the_artifact_is_refused(tmp_path, pipeline):
    (tmp_path / "elsewhere.skops").write_bytes(skops.io.dumps(pipeline))
    folder = model_folder(tmp_path, sklearn_mlmodel("skops", "../elsewhere.skops"))
    with pytest.raises(ModelRefused, match="is not a file inside the artifact"):
        load_checked(folder, "m", "1")


def test_a_broken_skops_file_is_refused(tmp_path):
    folder = model_folder(tmp_path, sklearn_mlmodel("skops"), {"model.skops": b"PK\x03\x04 not a zip"})
    with pytest.raises(ModelRefused, match="its skops file cannot be read"):
        load_checked(folder, "m", "1")


def test_allow_pickle_lets_the_format_pass_but_nothing_else(tmp_path):
    folder = model_folder(tmp_path, sklearn_mlmodel("cloudpickle", "model.pkl"))
    assert check_format(folder, "m", "1", allow_pickle=True) == "cloudpickle"
    with pytest.raises(ModelRefused, match="unknown serialization format"):
        check_format(model_folder(tmp_path / "x", sklearn_mlmodel("joblib")), "m", "1", allow_pickle=True)


def test_refused_is_not_a_transient_error():
    """The tasks retry TRANSIENT errors; a refused version must fail, never be retried."""
    from worker.model.registry import ModelUnavailable

    assert not issubclass(ModelRefused, ModelUnavailable | ConnectionError | OSError)
    error = ModelRefused("m", "3", "why")
    assert (error.name, error.version, error.reason) == ("m", "3", "why")
