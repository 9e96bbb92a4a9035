"""What a worker will load from the registry: a skops artifact of the project's own pipeline, nothing else.

Whoever can register a version and move the alias chooses what every worker
loads next. A pickle or cloudpickle artifact runs arbitrary code while it is
read, so it is refused from the MLmodel file alone, before a byte of it is
deserialized (unless ALLOW_PICKLE_MODELS is set for a migration). A skops
artifact is read with the project's own list of trusted types, never with the
list stored in the artifact's MLmodel file (that one was written by whoever
registered the version, which is exactly the party not to trust), and what
comes out must be the project's pipeline.

A refusal is permanent: the same version is refused every time, so it is
raised as ModelRefused, which is not a transient error and must not be retried.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

SKOPS = "skops"
PICKLE_FORMATS = ("pickle", "cloudpickle")


class ModelRefused(Exception):
    """A registered version the workers will not load, now or on any retry (a permanent error).

    Not a subclass of ModelUnavailable or of any error the tasks retry: retrying cannot make an
    unsafe or foreign artifact safe, so a batch pinned to it should fail at once.
    """

    def __init__(self, name: str, version: str, reason: str) -> None:
        self.name = name
        self.version = str(version)
        self.reason = reason
        super().__init__(f"model {name} version {version} refused: {reason}")

    def __reduce__(self):
        # Celery hands a failed task's exception from the pool process to the main one by pickling
        # it; without this, the error would read "UnpickleableExceptionWrapper: ModelRefused(...)".
        return type(self), (self.name, self.version, self.reason)


# Rides every loaded pipeline must predict before it serves: a trusted but broken artifact (an
# unfitted forest, one fitted on other features) fails here once, not in every batch.
SAMPLE_RIDES = 8


@functools.cache
def trusted_types() -> tuple[str, ...]:
    """The pipeline's types, named as skops names them with the scikit-learn installed now.

    skops names a type by the module that defines it, and scikit-learn keeps its estimators in
    private modules (sklearn.ensemble._forest, sklearn.tree._tree) that a release may move. A
    written-out list of those paths would make every worker refuse every version after such an
    upgrade, so the names are read from the public classes here. The tree structure has no
    public name; its class is read off a fitted one-split tree. skops trusts containers and
    numpy itself; anything else in a file must be one of these, whatever its MLmodel file says.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.tree import DecisionTreeRegressor

    from worker.model.features import build_features

    tree = DecisionTreeRegressor(max_depth=1).fit([[0.0], [1.0]], [0.0, 1.0]).tree_
    kinds = (Pipeline, FunctionTransformer, build_features, RandomForestRegressor, DecisionTreeRegressor, type(tree))
    return tuple(sorted(f"{kind.__module__}.{kind.__qualname__}" for kind in kinds))


def preload_reader() -> None:
    """Import what reading a skops model needs (skops's import alone takes ~1 s: it lists every
    scikit-learn estimator), so that a process forked afterwards loads a model in ~0.03 s."""
    import skops.io  # noqa: F401

    trusted_types()


def sklearn_flavor(model_dir: Path, name: str, version: str) -> dict[str, Any]:
    """The sklearn flavor block of the downloaded version's MLmodel file (plain YAML, nothing run)."""
    mlmodel = model_dir / "MLmodel"
    try:
        document = yaml.safe_load(mlmodel.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelRefused(name, version, f"its MLmodel file cannot be read ({exc})") from None
    flavors = document.get("flavors") if isinstance(document, dict) else None
    flavor = flavors.get("sklearn") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        raise ModelRefused(name, version, "it has no sklearn flavor (not a model this project logged)")
    return flavor


def model_file(model_dir: Path, flavor: dict[str, Any], name: str, version: str) -> Path:
    """The serialized model the flavor names, which must lie inside the downloaded folder."""
    relative = flavor.get("pickled_model")
    if not isinstance(relative, str) or not relative:
        raise ModelRefused(name, version, "its sklearn flavor names no model file")
    path = (model_dir / relative).resolve()
    if not path.is_relative_to(model_dir.resolve()) or not path.is_file():
        raise ModelRefused(name, version, f"its model file {relative!r} is not a file inside the artifact")
    return path


def check_pipeline(model: Any, name: str, version: str) -> Any:
    """The project's pipeline exactly: raw ride columns -> build_features -> a fitted random forest.

    skops's own defaults trust every scikit-learn estimator, so a file could hold some other
    (harmless, but wrong) model; its predictions would be written as durations without complaint.
    A trusted pipeline can still be broken (its feature step called with other arguments, a forest
    never fitted or fitted on other columns): it is refused now, once, instead of failing every
    batch at predict, which is retried as if the registry were down.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from worker.model.features import feature_step

    steps = getattr(model, "steps", None) if isinstance(model, Pipeline) else None
    ok = (
        isinstance(steps, list)
        and [step_name for step_name, _ in steps] == ["features", "forest"]
        and isinstance(steps[0][1], FunctionTransformer)
        and isinstance(steps[1][1], RandomForestRegressor)
    )
    if not ok:
        raise ModelRefused(
            name,
            version,
            f"it holds a {type(model).__module__}.{type(model).__qualname__}, not the project's "
            "Pipeline(features=FunctionTransformer(build_features), forest=RandomForestRegressor)",
        )
    differs = changed_arguments(steps[0][1], feature_step())
    if differs:
        raise ModelRefused(
            name,
            version,
            f"its FunctionTransformer is not the project's FunctionTransformer(build_features): {', '.join(differs)}",
        )
    try_sample_rides(model, name, version)
    return model


def changed_arguments(step: Any, expected: Any) -> list[str]:
    """`name=value` for each constructor argument of `step` that differs from `expected`'s.

    An argument a version was saved without (one a later scikit-learn added) counts as the
    default, so an upgrade does not refuse the versions saved before it.
    """
    wanted = expected.get_params(deep=False)
    differs = []
    for argument, value in wanted.items():
        found = getattr(step, argument, value)
        if found is not value and not _equal(found, value):
            differs.append(f"{argument}={_describe(found)}")
    return differs


def _equal(found: Any, wanted: Any) -> bool:
    try:
        return bool(found == wanted)
    except Exception:  # arrays and other values without a plain truth value: not the project's
        return False


def _describe(value: Any) -> str:
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)[:80]


def try_sample_rides(model: Any, name: str, version: str) -> None:
    """Predict a few generated rides; a pipeline that cannot is refused (a permanent error)."""
    import numpy as np

    from worker.rides.generator import RIDE_COLUMNS, generate_rides

    rides = generate_rides(SAMPLE_RIDES, seed=0)[list(RIDE_COLUMNS)]
    try:
        predicted = np.asarray(model.predict(rides), dtype=float)
    except Exception as exc:  # whatever the artifact does wrong, it does it on every batch
        raise ModelRefused(
            name, version, f"it fails on sample rides ({type(exc).__name__}: {str(exc)[:300]})"
        ) from None
    if predicted.shape != (SAMPLE_RIDES,) or not np.isfinite(predicted).all():
        raise ModelRefused(
            name, version, f"it fails on sample rides: {predicted.shape} predictions, not {SAMPLE_RIDES} finite ones"
        )


def check_format(model_dir: Path, name: str, version: str, allow_pickle: bool = False) -> str:
    """The version's serialization format, read from its MLmodel file alone (nothing deserialized);
    ModelRefused if the workers would refuse it for its format. Cheap enough for a status check."""
    flavor = sklearn_flavor(model_dir, name, version)
    # MLflow itself reads a flavor without a format as pickle; so does this check.
    serialization = flavor.get("serialization_format", "pickle")
    if serialization in PICKLE_FORMATS and not allow_pickle:
        raise ModelRefused(
            name,
            version,
            f"it is a {serialization} artifact, and unpickling runs any code its author chose; "
            f"re-log it as skops (python -m worker convert-model --version {version}) or retrain "
            "(python -m worker train --force); ALLOW_PICKLE_MODELS=true loads it anyway, only for a migration",
        )
    if serialization not in (*PICKLE_FORMATS, SKOPS):
        raise ModelRefused(name, version, f"unknown serialization format {serialization!r}")
    return serialization


def inspect_checked(model_dir: Path, name: str, version: str, allow_pickle: bool = False) -> str:
    """What load_checked would refuse, found without deserializing anything: the format from the
    MLmodel file, and for skops the types its schema names. ModelRefused if refused; returns the
    format. (That the file holds the project's pipeline shows only on loading it.)"""
    serialization = check_format(model_dir, name, version, allow_pickle)
    path = model_file(model_dir, sklearn_flavor(model_dir, name, version), name, version)
    if serialization == SKOPS:
        _untrusted_check(path, name, version)
    return serialization


def _untrusted_check(path: Path, name: str, version: str) -> None:
    import skops.io

    try:
        found = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # a corrupt or foreign file: zip, JSON or schema errors alike
        raise ModelRefused(name, version, f"its skops file cannot be read ({type(exc).__name__}: {exc})") from None
    untrusted = sorted(set(found) - set(trusted_types()))
    if untrusted:
        raise ModelRefused(name, version, f"its skops file names types the project does not trust: {untrusted}")


def load_checked(model_dir: Path, name: str, version: str, allow_pickle: bool = False) -> Any:
    """Load a downloaded model version, refusing (ModelRefused) anything the workers must not run.

    `allow_pickle` is the ALLOW_PICKLE_MODELS setting: only for migrating old versions, since
    reading a pickle runs whatever code its author put in it.
    """
    serialization = check_format(model_dir, name, version, allow_pickle)
    path = model_file(model_dir, sklearn_flavor(model_dir, name, version), name, version)
    if serialization in PICKLE_FORMATS:
        import mlflow.sklearn

        return check_pipeline(mlflow.sklearn.load_model(str(model_dir)), name, version)

    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    _untrusted_check(path, name, version)
    try:
        model = skops.io.load(path, trusted=list(trusted_types()))
    except UntrustedTypesFoundException as exc:
        raise ModelRefused(name, version, f"its skops file names types the project does not trust: {exc}") from None
    except Exception as exc:  # trusted types only, but a broken file: the same every time
        raise ModelRefused(name, version, f"its skops file cannot be loaded ({type(exc).__name__}: {exc})") from None
    return check_pipeline(model, name, version)
