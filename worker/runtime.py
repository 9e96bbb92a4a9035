"""What one worker process keeps between tasks: its database engine and its models (by version).

Created on first use inside the process, never before the fork, and forgotten
by `reset` when a pool child starts.
"""

from __future__ import annotations

import logging
import time

import pandas as pd
from sqlalchemy import Engine

from worker.model.reference import ReferenceCache
from worker.model.registry import LoadedModel, ModelCache, Resolved, configure_mlflow
from worker.settings import get_settings
from worker.store import writes
from worker.store.database import get_engine, reset_engines

log = logging.getLogger(__name__)
_model_cache: ModelCache | None = None
_reference_cache: ReferenceCache | None = None


def engine() -> Engine:
    return get_engine(get_settings().database_url)


def _cache() -> ModelCache:
    global _model_cache
    if _model_cache is None:
        _model_cache = ModelCache(get_settings())
    return _model_cache


def resolve_model() -> Resolved:
    """Which version a new batch pins (see ModelCache.resolve)."""
    return _cache().resolve()


def model(name: str | None = None, version: str | None = None) -> LoadedModel:
    """The pinned version's model, or MODEL_URI's current one when none is given."""
    if name is None or version is None:
        return _cache().current()
    return _cache().get(name, version)


def pinned_model(engine: Engine, row: dict) -> tuple[dict, LoadedModel]:
    """The batch's pinned model: the version stored in its row, or the one MODEL_URI resolves to
    now, pinned first (a parallel chunk or an earlier attempt may have pinned it already)."""
    if not row.get("model_version"):
        resolved = resolve_model()
        if resolved.pinned_by == "fallback":
            log.warning("batch %s pinned to version %s without asking the registry", row["batch_id"], resolved.version)
        row = writes.pin_model(engine, row["batch_id"], resolved.name, resolved.version, resolved.pinned_by)
    return row, model(row["model_name"], row["model_version"])


def references() -> ReferenceCache:
    """The per-process reference cache (references never change once logged)."""
    global _reference_cache
    if _reference_cache is None:
        settings = get_settings()
        _reference_cache = ReferenceCache(lambda: configure_mlflow(settings))
    return _reference_cache


def reference(name: str, version: str) -> pd.DataFrame | None:
    return references().get(name, version, time.monotonic())


def heldout_mae(name: str, version: str) -> float | None:
    return references().heldout_mae(name, version)


def reset() -> None:
    global _model_cache, _reference_cache
    reset_engines()
    _model_cache = None
    _reference_cache = None
