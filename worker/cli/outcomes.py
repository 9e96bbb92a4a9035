"""`python -m worker outcomes FILE`: load real trip durations (trip_id, trip_seconds, as in the
city's export) so the monitor can tell how good the predictions were.

Validated like `score`: the whole file is read and checked first (streaming, bounded memory),
a file with any bad row is refused with reasons and nothing is written (unless
--skip-invalid), and the valid rows go in one transaction. Loading the same file twice
changes nothing; trip ids that were never predicted here are counted and reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from worker.cli.errors import UsageError
from worker.cli.file_reader import FileCheck, refuse_oversized, validated_chunks
from worker.model.reference import ReferenceCache
from worker.model.registry import configure_mlflow
from worker.monitor import quality
from worker.rides.generator import chicago_now
from worker.rides.validation import validate_outcomes
from worker.settings import Settings
from worker.store import monitoring


@dataclass
class OutcomeLoad(FileCheck):
    refused: bool = False
    written: int = 0
    already_known: int = 0
    unknown: int = 0
    disagreeing: int = 0  # already known with another duration: kept as stored
    disagreeing_shown: list[tuple[str, float, float]] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)


def read_outcomes(settings: Settings, path: str | Path) -> tuple[pd.DataFrame, OutcomeLoad]:
    """Every valid row of the file, and what was wrong with the others."""
    limit = settings.MAX_RIDES_PER_REQUEST
    refuse_oversized(path, limit, "outcomes")
    load = OutcomeLoad()
    parts = [checked.valid for checked in validated_chunks(path, validate_outcomes, load, limit)]
    valid = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["trip_id", "actual_duration"])
    return valid, load


def load_outcomes_file(settings: Settings, engine: Engine, path: str | Path, skip_invalid: bool) -> OutcomeLoad:
    valid, load = read_outcomes(settings, path)
    if load.invalid and not skip_invalid:
        load.refused = True
        return load
    if valid.empty:
        raise UsageError(f"{path}: none of its {load.total} rows is valid; nothing to load")
    counts = monitoring.load_outcomes(engine, valid)
    load.written, load.already_known, load.unknown = counts["written"], counts["already_known"], counts["unknown"]
    load.disagreeing, load.disagreeing_shown = counts["disagreeing_count"], counts["disagreeing"]
    load.batches = monitoring.batches_of_trips(engine, list(counts["trip_ids"]))
    return load


def refresh_quality(settings: Settings, engine: Engine, batch_ids: list[str]) -> list[str]:
    """Recompute the batches' live accuracy now; one line per batch for the user."""
    if not batch_ids:
        return []
    cache = ReferenceCache(lambda: configure_mlflow(settings))
    quality.update_quality(
        engine,
        chicago_now(),
        cache.heldout_mae,
        lambda name, version: cache.get(name, version, time.monotonic()),
        batch_ids=batch_ids,
    )
    lines = []
    for batch_id in batch_ids[:20]:
        metrics = monitoring.get_batch_metrics(engine, batch_id)
        if metrics is None or metrics["mae"] is None:
            lines.append(f"batch {batch_id}: not monitored yet (its live MAE follows on the next quality pass)")
            continue
        lines.append(
            f"batch {batch_id}: live MAE {metrics['mae']:.2f} min over {metrics['outcomes']} outcomes "
            f"(bias {metrics['bias']:+.2f} min), model v{metrics['model_version']}"
        )
    if len(batch_ids) > 20:
        lines.append(f"... and {len(batch_ids) - 20} more batches")
    return lines
