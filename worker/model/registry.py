"""The MLflow Model Registry: where models are logged, and the per-process model cache.

Workers load a model once per process, keyed by version, and keep it; every
MODEL_REFRESH_SECONDS they ask the registry which version the alias points to
(one small request, which also tells where the `challenger` alias points). A
batch pins the version it started with, and the challenger it shadow-scores
with. If the registry is down, a worker that resolved the alias before keeps
using that version, records the batch as pinned by `fallback` and logs a warning.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from worker.model.forest import TreeByTree
from worker.model.trust import ModelRefused, inspect_checked, load_checked
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """No model could be loaded now: the registry is unreachable or has no model yet. Transient."""


CHALLENGER_ALIAS = "challenger"  # a version tried on live batches beside production (shadow scoring)


def shadowed(challenger: str | None, production: str | None) -> str | None:
    """The challenger that is tried against production: shadow-scored, compared, judged. None without
    one, and for an alias on production's own version (nothing to compare; promote and rollback
    retire such an alias, a person may still set one)."""
    return challenger if challenger is not None and production is not None and challenger != production else None


class ModelVersionGone(RuntimeError):
    """The version a batch is pinned to is no longer in the registry. Permanent: never retried."""


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # what predicts: the checked pipeline as a TreeByTree (anything with predict(rides))
    name: str
    version: str


@dataclass(frozen=True)
class Shadow:
    """A batch's challenger for shadow scoring: its model, or why it cannot score (`error`)."""

    version: str
    model: LoadedModel | None = None
    error: str | None = None


# MLflow retries an unreachable server 7 times with backoff (~4 minutes) by default, longer
# than a task's time limit; Celery's own retry with backoff is the better place to wait.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store; a local store gets its artifacts under LOCAL_DIR.

    MLflow's client reads basic-auth credentials from os.environ only, so the settings' (which
    may come from .env) are put there; unset ones are removed, so the settings alone decide.
    """
    for name, value in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if getattr(settings, name):
            os.environ[name] = getattr(settings, name)
        else:
            os.environ.pop(name, None)
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        settings.LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(settings: Settings, client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name(settings.MLFLOW_EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not settings.tracking_uri.startswith(("http://", "https://", "databricks")):
        settings.local_artifact_root.mkdir(parents=True, exist_ok=True)
        location = settings.local_artifact_root.as_uri()
    return client.create_experiment(settings.MLFLOW_EXPERIMENT, artifact_location=location)


def parse_model_uri(uri: str) -> tuple[str, str, str]:
    """`models:/NAME@ALIAS`, `models:/NAME/STAGE` or `models:/NAME/VERSION` -> (name, kind, ref)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"MODEL_URI must start with models:/, got {uri!r}")
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, "alias", alias
    name, _, ref = rest.rpartition("/")
    if not name or not ref:
        raise ValueError(f"MODEL_URI {uri!r} names no version, stage or alias")
    return name, ("version" if ref.isdigit() else "stage"), ref


@dataclass(frozen=True)
class RegistryState:
    """What one registry read says: the version `uri` points at (None: no such model, alias, stage or
    version) and every alias of the model."""

    name: str
    version: str | None
    aliases: dict[str, str]


def read_state(client: MlflowClient, uri: str) -> RegistryState:
    """One read of the registry for `uri` (NAME@ALIAS, NAME/STAGE or NAME/VERSION). A missing model is
    a state with no version; any other registry error (unreachable, refused) propagates."""
    name, kind, ref = parse_model_uri(uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return RegistryState(name, None, {})
        raise
    aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    if kind == "alias":
        return RegistryState(name, aliases.get(ref), aliases)
    if kind == "stage":
        latest = client.get_latest_versions(name, stages=[ref])
        return RegistryState(name, str(latest[0].version) if latest else None, aliases)
    versions = {str(v.version) for v in client.search_model_versions(f"name='{name}'")}
    return RegistryState(name, ref if ref in versions else None, aliases)


def find_version(client: MlflowClient, uri: str) -> tuple[str, str] | None:
    """The (name, version) a registry URI points at now, or None if there is no such model,
    alias, stage or version. Any other registry error (unreachable, refused) propagates."""
    state = read_state(client, uri)
    return (state.name, state.version) if state.version is not None else None


def resolve_version(client: MlflowClient, uri: str) -> tuple[str, str]:
    """Like find_version, but a missing model is an error that names the URI."""
    found = find_version(client, uri)
    if found is None:
        raise MlflowException(f"the registry has no model at {uri}: run `python -m worker init` or `train`")
    return found


def load_version(name: str, version: str, allow_pickle: bool | None = None) -> Any:
    """The one way a version is loaded: downloaded, checked, and read only if it is safe to read.

    Raises ModelRefused (permanent: never retry) for a pickle artifact, untrusted types or a
    foreign object; registry and network errors propagate as they are (transient).
    `allow_pickle` defaults to the ALLOW_PICKLE_MODELS setting.
    """
    if allow_pickle is None:
        allow_pickle = get_settings().ALLOW_PICKLE_MODELS
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        # Downloading only copies bytes; nothing is deserialized before load_checked's checks.
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        return load_checked(Path(local), name, str(version), allow_pickle=allow_pickle)


def loadable(name: str, version: str, load: bool = False, allow_pickle: bool | None = None) -> str | None:
    """None if workers would load this version, else why they would refuse it. Without `load` nothing
    is deserialized (format and types only); with it the version is loaded as a worker would load
    it, which also checks that it is the project's pipeline. Registry errors propagate."""
    try:
        if load:
            load_version(name, version, allow_pickle)
            return None
        if allow_pickle is None:
            allow_pickle = get_settings().ALLOW_PICKLE_MODELS
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
            inspect_checked(Path(local), name, str(version), allow_pickle=allow_pickle)
        return None
    except ModelRefused as exc:
        return exc.reason


CONVERTED_FROM = "converted_from_version"  # on convert-model's copy: the version it was copied from
CONVERSION_CHECKED = "conversion_checked"  # on that copy, once it predicted exactly as the original


def version_problem(client: MlflowClient, name: str, version: str) -> str | None:
    """Why no worker can score with this version now or on any retry (gone from the registry, or
    refused), or None. Nothing is deserialized. Other registry errors (unreachable) propagate."""
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return "is not in the registry (deleted?)"
        raise
    reason = loadable(name, version)
    return None if reason is None else f"is refused by the workers: {reason}"


def checked_copy(client: MlflowClient, name: str, version: str) -> str | None:
    """The newest version that convert-model registered as `version`'s copy and saw predict exactly
    as it did: a batch pinned to `version` scores the same with it."""
    copies = [
        int(found.version)
        for found in client.search_model_versions(f"name='{name}'")
        if (found.tags or {}).get(CONVERTED_FROM) == str(version) and (found.tags or {}).get(CONVERSION_CHECKED)
    ]
    return str(max(copies)) if copies else None


@dataclass(frozen=True)
class Resolved:
    """Which version a batch should use, and how that was decided: `alias` (the alias or stage
    MODEL_URI names, asked now), `fixed` (MODEL_URI names a version) or `fallback` (the registry
    could not be asked; the version this process last resolved)."""

    name: str
    version: str
    pinned_by: str
    challenger: str | None = None  # where the challenger alias pointed at the same read


class ModelCache:
    """One per worker process: the alias's current version, and the models loaded so far by version.

    A batch resolves the alias once and pins that version; every chunk and retry then asks for
    the pinned version, so a worker holds the old and the new model while batches drain after
    the alias moved. At most `keep` models stay loaded.
    """

    def __init__(self, settings: Settings, keep: int = 3) -> None:
        self.settings = settings
        self.keep = keep
        self._lock = threading.Lock()
        self._resolved: Resolved | None = None
        self._checked_at = 0.0
        self._fallback = False
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._client: MlflowClient | None = None

    def _registry(self) -> MlflowClient:
        if self._client is None:
            self._client = configure_mlflow(self.settings)
        return self._client

    def resolve(self) -> Resolved:
        """The version MODEL_URI points at, asked at most every MODEL_REFRESH_SECONDS."""
        with self._lock:
            now = time.monotonic()
            if self._resolved is not None and now - self._checked_at < self.settings.MODEL_REFRESH_SECONDS:
                return self._current_resolution()
            try:
                state = read_state(self._registry(), self.settings.model_uri)
                if state.version is None:
                    raise MlflowException(
                        f"the registry has no model at {self.settings.model_uri}: run `python -m worker init` or `train`"
                    )
                name, version = state.name, state.version
            except Exception as exc:  # the registry may fail in many ways; all mean "not now"
                if self._resolved is None:
                    raise ModelUnavailable(f"cannot load {self.settings.model_uri}: {exc}") from exc
                log.warning(
                    "model registry unreachable (%s); keep serving cached version %s", exc, self._resolved.version
                )
                self._checked_at = now
                self._fallback = True
                return self._current_resolution()
            kind = parse_model_uri(self.settings.model_uri)[1]
            if self._resolved is not None and self._resolved.version != version:
                log.info("%s moved from version %s to %s", self.settings.model_uri, self._resolved.version, version)
            challenger = state.aliases.get(CHALLENGER_ALIAS)
            self._resolved = Resolved(name, version, "fixed" if kind == "version" else "alias", challenger)
            self._checked_at = now
            self._fallback = False
            return self._resolved

    def _current_resolution(self) -> Resolved:
        assert self._resolved is not None
        if self._fallback:
            return Resolved(self._resolved.name, self._resolved.version, "fallback", self._resolved.challenger)
        return self._resolved

    def get(self, name: str, version: str) -> LoadedModel:
        """The model of `models:/NAME/VERSION`, loaded on first use and kept."""
        key = (name, version)
        with self._lock:
            cached = self._models.get(key)
            if cached is not None:
                self._models.move_to_end(key)
                return cached
            started = time.perf_counter()
            # A fresh pool process may be handed a pinned retry before it ever resolved the alias:
            # point MLflow at the configured registry first, not at whatever the environment left.
            self._registry()
            try:
                model = load_version(name, version)
            except ModelRefused:
                raise  # permanent: the batch pinned to it fails at once, the worker serves others
            except MlflowException as exc:
                if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise ModelVersionGone(
                        f"model {name} version {version} is not in the registry (deleted?); "
                        "the batch was pinned to it and is not switched to another version"
                    ) from exc
                raise ModelUnavailable(f"cannot load {name} version {version}: {exc}") from exc
            except Exception as exc:
                raise ModelUnavailable(f"cannot load {name} version {version}: {exc}") from exc
            log.info("loaded model %s version %s in %.2fs", name, version, time.perf_counter() - started)
            loaded = self._models[key] = LoadedModel(TreeByTree(model), name, version)
            while len(self._models) > self.keep:
                self._models.popitem(last=False)
            return loaded

    def current(self) -> LoadedModel:
        """The model MODEL_URI points at now (for callers that are not pinned to a batch)."""
        resolved = self.resolve()
        return self.get(resolved.name, resolved.version)
