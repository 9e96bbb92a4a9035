"""Drift of a batch against its model version's reference, with the tests and thresholds of
Evidently 0.7's defaults, so the figures compare with other tools.

- numeric columns: normed Wasserstein distance (W1 / std of the reference), drift at >= 0.1,
  when both samples are large (> 1000 rows); otherwise the two-sample Kolmogorov-Smirnov test,
  drift at p < 0.05;
- categorical columns (the community areas): Jensen-Shannon distance, drift at >= 0.1, when
  both samples are large; otherwise Pearson's chi-square test, drift at p < 0.05, in its
  two-sample form (homogeneity of the reference's and the batch's area counts: the reference
  of one hour of the day is a sample too), with areas expected fewer than 5 times pooled;
- the dataset drifts when at least DRIFT_SHARE of the counted columns do.

Evidently chooses the test by the reference's size alone. A 5-minute batch can hold 20 rides at
night, and a distance between 20 rides and a reference is mostly noise, so here both samples
must be large for a distance test; the p-value tests account for small samples themselves.

A batch is compared like with like: with the reference rows of the same hours of the day as
its window (Chicago's traffic, and so fares and durations, change through the day).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

CATEGORICAL = ("pickup_community_area", "dropoff_community_area")
NUMERIC = ("trip_miles", "fare", "trip_total", "predicted_duration")
# The model's input columns and its prediction count toward dataset drift ...
DATASET_COLUMNS = (*CATEGORICAL, *NUMERIC)
# ... the true duration (target drift) is reported on its own.
TARGET = "actual_duration"

LARGE = 1000
DISTANCE_THRESHOLD = 0.1
P_VALUE_THRESHOLD = 0.05
DRIFT_SHARE = 0.5
MIN_REFERENCE_ROWS = 300
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str  # Evidently's name of the test
    score: float | None  # the distance, or the p-value
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DatasetDrift:
    columns: list[ColumnDrift]
    counted: int
    drifted: int
    dataset_drift: bool


def numeric_drift(column: str, reference: pd.Series, current: pd.Series) -> ColumnDrift:
    ref = _finite(reference)
    cur = _finite(current)
    if len(ref) > LARGE and len(cur) > LARGE:
        norm = max(float(np.std(ref)), 0.001)
        score = float(wasserstein_distance(ref, cur)) / norm
        return ColumnDrift(column, "wasserstein", score, DISTANCE_THRESHOLD, score >= DISTANCE_THRESHOLD)
    if len(ref) == 0 or len(cur) == 0:
        return ColumnDrift(column, "ks", None, P_VALUE_THRESHOLD, False)
    p_value = float(ks_2samp(ref, cur).pvalue)
    return ColumnDrift(column, "ks", p_value, P_VALUE_THRESHOLD, p_value < P_VALUE_THRESHOLD)


def categorical_drift(column: str, reference: pd.Series, current: pd.Series) -> ColumnDrift:
    # Counted with numpy over the areas either sample has, in sorted order: pandas' value_counts and
    # reindex cost 4 ms a column, paid for every batch a backfill monitors.
    ref_values = reference.dropna().to_numpy(dtype="int64")
    cur_values = current.dropna().to_numpy(dtype="int64")
    n_ref, n_cur = len(ref_values), len(cur_values)
    categories = np.union1d(ref_values, cur_values)
    ref = np.bincount(np.searchsorted(categories, ref_values), minlength=len(categories)).astype(float)
    cur = np.bincount(np.searchsorted(categories, cur_values), minlength=len(categories)).astype(float)
    if n_ref > LARGE and n_cur > LARGE:
        score = float(jensenshannon(ref / n_ref, cur / n_cur))
        return ColumnDrift(column, "jensenshannon", score, DISTANCE_THRESHOLD, score >= DISTANCE_THRESHOLD)
    if n_ref == 0 or n_cur == 0:
        return ColumnDrift(column, "chisquare", None, P_VALUE_THRESHOLD, False)
    table = _pool_rare(np.vstack([ref, cur]))
    if table.shape[1] < 2:
        return ColumnDrift(column, "chisquare", None, P_VALUE_THRESHOLD, False)
    p_value = float(chi2_contingency(table, correction=False).pvalue)
    return ColumnDrift(column, "chisquare", p_value, P_VALUE_THRESHOLD, p_value < P_VALUE_THRESHOLD)


def _pool_rare(table: np.ndarray) -> np.ndarray:
    """Areas whose expected count is below MIN_EXPECTED in either sample go into one column (itself
    merged into the smallest kept one if still too small): the usual condition for the chi-square
    approximation, which rare areas in a 20-ride night batch would break."""
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    keep = (expected >= MIN_EXPECTED).all(axis=0)
    if keep.all():
        return table
    kept, rare = table[:, keep], table[:, ~keep].sum(axis=1, keepdims=True)
    rare_expected = expected[:, ~keep].sum(axis=1)
    if (rare_expected >= MIN_EXPECTED).all() or kept.shape[1] == 0:
        return np.hstack([kept, rare])
    smallest = int(np.argmin(kept.sum(axis=0)))
    kept = kept.copy()
    kept[:, smallest] += rare[:, 0]
    return kept


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return array[np.isfinite(array)]


def column_drift(column: str, reference: pd.DataFrame, current: pd.DataFrame) -> ColumnDrift:
    test = categorical_drift if column in CATEGORICAL else numeric_drift
    return test(column, reference[column], current[column])


def dataset_drift(reference: pd.DataFrame, current: pd.DataFrame, share: float = DRIFT_SHARE) -> DatasetDrift:
    """Every column's drift; the dataset drifts when at least `share` of DATASET_COLUMNS do.
    The target's drift is included (when the current rows have it) but never counted."""
    results = [column_drift(column, reference, current) for column in DATASET_COLUMNS]
    drifted = sum(r.drifted for r in results)
    if TARGET in current and TARGET in reference and current[TARGET].notna().any():
        results.append(column_drift(TARGET, reference, current))
    counted = len(DATASET_COLUMNS)
    return DatasetDrift(results, counted, drifted, drifted >= share * counted)


def reference_for_window(
    reference: pd.DataFrame, start: datetime | None, end: datetime | None
) -> tuple[pd.DataFrame, str]:
    """The reference rows of the hours of the day that [start, end) covers (widened by an hour on
    each side until there are MIN_REFERENCE_ROWS), and a label saying which."""
    if start is None or end is None:
        return reference, f"all hours ({len(reference)} rows)"
    hours = pd.to_datetime(reference["trip_start_timestamp"]).dt.hour.to_numpy()
    last = end - pd.Timedelta(microseconds=1) if end > start else end
    first_hour, last_hour = start.hour, last.hour
    span = (last_hour - first_hour) % 24
    for widen in range(12):
        wanted = {(first_hour - widen + k) % 24 for k in range(span + 1 + 2 * widen)}
        chosen = np.isin(hours, list(wanted))
        if chosen.sum() >= MIN_REFERENCE_ROWS or len(wanted) >= 24:
            break
    low, high = (first_hour - widen) % 24, (last_hour + widen) % 24
    label = f"hour {low:02d}" if low == high else f"hours {low:02d}-{high:02d}"
    return reference[chosen], f"{label} ({int(chosen.sum())} rows)"


def prediction_summary(predicted: pd.Series) -> dict[str, float | None]:
    values = _finite(predicted)
    if len(values) == 0:
        return {"prediction_mean": None, "prediction_p10": None, "prediction_p50": None, "prediction_p90": None}
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {
        "prediction_mean": float(values.mean()),
        "prediction_p10": float(p10),
        "prediction_p50": float(p50),
        "prediction_p90": float(p90),
    }


def missing_share(current: pd.DataFrame, columns: tuple[str, ...]) -> float:
    """Share of missing values over the given input columns."""
    if len(current) == 0:
        return 0.0
    return float(current[list(columns)].isna().to_numpy().mean())
