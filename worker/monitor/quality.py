"""Live accuracy: once trips have ended, how far the predictions were from what happened.

A batch's `outcomes`, `mae`, `rmse` and `bias` count only outcomes observed by the time of the
pass (trip start + duration, whether made up or loaded from a city export), and a daily
accuracy per model version is kept beside the version's held-out MAE and the always-the-median
baseline on the same rides. Target drift (the true duration against the reference) is stored
once all of a batch's outcomes are in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import date, datetime, timedelta

import numpy as np
from mlflow.exceptions import MlflowException
from sqlalchemy import Engine

from worker.monitor import paired
from worker.monitor.batches import ReferenceLookup
from worker.monitor.drift import TARGET, column_drift, reference_for_window
from worker.store import evidence, monitoring, writes

log = logging.getLogger(__name__)

# Asking the registry for a reference failed in a way a later pass can get past.
REGISTRY_ERRORS = (MlflowException, OSError)


class RegistryDown(RuntimeError):
    """The registry could not be asked now; what needed it is left for a later pass."""


# (model name, version) -> the MAE the version scored on held-out rides when trained, if known.
HeldoutLookup = Callable[[str, str], float | None]
LOOKBACK = timedelta(hours=6)  # made-up trips last at most 3 h; files get theirs through `outcomes`


def update_batch(
    engine: Engine,
    batch_id: str,
    known_at: datetime,
    references: ReferenceLookup | None = None,
    sample_rows: int | None = None,
) -> dict:
    """Fill the batch's quality columns from the outcomes known at `known_at` (Chicago local), and
    its target drift once all its outcomes are in (on at most `sample_rows` of its rides). A
    registry that cannot be asked for the reference leaves the target drift for a later pass
    (RegistryDown), never the quality figures. `changed` in the result says whether more outcomes
    are known than the last pass counted."""
    before = monitoring.get_batch_metrics(engine, batch_id)
    found = monitoring.batch_quality(engine, batch_id, known_at)
    values = {
        "outcomes": int(found["outcomes"] or 0),
        "mae": _float(found["mae"]),
        "rmse": math.sqrt(found["mse"]) if found["mse"] is not None else None,
        "bias": _float(found["bias"]),
    }
    monitoring.save_batch_quality(engine, batch_id, values)
    metrics = monitoring.get_batch_metrics(engine, batch_id)
    if references is not None and metrics and values["outcomes"] and values["outcomes"] >= (metrics["rows"] or 0):
        try:
            _target_drift(engine, batch_id, known_at, references, sample_rows)
        except REGISTRY_ERRORS as exc:
            raise RegistryDown(f"target drift of {batch_id} waits for the registry: {exc}") from exc
    return {**values, "changed": before is None or before["outcomes"] != values["outcomes"]}


def _target_drift(
    engine: Engine, batch_id: str, known_at: datetime, references: ReferenceLookup, sample_rows: int | None = None
) -> None:
    run = writes.get_batch(engine, batch_id)
    if run is None or not run["model_version"]:
        return
    reference = references(run["model_name"], run["model_version"])
    if reference is None or TARGET not in reference:
        return
    rows = monitoring.batch_rows(engine, batch_id, known_at, sample=sample_rows)
    compared, _ = reference_for_window(reference, run["window_start"], run["window_end"])
    found = column_drift(TARGET, compared, rows)
    monitoring.save_target_drift(
        engine,
        batch_id,
        {
            "column_name": found.column,
            "method": found.method,
            "score": found.score,
            "threshold": found.threshold,
            "drifted": found.drifted,
        },
    )


def update_days(engine: Engine, days: list[date], known_at: datetime, heldout: HeldoutLookup) -> int:
    """Recompute the daily accuracy of these days, per model version; returns rows written."""
    written = 0
    for day in days:
        frame = monitoring.day_outcomes(engine, day, known_at)
        for (name, version), part in frame.groupby(["model_name", "model_version"]):
            error = part["predicted_duration"].to_numpy(dtype=float) - part["actual_duration"].to_numpy(dtype=float)
            actual = part["actual_duration"].to_numpy(dtype=float)
            try:
                promised = heldout(str(name), str(version))
            except Exception as exc:  # the registry may be down; the figure is filled on a later pass
                log.warning("held-out MAE of %s v%s unknown for now: %s", name, version, exc)
                promised = None
            monitoring.save_daily_accuracy(
                engine,
                {
                    "day": day,
                    "model_version": str(version),
                    "outcomes": len(part),
                    "mae": float(np.abs(error).mean()),
                    "rmse": float(np.sqrt((error**2).mean())),
                    "bias": float(error.mean()),
                    "baseline_mae": float(np.abs(actual - np.median(actual)).mean()),
                    "heldout_mae": promised,
                },
            )
            written += 1
    return written


MAX_DAYS_PER_PASS = 31  # the newest days a pass recomputes; a file of old trips spreads over hundreds


def update_quality(
    engine: Engine,
    known_at: datetime,
    heldout: HeldoutLookup,
    references: ReferenceLookup | None = None,
    batch_ids: list[str] | None = None,
    now_utc: datetime | None = None,
    sample_rows: int | None = None,
) -> dict:
    """One pass: every recent batch still waiting for outcomes (or the given ones), then the days of
    those whose outcomes changed. After the first registry failure the pass stops asking the registry
    (each try can take many seconds against a host that drops packets) and leaves target drift for
    the next pass. Days are bounded: only those with new outcomes, at most MAX_DAYS_PER_PASS (the
    newest), so one scored file of 2013 trips does not make every pass recompute years of days."""
    if batch_ids is None:
        since = (now_utc or datetime.now().astimezone()) - LOOKBACK
        batch_ids = monitoring.batches_awaiting_outcomes(engine, since)
    waiting = 0
    changed = []
    for batch_id in batch_ids:
        try:
            if update_batch(engine, batch_id, known_at, references, sample_rows)["changed"]:
                changed.append(batch_id)
        except RegistryDown as exc:
            log.warning("%s; later batches of this pass skip their target drift", exc)
            references = None
            waiting += 1
            changed.append(batch_id)  # its quality figures were saved before the registry was asked
    days = monitoring.days_of_batches(engine, changed) if changed else []
    if len(days) > MAX_DAYS_PER_PASS:
        log.info(
            "live accuracy: %d days with new outcomes; this pass updates the newest %d", len(days), MAX_DAYS_PER_PASS
        )
        days = days[-MAX_DAYS_PER_PASS:]
    return {
        "batches": len(batch_ids),
        "changed": len(changed),
        "days": update_days(engine, days, known_at, heldout),
        "target_waiting": waiting,
    }


def sweep_unmonitored(
    engine: Engine,
    references: ReferenceLookup,
    known_at: datetime,
    now_utc: datetime,
    sample_rows: int | None,
    limit: int = 20,
    waits: tuple[type[BaseException], ...] = (MlflowException, OSError),
) -> dict:
    """Monitor recent finished batches whose monitoring was lost (or waits for the registry), at most
    `limit`. The first failure that means "the registry (or database) cannot be asked now" ends the
    sweep: every further batch would wait just as long (an MLflow call to a dead host can take a
    minute), and the next pass tries again."""
    from worker.monitor.batches import monitor_batch, record_failure

    found = monitoring.unmonitored_batches(engine, now_utc - LOOKBACK, now_utc - timedelta(minutes=2), limit=limit)
    swept = 0
    for batch_id in found:
        swept += 1
        try:
            monitor_batch(engine, batch_id, references, known_at, sample_rows=sample_rows)
        except waits as exc:
            record_failure(engine, batch_id, "waiting", f"{type(exc).__name__}: {exc}")
            log.warning("monitoring sweep stopped after %s: %s (%d batches left for the next pass)",
                        batch_id, exc, len(found) - swept)  # fmt: skip
            return {"swept": swept, "left": len(found) - swept}
        except Exception as exc:  # this batch's own problem: record it, go on
            record_failure(engine, batch_id, "failed", f"{type(exc).__name__}: {exc}")
    return {"swept": swept, "left": 0}


def _float(value: object) -> float | None:
    return None if value is None else float(value)


def refresh_comparisons(engine: Engine, model_name: str, known_at: datetime, since: datetime) -> int:
    """Recompute the paired comparison of every challenger that shadowed a batch finished since `since`
    (UTC) against the production version of those batches; returns how many were refreshed."""
    pairs = evidence.shadowed_versions(engine, since)
    for production, challenger in pairs:
        paired.refresh(engine, model_name, challenger, production, known_at)
    return len(pairs)
