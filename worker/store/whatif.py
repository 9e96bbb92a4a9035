"""What-if batches: batches sent with a world knob (`--speed-factor`/`--fare-factor` other than 1.0).

They stand for a world that really changed (a tariff rise, slower traffic), which is how monitoring
and the model's life cycle are tested, so by default they count like any other batch. An operator
who sends them only to try things out sets WHATIF_BATCHES=exclude, and then their rows leave every
production figure: live accuracy (batch, day, the rolling window of the alert and the policy), the
hour windows' drift and the alerts on it, the policy's retraining window and paired comparisons,
the report's figures and the exporter. `counts_in_production` is the one definition every reader
uses; WHATIF_SQL is the same test for the Grafana dashboards' SQL (a unit test holds them together).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select, true

from worker.settings import get_settings
from worker.store.schema import batch_runs

# The test in plain SQL, on a row of batch_runs (the dashboards' queries use exactly this text).
WHATIF_SQL = "(speed_factor <> 1 OR fare_factor <> 1)"
MODES = ("include", "exclude")


def is_whatif() -> ColumnElement[bool]:
    """True for a batch of batch_runs sent with a world knob other than the calibrated 1.0."""
    return or_(batch_runs.c.speed_factor != 1.0, batch_runs.c.fare_factor != 1.0)


def excluded(mode: str | None = None) -> bool:
    """Whether what-if batches stay out of production figures (WHATIF_BATCHES, unless `mode` says)."""
    mode = mode or get_settings().WHATIF_BATCHES
    if mode not in MODES:
        raise ValueError(f"WHATIF_BATCHES must be one of {', '.join(MODES)}, not {mode!r}")
    return mode == "exclude"


def counts_in_production(batch_id, mode: str | None = None) -> ColumnElement[bool]:
    """The condition "the batch of this batch_id column counts in production figures", for any table
    keyed by batch (ride_predictions, batch_metrics, batch_runs itself). Always true by default; with
    WHATIF_BATCHES=exclude, the batch must not be a what-if one. A NOT IN over the few what-if batches'
    ids (batch_runs' primary key, never null), so a query keeps its own indexes."""
    if not excluded(mode):
        return true()
    return batch_id.not_in(select(batch_runs.c.batch_id).where(is_whatif()))


def knobs_text(speed_factor: float, fare_factor: float) -> str:
    """The knobs of a batch as people read them, e.g. "fare ×1.25" ("" for a calibrated batch)."""
    parts = [f"{name} ×{value:g}" for name, value in (("speed", speed_factor), ("fare", fare_factor)) if value != 1]
    return ", ".join(parts)
