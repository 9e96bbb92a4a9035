"""Is production's live accuracy worse than it promised? One definition, for the alert, the report and
the policy.

Over the POLICY_WINDOW_OUTCOMES outcomes of rides it scored that became known to the service most
recently (by `ride_outcomes.known_at`: the later of the trip's end and the outcome's arrival, so a
backfill of past slots or a file of outcomes loaded today is fresh evidence; not the Chicago day,
not an alert's hold), a version is **degraded** when its MAE is more than ACCURACY_MARGIN above
the MAE it scored on held-out rides at training, over at least MIN_OUTCOMES outcomes. The exporter
exports exactly these figures (`taxi_live_mae_recent_seconds`, `taxi_live_recent_outcomes`,
`taxi_production_degraded`), the alert `TaxiLiveMaeWorseThanHeldout` fires on them with these
numbers (a unit test holds the rule file to these constants), and the report and the policy call
`degraded`.

Where did it begin? `change_point` walks the per-batch live accuracy (what monitoring stores per
batch) back from the newest batch whose outcomes are (nearly) all known, while batches are
degraded by the same margin, and returns the ride-window start of the earliest: rides from then on
come from the changed world.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from worker.store import events, evidence

ACCURACY_MARGIN = 0.25  # live MAE may be this much worse than held-out (25 %) before it counts as degraded
MIN_OUTCOMES = 500  # ... over at least this many outcomes: the MAE's standard error is then about 5 %
LOOKBACK = timedelta(days=7)  # a version with no outcome known in a week has no recent accuracy
MIN_BATCH_OUTCOMES = 20  # a batch with fewer known outcomes neither extends nor breaks a run ...
COMPLETE_SHARE = 0.9  # ... nor one with fewer than this share of its outcomes known: the first known are
# the short trips (a long trip ends later), whose small errors would hide a degradation (slower traffic
# was missed that way in lifecycle-check); about an hour after a slot, nine in ten of its trips have ended
HEALTHY_BATCHES_TO_STOP = 3  # this many healthy batches in a row end the walk back (one can be noise)


@dataclass(frozen=True)
class RecentAccuracy:
    version: str
    outcomes: int
    mae: float | None  # minutes
    heldout_mae: float | None
    oldest_known_at: datetime | None  # UTC: when the oldest outcome of the window became known

    @property
    def ratio(self) -> float | None:
        if self.mae is None or not self.heldout_mae:
            return None
        return self.mae / self.heldout_mae

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["oldest_known_at"] = self.oldest_known_at.isoformat() if self.oldest_known_at else None
        values["degraded"] = degraded(self)
        return values


def recent_accuracy(
    engine: Engine, version: str, heldout_mae: float | None, window: int, now: datetime
) -> RecentAccuracy:
    found = evidence.recent_errors(engine, version, window, now, since=now - LOOKBACK)
    return RecentAccuracy(version, int(found["outcomes"] or 0), found["mae"], heldout_mae, found["oldest"])


def production_recent(
    engine: Engine, model_name: str, alias: str, window: int, now: datetime, heldout_mae: float | None = None
) -> RecentAccuracy | None:
    """Production, as the record names it, over its most recently known outcomes: the figure that the
    report's warning and `status` show. The held-out MAE is the registry's when the caller has it,
    else the one the quality pass stored (neither reader waits on the registry)."""
    version = events.alias_on_record(engine, model_name, alias)
    if version is None:
        return None
    if heldout_mae is None:
        heldout_mae = evidence.stored_heldout_mae(engine, version)
    return recent_accuracy(engine, version, heldout_mae, window, now)


def degraded(recent: RecentAccuracy, margin: float = ACCURACY_MARGIN, min_outcomes: int = MIN_OUTCOMES) -> bool:
    return (
        recent.outcomes >= min_outcomes
        and recent.mae is not None
        and recent.heldout_mae is not None
        and recent.mae > (1 + margin) * recent.heldout_mae
    )


def describe(recent: dict[str, Any]) -> str:
    """One line for `status` from RecentAccuracy.as_dict(): the figure and the rule's verdict on it."""
    head = f"production v{recent['version']}"
    if not recent["outcomes"] or recent["mae"] is None:
        return f"{head}: no outcome known in the last {LOOKBACK.days} days"
    line = f"{head}: live MAE {recent['mae']:.2f} min over its {recent['outcomes']:,} most recently known outcomes"
    if recent["heldout_mae"] is None:
        return f"{line} (no held-out MAE on record to judge it by)"
    line += f", {recent['mae'] / recent['heldout_mae'] - 1:+.0%} against its held-out {recent['heldout_mae']:.2f}"
    if recent["outcomes"] < MIN_OUTCOMES:
        return f"{line}: too few to judge (under {MIN_OUTCOMES})"
    if recent["degraded"]:
        return f"{line}: DEGRADED (over {ACCURACY_MARGIN:.0%}: TaxiLiveMaeWorseThanHeldout)"
    return f"{line}: within {ACCURACY_MARGIN:.0%}"


def change_point(
    engine: Engine, version: str, heldout_mae: float, until_local: datetime, margin: float = ACCURACY_MARGIN
) -> datetime | None:
    """The Chicago-local start of the earliest batch of the newest run of degraded batches of `version`
    (None when the newest batches are not degraded)."""
    batches = evidence.batch_accuracy(engine, version, until_local)
    limit = (1 + margin) * heldout_mae
    start = None
    healthy = 0
    for row in batches.itertuples():
        if row.outcomes is None or row.outcomes < max(MIN_BATCH_OUTCOMES, COMPLETE_SHARE * (row.rows or 0)):
            continue
        if row.mae > limit:
            start = row.window_start
            healthy = 0
        else:
            healthy += 1
            if start is not None and healthy >= HEALTHY_BATCHES_TO_STOP:
                break
            if start is None and healthy >= HEALTHY_BATCHES_TO_STOP:
                return None
    return start
