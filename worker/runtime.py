"""What one worker process keeps between tasks: its database engine and its models (by version).

Created on first use inside the process, never before the fork, and forgotten
by `reset` when a pool child starts.
"""

from __future__ import annotations

import logging
import time

import pandas as pd
from sqlalchemy import Engine

from worker.lifecycle import moves
from worker.model.reference import ReferenceCache
from worker.model.registry import (
    CHALLENGER_ALIAS,
    LoadedModel,
    ModelCache,
    Resolved,
    Shadow,
    configure_mlflow,
    parse_model_uri,
    shadowed,
)
from worker.settings import get_settings, redact
from worker.store import writes
from worker.store.database import get_engine, reset_engines

log = logging.getLogger(__name__)
_model_cache: ModelCache | None = None
_reference_cache: ReferenceCache | None = None
# Where this process last saw each alias, so that only a change is taken to the record.
_aliases_seen: dict[str, str | None] = {}
# A challenger that could not be loaded is not asked for again for a while: every batch in between
# records the same failure without paying the registry's timeouts again.
_shadow_failures: dict[tuple[str, str], tuple[float, str]] = {}
SHADOW_RETRY_SECONDS = 60.0


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
    now, pinned first with the challenger of the same registry read (a parallel chunk or an
    earlier attempt may have pinned them already)."""
    return pinned_models(engine, [row])[0]


def pinned_models(engine: Engine, rows: list[dict]) -> list[tuple[dict, LoadedModel]]:
    """`pinned_model` for several batches (a run of slots): one registry read and one statement pin
    all those not pinned yet; each keeps a version an earlier attempt pinned."""
    unpinned = [row["batch_id"] for row in rows if not row.get("model_version")]
    if unpinned:
        resolved = resolve_model()
        if resolved.pinned_by == "fallback":
            log.warning(
                "batch %s pinned to version %s without asking the registry", ", ".join(unpinned), resolved.version
            )
        else:
            notice_aliases(engine, resolved)
        challenger = resolved.challenger if resolved.challenger != resolved.version else None
        pinned = writes.pin_models(engine, unpinned, resolved.name, resolved.version, resolved.pinned_by, challenger)
        now_pinned = {row["batch_id"]: row for row in pinned}
        rows = [now_pinned.get(row["batch_id"], row) for row in rows]
    return [(row, model(row["model_name"], row["model_version"])) for row in rows]


def notice_aliases(engine: Engine, resolved: Resolved | None = None) -> None:
    """Take a change of the aliases this process sees to the record, where a move the project did not
    make becomes a `moved_outside` event (once, whichever process notices first). Never fails a batch."""
    settings = get_settings()
    try:
        resolved = resolved or resolve_model()
    except Exception as exc:  # the registry is down: nothing seen, nothing to compare
        log.debug("aliases not checked: %s", exc)
        return
    if resolved.pinned_by == "fallback":
        return
    seen = {CHALLENGER_ALIAS: resolved.challenger}
    name, kind, ref = parse_model_uri(settings.model_uri)
    if kind == "alias" and name == settings.MODEL_NAME:
        seen[ref] = resolved.version
    for alias, version in seen.items():
        if alias in _aliases_seen and _aliases_seen[alias] == version:
            continue
        try:
            found = moves.observe(settings, engine, alias, version)
        except Exception as exc:  # the database may be down; the next batch looks again
            log.warning("could not compare @%s with the record: %s", alias, redact(str(exc), settings))
            continue
        _aliases_seen[alias] = version
        if found is not None and found["action"] == "moved_outside":
            log.warning("@%s moved outside the project: %s", alias, found["reason"])


def shadow(name: str, challenger: str | None, production: str | None) -> Shadow | None:
    """The batch's challenger, loaded once per process like production, or why it cannot score."""
    if shadowed(challenger, production) is None:
        return None
    key = (name, challenger)
    failed = _shadow_failures.get(key)
    if failed is not None and time.monotonic() - failed[0] < SHADOW_RETRY_SECONDS:
        return Shadow(challenger, None, failed[1])
    try:
        loaded = _cache().get(name, challenger)
    except Exception as exc:  # refused, gone or unreachable: the batch goes on without it
        error = redact(f"challenger v{challenger} could not be loaded: {type(exc).__name__}: {exc}", get_settings())
        log.warning("%s", error)
        _shadow_failures[key] = (time.monotonic(), error)
        return Shadow(challenger, None, error)
    _shadow_failures.pop(key, None)
    return Shadow(challenger, loaded)


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
    _aliases_seen.clear()
    _shadow_failures.clear()
