"""Re-logging an old pickle version in skops format: the one-command way forward for an existing registry.

Versions registered before skops are cloudpickle files, which the workers refuse.
`python -m worker convert-model` reads one of them ONCE, in the operator's own
process (that read runs the pickle's code: only convert a version you trust,
e.g. one your own `train` registered), checks that it is the project's
pipeline, registers the same fitted pipeline again as skops, and checks that
the new version predicts exactly what the old one did before the alias may move
(the model's life cycle, worker/lifecycle, moves it on the record).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from worker.model.reference import REFERENCE_DIR, REFERENCE_FILE
from worker.model.registry import (
    CONVERSION_CHECKED,
    CONVERTED_FROM,
    configure_mlflow,
    ensure_experiment,
    load_version,
    resolve_version,
)
from worker.model.training import log_pipeline
from worker.model.trust import SKOPS, load_checked, sklearn_flavor
from worker.rides.generator import RIDE_COLUMNS, generate_rides
from worker.settings import Settings

CHECK_RIDES = 2_000


log = logging.getLogger(__name__)


class ConversionMismatch(RuntimeError):
    """The skops copy does not predict what the original did; the alias was not moved."""


@dataclass(frozen=True)
class Conversion:
    name: str
    source_version: str
    version: str | None  # None: the source already was skops, nothing registered
    promoted: bool  # the alias is on the source version and should move to the copy
    reason: str


def copy_reference(client, run_id: str | None) -> bool:
    """Log the source run's reference sample into the active run; False if it has none."""
    if not run_id or not any(f.path.endswith(REFERENCE_FILE) for f in client.list_artifacts(run_id, REFERENCE_DIR)):
        return False
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        local = client.download_artifacts(run_id, f"{REFERENCE_DIR}/{REFERENCE_FILE}", tmp)
        mlflow.log_artifact(local, artifact_path=REFERENCE_DIR)
    return True


def convert_to_skops(settings: Settings, version: str | None = None) -> Conversion:
    """Register `version` (default: the one MODEL_URI points at) again as skops; `promoted` says the
    alias was on it and should follow the copy."""
    client = configure_mlflow(settings)
    if version is None:
        name, version = resolve_version(client, settings.model_uri)
    else:
        name = settings.MODEL_NAME
        client.get_model_version(name, version)  # a missing version fails here, naming it
    with tempfile.TemporaryDirectory(prefix="convert-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        serialization = sklearn_flavor(local, name, version).get("serialization_format", "pickle")
        if serialization == SKOPS:
            return Conversion(name, version, None, False, f"version {version} already is skops; nothing to do")
        # Said before it happens, and only when it does (not for a version that already is skops).
        log.warning(
            "reading pickle version %s once in this process (it runs the pickle's code: convert only "
            "versions you trust), then registering it again as skops",
            version,
        )
        pipeline = load_checked(local, name, version, allow_pickle=True)  # the operator's explicit choice

    rides = generate_rides(CHECK_RIDES, seed=0)[list(RIDE_COLUMNS)]
    expected = np.asarray(pipeline.predict(rides))
    source = client.get_model_version(name, version)
    with mlflow.start_run(experiment_id=ensure_experiment(settings, client), run_name=f"convert-v{version}"):
        mlflow.set_tags({CONVERTED_FROM: version, "converted_from_run": source.run_id or ""})
        # Drift is measured against the reference of the version that scored a batch: the copy
        # predicts exactly as the original, so it gets the original's reference (if it has one).
        copy_reference(client, source.run_id)
        new_version = log_pipeline(pipeline, rides.head(5), name)
    for key, value in (source.tags or {}).items():
        if key != CONVERSION_CHECKED:  # the source's own check, not this copy's
            client.set_model_version_tag(name, new_version, key, value)
    client.set_model_version_tag(name, new_version, CONVERTED_FROM, version)

    converted = load_version(name, new_version, allow_pickle=False)
    if not np.array_equal(np.asarray(converted.predict(rides)), expected):
        raise ConversionMismatch(
            f"{name} version {new_version} (skops copy of {version}) predicts differently on {CHECK_RIDES} "
            f"generated rides; @{settings.MODEL_ALIAS} was not moved"
        )
    # Only now may `rerun` score a batch pinned to the original with the copy.
    client.set_model_version_tag(
        name, new_version, CONVERSION_CHECKED, f"predicts as version {version} on {CHECK_RIDES} rides"
    )
    aliased = client.get_registered_model(name).aliases.get(settings.MODEL_ALIAS)
    if aliased is not None and str(aliased) == str(version):
        return Conversion(
            name, version, new_version, True, f"@{settings.MODEL_ALIAS} moved from {version} to {new_version}"
        )
    return Conversion(
        name, version, new_version, False, f"@{settings.MODEL_ALIAS} is not on version {version}; left where it is"
    )
