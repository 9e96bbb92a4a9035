"""What one worker process keeps between tasks: its database engine and its model.

Created on first use inside the process, never before the fork, and forgotten
by `reset` when a pool child starts.
"""

from __future__ import annotations

from sqlalchemy import Engine

from worker.database import get_engine, reset_engines
from worker.registry import LoadedModel, ModelCache
from worker.settings import get_settings

_MODEL_CACHE: dict[str, ModelCache] = {}


def engine() -> Engine:
    return get_engine(get_settings().database_url)


def model() -> LoadedModel:
    cache = _MODEL_CACHE.get("production")
    if cache is None:
        cache = _MODEL_CACHE["production"] = ModelCache(get_settings())
    return cache.get()


def reset() -> None:
    reset_engines()
    _MODEL_CACHE.clear()
