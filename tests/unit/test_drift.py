"""The drift tests and their thresholds (Evidently's names and defaults), the like-for-like
reference, and, on seeded simulated days, the false-alarm and detection rates they give."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from worker.model.reference import build_reference
from worker.model.training import TARGET, ForestParams, fit_pipeline, training_frame
from worker.monitor import drift
from worker.monitor.trial import simulate
from worker.rides.generator import RIDE_COLUMNS, World

RNG = np.random.default_rng(0)


def test_numeric_columns_use_normed_wasserstein_when_both_samples_are_large():
    ref = pd.Series(RNG.normal(10, 2, 5000))
    same = drift.numeric_drift("fare", ref, pd.Series(RNG.normal(10, 2, 3000)))
    moved = drift.numeric_drift("fare", ref, pd.Series(RNG.normal(10.5, 2, 3000)))  # a quarter of a std
    assert (same.method, same.threshold, same.drifted) == ("wasserstein", 0.1, False)
    assert same.score < 0.05
    assert moved.drifted and moved.score == pytest.approx(0.25, abs=0.04)


def test_numeric_columns_use_kolmogorov_smirnov_for_small_samples():
    ref = pd.Series(RNG.normal(10, 2, 5000))
    same = drift.numeric_drift("fare", ref, pd.Series(RNG.normal(10, 2, 200)))
    moved = drift.numeric_drift("fare", ref, pd.Series(RNG.normal(11, 2, 200)))
    assert (same.method, same.threshold) == ("ks", 0.05)
    assert not same.drifted and same.score > 0.05
    assert moved.drifted and moved.score < 1e-4


def test_areas_use_jensen_shannon_when_large_and_chi_square_when_small():
    areas = np.arange(1, 11)
    ref = pd.Series(RNG.choice(areas, 20000, p=np.full(10, 0.1)))
    large_moved = drift.categorical_drift(
        "pickup_community_area", ref, pd.Series(RNG.choice(areas, 5000, p=[0.5] + [0.5 / 9] * 9))
    )
    small_same = drift.categorical_drift("pickup_community_area", ref, pd.Series(RNG.choice(areas, 100)))
    small_moved = drift.categorical_drift("pickup_community_area", ref, pd.Series(np.full(100, 3)))
    assert (large_moved.method, large_moved.drifted) == ("jensenshannon", True)
    assert (small_same.method, small_same.drifted) == ("chisquare", False)
    assert small_moved.drifted and small_moved.score < 1e-6


def test_rare_areas_are_pooled_and_an_unseen_area_still_counts():
    ref = pd.Series([1] * 600 + [2] * 390 + [3] * 10)
    cur = pd.Series([1] * 12 + [2] * 8 + [77] * 10)  # half the batch in an area the reference never saw
    found = drift.categorical_drift("dropoff_community_area", ref, cur)
    assert found.method == "chisquare" and found.drifted


def test_empty_or_missing_columns_do_not_crash_and_do_not_drift():
    ref = pd.DataFrame({c: [1.0, 2.0, 3.0] for c in drift.DATASET_COLUMNS})
    cur = pd.DataFrame({c: [np.nan] for c in drift.DATASET_COLUMNS})
    found = drift.dataset_drift(ref, cur)
    assert found.drifted == 0 and not found.dataset_drift
    assert all(c.score is None for c in found.columns)


def test_dataset_drift_needs_half_the_counted_columns_and_never_counts_the_target():
    ref = pd.DataFrame(
        {
            "pickup_community_area": RNG.integers(1, 78, 4000),
            "dropoff_community_area": RNG.integers(1, 78, 4000),
            **{c: RNG.normal(10, 2, 4000) for c in drift.NUMERIC},
            "actual_duration": RNG.normal(10, 2, 4000),
        }
    )
    cur = ref.sample(3000, random_state=1).reset_index(drop=True)
    for column in ("fare", "trip_total"):
        cur[column] = cur[column] + 2  # a full std
    cur["actual_duration"] = cur["actual_duration"] + 5
    two = drift.dataset_drift(ref, cur)
    assert (two.counted, two.drifted, two.dataset_drift) == (6, 2, False)
    target = next(c for c in two.columns if c.column == "actual_duration")
    assert target.drifted  # reported on its own
    cur["predicted_duration"] = cur["predicted_duration"] + 2
    assert drift.dataset_drift(ref, cur).dataset_drift  # 3 of 6


def test_a_batch_is_compared_with_the_reference_of_its_hours():
    stamps = pd.date_range("2025-01-06", periods=24 * 50, freq="h")
    ref = pd.DataFrame({"trip_start_timestamp": np.repeat(stamps, 10)})
    chosen, label = drift.reference_for_window(ref, datetime(2026, 11, 20, 17, 0), datetime(2026, 11, 20, 17, 5))
    assert set(pd.to_datetime(chosen["trip_start_timestamp"]).dt.hour) == {17} and label == "hour 17 (500 rows)"
    chosen, label = drift.reference_for_window(ref, datetime(2026, 11, 20, 16, 0), datetime(2026, 11, 20, 17, 0))
    assert label == "hour 16 (500 rows)"  # the end is not included
    chosen, label = drift.reference_for_window(ref, datetime(2026, 11, 20, 23, 55), datetime(2026, 11, 21, 0, 5))
    assert set(pd.to_datetime(chosen["trip_start_timestamp"]).dt.hour) == {23, 0} and label == "hours 23-00 (1000 rows)"
    thin = ref[pd.to_datetime(ref["trip_start_timestamp"]).dt.hour != 4].iloc[::5]
    chosen, label = drift.reference_for_window(thin, datetime(2026, 11, 20, 4, 0), datetime(2026, 11, 20, 4, 5))
    assert len(chosen) >= drift.MIN_REFERENCE_ROWS and label.startswith("hours ")  # widened around an empty hour
    assert drift.reference_for_window(ref, None, None)[1] == f"all hours ({len(ref)} rows)"


@pytest.fixture(scope="module")
def small_model():
    frame, _, _ = training_frame(None, 60_000, 3)
    train, test = train_test_split(frame, test_size=0.3, random_state=3)
    model = fit_pipeline(train, ForestParams(n_estimators=10, max_depth=10), 3)
    reference = build_reference(test, model.predict(test[list(RIDE_COLUMNS)]), test[TARGET], 3)

    def predict(rides):
        return model.predict(rides[list(RIDE_COLUMNS)])

    return predict, reference


def test_seeded_day_calibrated_world_rarely_alarms_and_dearer_fares_always_do(small_model):
    """One simulated day per world (the full two-day figures: `python -m worker monitor-check`)."""
    predict, reference = small_model
    start = datetime(2026, 11, 17)
    calm = simulate(predict, reference, World(), start, days=1, seed=1)
    dear = simulate(predict, reference, World(1.0, 1.25), start, days=1, seed=1)
    slow = simulate(predict, reference, World(0.7, 1.0), start, days=1, seed=1)
    assert (calm.slots, calm.hours) == (288, 24)
    assert calm.slot_share <= 0.10 and calm.hours_flagged <= 2  # aims 5 % and 1 %; room for a 1-day sample
    assert dear.hour_share >= 0.95 and dear.slot_share >= 0.9
    assert slow.hours_prediction_drift / slow.hours >= 0.95  # slower traffic always shows in the predictions
    assert slow.mae > calm.mae * 1.2  # and in live accuracy
