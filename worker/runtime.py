"""What one worker process keeps between tasks: its database engine and its model.

Created on first use inside the process, never before the fork, and forgotten
by `reset` when a pool child starts.
"""

from __future__ import annotations

from sqlalchemy import Engine

from worker.model.registry import LoadedModel, ModelCache
from worker.settings import get_settings
from worker.store.database import get_engine, reset_engines

_model_cache: ModelCache | None = None


def engine() -> Engine:
    return get_engine(get_settings().database_url)


def model() -> LoadedModel:
    global _model_cache
    if _model_cache is None:
        _model_cache = ModelCache(get_settings())
    return _model_cache.get()


def reset() -> None:
    global _model_cache
    reset_engines()
    _model_cache = None
