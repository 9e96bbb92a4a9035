"""Training from generated rides or a file (`train`, `init`) and converting old versions (`convert-model`),
with the alias moved on the record (worker/lifecycle/moves.py) instead of behind the record's back."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from worker.lifecycle.moves import move_alias, record_registered
from worker.model.conversion import Conversion, convert_to_skops
from worker.model.registry import configure_mlflow
from worker.model.training import DEFAULT_FOREST, ForestParams, TrainResult, fit_and_register
from worker.settings import Settings
from worker.store.database import ensure_schema, get_engine, migrate


def _engine(settings: Settings, engine: Engine | None) -> Engine:
    """The record must be writable before anything is trained or moved. The embedded SQLite store
    (no DATABASE_URL) is created here, as `make run` would; a real database is migrated by `migrate`."""
    if engine is None and not settings.DATABASE_URL:
        migrate(settings.database_url)
    engine = engine or get_engine(settings.database_url)
    ensure_schema(engine)
    return engine


def train_and_register(
    settings: Settings,
    data: str | Path | None = None,
    rides: int = 200_000,
    seed: int = 42,
    force: bool = False,
    params: ForestParams = DEFAULT_FOREST,
    engine: Engine | None = None,
    actor: str | None = None,
) -> TrainResult:
    """Train, register, and move MODEL_ALIAS to the new version if it is not worse (or forced)."""
    engine = _engine(settings, engine)
    result = fit_and_register(settings, data=data, rides=rides, seed=seed, force=force, params=params)
    numbers = {
        "heldout_mae": round(result.mae, 4),
        "heldout_rmse": round(result.rmse, 4),
        "production_version": result.previous_version,
        "production_mae_same_rides": None if result.previous_mae is None else round(result.previous_mae, 4),
        "run_id": result.run_id,
    }
    record_registered(settings, engine, result.version, f"trained by `train`: {result.reason}", numbers, actor)
    if result.promoted:
        move_alias(
            settings,
            engine,
            alias=settings.MODEL_ALIAS,
            to_version=result.version,
            action="promoted",
            reason=f"train: {result.reason}",
            evidence=numbers,
            actor=actor,
        )
    configure_mlflow(settings).set_model_version_tag(
        settings.MODEL_NAME, result.version, "promoted", str(result.promoted).lower()
    )
    return result


def convert_model(settings: Settings, version: str | None = None, engine: Engine | None = None) -> Conversion:
    """Register a pickle version again as skops; the alias follows the copy, on the record."""
    engine = _engine(settings, engine)
    result = convert_to_skops(settings, version)
    if result.version is None:
        return result
    numbers = {"converted_from_version": result.source_version}
    record_registered(settings, engine, result.version, f"skops copy of version {result.source_version}", numbers)
    if result.promoted:
        move_alias(
            settings,
            engine,
            alias=settings.MODEL_ALIAS,
            to_version=result.version,
            action="converted",
            reason=f"convert-model: skops copy of version {result.source_version}, predicts exactly the same",
            evidence=numbers,
        )
    return result
