"""The paired comparison that judges a challenger: its interval agrees with scipy's paired t-test, its
verdicts follow the documented thresholds, and the held-out split keeps every batch on one side."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from worker.lifecycle.retraining import split_by_time
from worker.monitor.paired import (
    MIN_PAIRED_OUTCOMES,
    PairedEvidence,
    favours_challenger,
    from_errors,
    says_worse,
    verdict,
)


def test_the_interval_is_scipys_paired_t_interval() -> None:
    rng = np.random.default_rng(0)
    production = np.abs(rng.normal(0, 2.0, 3000))
    challenger = np.abs(rng.normal(0, 1.8, 3000))
    found = from_errors(production, challenger, "2", "1")
    expected = stats.ttest_rel(challenger, production).confidence_interval(0.95)
    assert (found.ci_low, found.ci_high) == pytest.approx((expected.low, expected.high), rel=1e-9)
    assert found.mean_difference == pytest.approx(float(np.mean(challenger - production)))
    assert found.production_mae == pytest.approx(production.mean()) and found.outcomes == 3000
    assert found.wilcoxon_p < 0.05


def evidence(n: int, production: float, challenger: float, low: float, high: float) -> PairedEvidence:
    return PairedEvidence("2", "1", n, production, challenger, challenger - production, low, high, 0.01)


def test_the_verdicts_follow_the_documented_thresholds() -> None:
    better = evidence(MIN_PAIRED_OUTCOMES, 2.0, 1.9, -0.15, -0.05)  # 5 % better, interval below 0
    assert favours_challenger(better) and not says_worse(better) and verdict(better) == "challenger better"
    too_few = evidence(MIN_PAIRED_OUTCOMES - 1, 2.0, 1.5, -0.6, -0.4)
    assert not favours_challenger(too_few) and verdict(too_few).startswith("too few paired outcomes")
    marginal = evidence(5000, 2.0, 1.98, -0.03, -0.01)  # 1 %: real, but under the 2 % margin
    assert not favours_challenger(marginal) and verdict(marginal) == "no clear difference"
    unsure = evidence(5000, 2.0, 1.9, -0.2, 0.01)  # the interval reaches 0
    assert not favours_challenger(unsure)
    worse = evidence(5000, 2.0, 2.2, 0.1, 0.3)
    assert says_worse(worse) and verdict(worse) == "challenger worse"


def test_the_holdout_keeps_each_batch_on_one_side_and_takes_the_newest() -> None:
    start = datetime(2026, 12, 2, 12, tzinfo=UTC)
    rows = pd.DataFrame(
        {
            "batch_id": np.repeat([f"b{k}" for k in range(10)], 100),
            "known_at": np.repeat([start + timedelta(minutes=5 * k) for k in range(10)], 100),
            "trip_start_timestamp": np.repeat(pd.date_range("2026-12-02 06:00", periods=10, freq="5min"), 100),
        }
    )
    train, held = split_by_time(rows, 0.2)
    assert set(train["batch_id"]).isdisjoint(held["batch_id"])
    assert sorted(set(held["batch_id"])) == ["b8", "b9"] and len(train) + len(held) == len(rows)
    one = rows[rows["batch_id"] == "b0"].assign(
        trip_start_timestamp=pd.date_range("2026-12-02", periods=100, freq="1min")
    )
    train, held = split_by_time(one, 0.2)
    assert len(held) == 20 and train["trip_start_timestamp"].max() < held["trip_start_timestamp"].min()


def test_a_newest_batch_too_big_to_hold_out_whole_is_split_by_trip_start() -> None:
    """One 1,000,000-ride dispatch after a few small batches held out 99.7 % of the rows, whole."""
    start = datetime(2026, 12, 2, 12, tzinfo=UTC)
    sizes = [10, 10, 10, 970]
    rows = pd.DataFrame(
        {
            "batch_id": np.repeat([f"b{k}" for k in range(4)], sizes),
            "known_at": np.repeat([start + timedelta(minutes=5 * k) for k in range(4)], sizes),
            "trip_start_timestamp": pd.date_range("2026-12-02 06:00", periods=sum(sizes), freq="1min"),
        }
    )
    train, held = split_by_time(rows, 0.2)
    assert len(held) == 200 and len(train) == 800
    assert train["trip_start_timestamp"].max() < held["trip_start_timestamp"].min()
