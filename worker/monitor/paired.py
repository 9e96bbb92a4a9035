"""Is the challenger better than production? A paired comparison on the same rides.

Both versions scored every ride of the batches the challenger shadowed, so the fair question is
ride by ride: d = |challenger error| − |production error|. Its mean, with a 95 % t-interval
(n is in the hundreds to thousands, where the t-interval of a mean is sound even for skewed d),
says how many minutes the challenger saves per ride; the Wilcoxon signed-rank test on a random
sample of the pairs is a check that does not lean on the mean. The same function judges a
retrained version on its held-out rides and a challenger on live batches.

The verdicts' thresholds are named here once; `promote`, `retrain --promote`, the report, the
exporter and the policy use these functions, never their own copies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats
from sqlalchemy import Engine

from worker.store import evidence

MIN_PAIRED_OUTCOMES = 500  # fewer paired rides are too few to call (the CI of d is ~±0.1 min at 500)
PROMOTE_MARGIN = 0.02  # the challenger's MAE must be at least 2 % below production's, CI excluding 0
CONFIDENCE = 0.95
WILCOXON_SAMPLE = 5_000


@dataclass(frozen=True)
class PairedEvidence:
    challenger_version: str
    production_version: str
    outcomes: int
    production_mae: float | None
    challenger_mae: float | None
    mean_difference: float | None  # minutes per ride; negative: the challenger errs less
    ci_low: float | None
    ci_high: float | None
    wilcoxon_p: float | None
    first_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["first_at"] = self.first_at.isoformat() if self.first_at else None
        values["verdict"] = verdict(self)
        return values

    @property
    def relative_difference(self) -> float | None:
        if self.mean_difference is None or not self.production_mae:
            return None
        return self.mean_difference / self.production_mae


def favours_challenger(found: PairedEvidence, margin: float = PROMOTE_MARGIN) -> bool:
    """Enough paired rides, the interval below zero, and at least `margin` better than production."""
    return (
        found.outcomes >= MIN_PAIRED_OUTCOMES
        and found.ci_high is not None
        and found.ci_high < 0
        and found.relative_difference is not None
        and found.relative_difference <= -margin
    )


def says_worse(found: PairedEvidence) -> bool:
    """Enough paired rides and the interval above zero: the challenger errs more than production."""
    return found.outcomes >= MIN_PAIRED_OUTCOMES and found.ci_low is not None and found.ci_low > 0


def verdict(found: PairedEvidence) -> str:
    if found.outcomes < MIN_PAIRED_OUTCOMES:
        return f"too few paired outcomes ({found.outcomes} of {MIN_PAIRED_OUTCOMES})"
    if favours_challenger(found):
        return "challenger better"
    if says_worse(found):
        return "challenger worse"
    return "no clear difference"


def _interval(n: int, mean: float, variance: float) -> tuple[float | None, float | None]:
    if n < 2 or not math.isfinite(variance):
        return None, None
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * math.sqrt(max(variance, 0.0) / n)
    return float(mean - half), float(mean + half)


def _wilcoxon(production_error: np.ndarray, challenger_error: np.ndarray) -> float | None:
    difference = np.asarray(challenger_error, dtype=float) - np.asarray(production_error, dtype=float)
    if len(difference) < 10 or not np.any(difference):
        return None
    return float(stats.wilcoxon(difference, zero_method="wilcox").pvalue)


def from_errors(
    production_error: np.ndarray, challenger_error: np.ndarray, challenger: str, production: str
) -> PairedEvidence:
    """The comparison on rides both versions scored (absolute errors, minutes), e.g. a held-out split."""
    production_error = np.abs(np.asarray(production_error, dtype=float))
    challenger_error = np.abs(np.asarray(challenger_error, dtype=float))
    n = len(production_error)
    if n == 0:
        return PairedEvidence(challenger, production, 0, None, None, None, None, None, None)
    difference = challenger_error - production_error
    low, high = _interval(n, float(difference.mean()), float(difference.var(ddof=1)) if n > 1 else math.nan)
    sample = np.random.default_rng(0).permutation(n)[:WILCOXON_SAMPLE]
    return PairedEvidence(
        challenger,
        production,
        n,
        float(production_error.mean()),
        float(challenger_error.mean()),
        float(difference.mean()),
        low,
        high,
        _wilcoxon(production_error[sample], challenger_error[sample]),
    )


def live(
    engine: Engine, challenger: str, production: str, known_by_local: datetime, since: datetime | None = None
) -> PairedEvidence:
    """The comparison on live batches: every ride the challenger shadowed (since `since`, UTC) that
    production scored and whose outcome was observed by `known_by_local` (Chicago local)."""
    sums = evidence.paired_sums(engine, challenger, production, known_by_local, since)
    n = int(sums["n"] or 0)
    if n == 0:
        return PairedEvidence(challenger, production, 0, None, None, None, None, None, None)
    mean = float(sums["difference"]) / n
    variance = (float(sums["difference_squared"]) - n * mean * mean) / (n - 1) if n > 1 else math.nan
    low, high = _interval(n, mean, variance)
    sample = evidence.paired_sample(engine, challenger, production, known_by_local, since, limit=WILCOXON_SAMPLE)
    first_at = sums["first_at"]
    return PairedEvidence(
        challenger,
        production,
        n,
        float(sums["production_error"]) / n,
        float(sums["challenger_error"]) / n,
        mean,
        low,
        high,
        _wilcoxon(sample["production_error"].to_numpy(), sample["challenger_error"].to_numpy()),
        first_at=first_at,
    )


def refresh(
    engine: Engine, model_name: str, challenger: str, production: str, known_by_local: datetime
) -> PairedEvidence:
    """Compute the live comparison and store it as the one every reader shows."""
    found = live(engine, challenger, production, known_by_local)
    evidence.save_comparison(
        engine,
        {
            "challenger_version": challenger,
            "production_version": production,
            "model_name": model_name,
            "outcomes": found.outcomes,
            "production_mae": found.production_mae,
            "challenger_mae": found.challenger_mae,
            "mean_difference": found.mean_difference,
            "ci_low": found.ci_low,
            "ci_high": found.ci_high,
            "wilcoxon_p": found.wilcoxon_p,
            "first_at": found.first_at,
        },
    )
    return found


def stored(row: dict[str, Any] | None) -> PairedEvidence | None:
    """A stored comparison (shadow_comparisons) as evidence."""
    if row is None:
        return None
    return PairedEvidence(
        str(row["challenger_version"]),
        str(row["production_version"]),
        int(row["outcomes"]),
        row["production_mae"],
        row["challenger_mae"],
        row["mean_difference"],
        row["ci_low"],
        row["ci_high"],
        row["wilcoxon_p"],
        first_at=row.get("first_at"),
    )
