"""Generated rides against the cleaned real Chicago sample, with thresholds that bite.

`generate_rides(50_000, seed)` (seeds 42 and 7) is compared with the 6,012 trips of
`../shared/data/chicago_taxi_trips_2013_2014.csv` that pass the cleaning rules
(cleaning.load_real_trips). Measured values (seed 42; seeds 0, 1, 7 and 123 give
the range in brackets) and the thresholds the tests enforce:

| metric                               | measured | range over 5 seeds | threshold |
|--------------------------------------|----------|--------------------|-----------|
| trip_miles Wasserstein (miles)       | 0.424    | 0.412 - 0.441      | 0.70      |
| trip_miles KS statistic              | 0.042    | 0.041 - 0.045      | 0.075     |
| fare Wasserstein (USD)               | 1.166    | 1.137 - 1.200      | 1.90      |
| fare KS statistic                    | 0.036    | 0.034 - 0.039      | 0.065     |
| duration Wasserstein (minutes)       | 0.934    | 0.847 - 0.963      | 1.50      |
| duration KS statistic                | 0.076    | 0.072 - 0.078      | 0.12      |
| pickup area shares, TVD              | 0.009    | 0.008 - 0.010      | 0.018     |
| dropoff area shares, TVD             | 0.008    | 0.006 - 0.010      | 0.018     |
| hour-of-day shares, TVD              | 0.010    | 0.008 - 0.010      | 0.018     |

Wasserstein = earth mover's distance between the two empirical distributions
(in the column's unit); KS = the largest gap between the two empirical CDFs;
TVD = total variation distance, half the sum of absolute share differences.
`test_unrealistic_generators_fail` shows each threshold rejects a generator
that is wrong in the way it guards against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp, wasserstein_distance

from worker.rides.cleaning import load_real_trips
from worker.rides.generator import generate_rides
from worker.rides.geography import N_AREAS
from worker.rides.meter import FLAG_PULL, PER_MILE

SEED = 42
SEEDS = (42, 7)
N_RIDES = 50_000

THRESHOLDS = {
    "miles_wasserstein": 0.70,
    "miles_ks": 0.075,
    "fare_wasserstein": 1.90,
    "fare_ks": 0.065,
    "minutes_wasserstein": 1.50,
    "minutes_ks": 0.12,
    "pickup_area_tvd": 0.018,
    "dropoff_area_tvd": 0.018,
    "hour_tvd": 0.018,
}


def total_variation(a: pd.Series, b: pd.Series) -> float:
    pa, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    index = pa.index.union(pb.index)
    return 0.5 * float(np.abs(pa.reindex(index, fill_value=0.0) - pb.reindex(index, fill_value=0.0)).sum())


def realism_metrics(generated: pd.DataFrame, real: pd.DataFrame) -> dict[str, float]:
    gen_minutes = generated["trip_seconds"] / 60.0
    pairs = {
        "miles": (generated["trip_miles"], real["trip_miles"]),
        "fare": (generated["fare"], real["fare"]),
        "minutes": (gen_minutes, real["trip_minutes"]),
    }
    metrics: dict[str, float] = {}
    for name, (g, r) in pairs.items():
        metrics[f"{name}_wasserstein"] = float(wasserstein_distance(g, r))
        metrics[f"{name}_ks"] = float(ks_2samp(g, r).statistic)
    metrics["pickup_area_tvd"] = total_variation(generated["pickup_community_area"], real["pickup_community_area"])
    metrics["dropoff_area_tvd"] = total_variation(generated["dropoff_community_area"], real["dropoff_community_area"])
    metrics["hour_tvd"] = total_variation(
        pd.to_datetime(generated["trip_start_timestamp"]).dt.hour, real["trip_start_timestamp"].dt.hour
    )
    return metrics


def failures(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in metrics.items() if value > THRESHOLDS[name]}


@pytest.fixture(scope="module")
def real(real_sample_path) -> pd.DataFrame:
    trips, report = load_real_trips(real_sample_path)
    assert report.rows_kept > 5_000  # the comparison needs the whole cleaned sample
    return trips


@pytest.fixture(scope="module")
def generated() -> pd.DataFrame:
    return generate_rides(N_RIDES, SEED)


@pytest.fixture(scope="module", params=SEEDS, ids=lambda seed: f"seed{seed}")
def metrics(request, real) -> dict[str, float]:
    return realism_metrics(generate_rides(N_RIDES, request.param), real)


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_generated_rides_are_close_to_real_trips(metrics, name):
    assert metrics[name] <= THRESHOLDS[name], f"{name} = {metrics[name]:.4f} > {THRESHOLDS[name]}"


def test_real_sample_is_not_trivially_matched(real, generated):
    """The comparison is against real data with real spread, not a degenerate one."""
    assert real["trip_miles"].std() > 1.0 and real["trip_minutes"].std() > 3.0
    assert real["pickup_community_area"].nunique() > 40
    assert generated["trip_miles"].median() == pytest.approx(real["trip_miles"].median(), rel=0.25)
    assert (generated["trip_seconds"] / 60).median() == pytest.approx(real["trip_minutes"].median(), rel=0.25)


def _uniform_areas(frame: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame["pickup_community_area"] = rng.integers(1, N_AREAS + 1, len(frame))
    frame["dropoff_community_area"] = rng.integers(1, N_AREAS + 1, len(frame))
    return frame


def _miles_times_three(frame: pd.DataFrame) -> pd.DataFrame:
    frame["trip_miles"] = frame["trip_miles"] * 3
    return frame


def _distance_only_fare(frame: pd.DataFrame) -> pd.DataFrame:
    # The classic mistake: price by distance only and forget the meter's waiting time.
    frame["fare"] = FLAG_PULL + PER_MILE * frame["trip_miles"]
    return frame


def _minutes_times_one_and_a_half(frame: pd.DataFrame) -> pd.DataFrame:
    frame["trip_seconds"] = (frame["trip_seconds"] * 1.5).round().astype("int64")
    return frame


def _uniform_hours(frame: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    day = pd.to_datetime(frame["trip_start_timestamp"]).dt.floor("D")
    frame["trip_start_timestamp"] = day + pd.to_timedelta(rng.integers(0, 24 * 3600, len(frame)), unit="s")
    return frame


VARIANTS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], set[str]]] = {
    "uniform areas": (_uniform_areas, {"pickup_area_tvd", "dropoff_area_tvd"}),
    "miles x3": (_miles_times_three, {"miles_wasserstein", "miles_ks"}),
    "distance-only fare": (_distance_only_fare, {"fare_wasserstein", "fare_ks"}),
    "durations x1.5": (_minutes_times_one_and_a_half, {"minutes_wasserstein", "minutes_ks"}),
    "uniform hours": (_uniform_hours, {"hour_tvd"}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unrealistic_generators_fail(variant, generated, real):
    distort, expected_failures = VARIANTS[variant]
    broken = realism_metrics(distort(generated.copy()), real)
    failed = failures(broken)
    assert expected_failures <= set(failed), f"{variant}: only {failed} exceeded their thresholds"
