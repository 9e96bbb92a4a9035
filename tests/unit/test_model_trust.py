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
from worker.model.trust import ModelRefused, check_format, load_checked, trusted_types
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
    assert set(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))) <= set(trusted_types())


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


# ------------------------------------------------- a scikit-learn upgrade that moves a class

# A child process (so the class stays where it is for every other test) moves RandomForestRegressor
# into a module of another name, as a scikit-learn release may do with its private modules; a
# pipeline fitted and saved there names the new path, as one trained after such an upgrade would.
MOVED_FOREST = """
import sys, types
from pathlib import Path

import skops.io
from sklearn.ensemble import RandomForestRegressor

moved = types.ModuleType("sklearn.ensemble._forest_moved_in_a_later_release")
moved.RandomForestRegressor = RandomForestRegressor
sys.modules[moved.__name__] = moved
RandomForestRegressor.__module__ = moved.__name__

from worker.model.features import feature_pipeline
from worker.model.trust import load_checked
from worker.rides.generator import RIDE_COLUMNS, generate_rides

rides = generate_rides(300, seed=1)
pipeline = feature_pipeline(RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0))
pipeline.fit(rides[list(RIDE_COLUMNS)], rides["trip_seconds"] / 60)
folder = Path(sys.argv[1])
folder.mkdir()
(folder / "MLmodel").write_text(
    "flavors:\\n  sklearn:\\n    pickled_model: model.skops\\n    serialization_format: skops\\n"
)
(folder / "model.skops").write_bytes(skops.io.dumps(pipeline))
assert "_forest_moved_in_a_later_release" in str(skops.io.get_untrusted_types(file=folder / "model.skops"))
loaded = load_checked(folder, "m", "1")
print("loaded", type(loaded.steps[1][1]).__module__)
"""


def test_a_class_moved_by_a_scikit_learn_upgrade_is_still_trusted(tmp_path):
    """The trusted names follow the installed scikit-learn, so an upgrade that moves a private module
    does not make every worker refuse every version (a fleet-wide outage from a dependency bump)."""
    import subprocess
    import sys

    from tests.support import REPO_ROOT

    done = subprocess.run(
        [sys.executable, "-c", MOVED_FOREST, str(tmp_path / "model")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded sklearn.ensemble._forest_moved_in_a_later_release" in done.stdout


def test_the_trusted_types_are_exactly_what_the_projects_pipeline_is_made_of(pipeline):
    """Every type a saved pipeline names, read from the skops file's schema: trusted_types() holds
    exactly the ones that are not containers or numpy (which skops trusts itself), nothing more."""
    import io
    import json
    import zipfile

    from worker.model.trust import trusted_types

    schema = json.loads(zipfile.ZipFile(io.BytesIO(skops.io.dumps(pipeline))).read("schema.json"))
    named: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                named.add(f"{node['__module__']}.{node['__class__']}")
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)
    assert set(trusted_types()) == {name for name in named if not name.startswith(("builtins.", "numpy."))}


# ------------------------------------------------- a trusted but broken artifact


def _with_features(pipeline, **changes):
    """A copy of the fitted pipeline whose FunctionTransformer got other arguments."""
    import copy

    broken = copy.deepcopy(pipeline)
    broken.steps[0][1].set_params(**changes)
    return broken


def _other_function(rides):  # a callable that is not build_features
    return rides


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"kw_args": {"unused": 1}}, "kw_args"),
        ({"validate": True}, "validate"),
        ({"inverse_func": "build_features"}, "inverse_func"),
        ({"feature_names_out": "one-to-one"}, "feature_names_out"),
    ],
)
def test_a_feature_step_with_other_arguments_is_refused_at_load(tmp_path, pipeline, changes, named):
    from worker.model.features import build_features

    if changes.get("inverse_func") == "build_features":
        changes = {"inverse_func": build_features}
    broken = _with_features(pipeline, **changes)
    folder = model_folder(tmp_path, sklearn_mlmodel("skops"), {"model.skops": skops.io.dumps(broken)})
    with pytest.raises(ModelRefused) as refused:
        load_checked(folder, "m", "4")
    assert named in str(refused.value)
    assert "FunctionTransformer" in str(refused.value)


def test_an_unfitted_forest_is_refused_at_load_not_at_every_batch(tmp_path):
    unfitted = feature_pipeline(RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0))
    folder = model_folder(tmp_path, sklearn_mlmodel("skops"), {"model.skops": skops.io.dumps(unfitted)})
    with pytest.raises(ModelRefused, match="fails on sample rides"):
        load_checked(folder, "m", "5")


def test_a_forest_fitted_on_other_features_is_refused_at_load(tmp_path, pipeline):
    import copy

    broken = copy.deepcopy(pipeline)
    rides = generate_rides(200, seed=3)
    broken.steps[1][1].fit(np.zeros((200, 3)), rides["trip_seconds"] / 60)  # 3 features, not the project's
    folder = model_folder(tmp_path, sklearn_mlmodel("skops"), {"model.skops": skops.io.dumps(broken)})
    with pytest.raises(ModelRefused, match="fails on sample rides"):
        load_checked(folder, "m", "6")
