"""The ride generator: deterministic per seed, well-formed, and shaped like Chicago's demand."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from worker.rides.cleaning import clean_trips
from worker.rides.generator import (
    GENERATED_COLUMNS,
    RIDE_COLUMNS,
    Window,
    expected_rides,
    generate_rides,
    recent_window,
)
from worker.rides.geography import N_AREAS
from worker.rides.meter import FLAG_PULL, INCREMENT


@pytest.fixture(scope="module")
def rides() -> pd.DataFrame:
    return generate_rides(20_000, seed=11)


def test_same_seed_gives_identical_rides():
    pd.testing.assert_frame_equal(generate_rides(5_000, seed=3), generate_rides(5_000, seed=3))


def test_same_seed_and_window_gives_identical_rides():
    window = Window(datetime(2025, 3, 14, 18, 0), datetime(2025, 3, 14, 18, 5))
    pd.testing.assert_frame_equal(generate_rides(500, 9, window), generate_rides(500, 9, window))


def test_different_seeds_give_different_rides():
    a, b = generate_rides(5_000, seed=3), generate_rides(5_000, seed=4)
    assert not a.equals(b)
    # Not just one column: every random column differs somewhere.
    for column in ("pickup_community_area", "dropoff_community_area", "trip_start_timestamp", "fare", "trip_miles"):
        assert (a[column] != b[column]).any(), column


def test_columns_and_dtypes(rides):
    assert tuple(rides.columns) == GENERATED_COLUMNS
    assert set(RIDE_COLUMNS) <= set(rides.columns)
    assert len(rides) == 20_000
    assert rides["pickup_community_area"].dtype == np.int64
    assert rides["dropoff_community_area"].dtype == np.int64
    assert rides["trip_seconds"].dtype == np.int64
    assert pd.api.types.is_datetime64_any_dtype(rides["trip_start_timestamp"])
    assert rides["trip_start_timestamp"].dt.tz is None  # Chicago-local naive times
    for column in ("fare", "trip_total", "trip_miles", "tips", "tolls", "extras"):
        assert rides[column].dtype == np.float64, column
    assert pd.api.types.is_string_dtype(rides["payment_type"]) or rides["payment_type"].dtype == object
    assert not rides[list(GENERATED_COLUMNS)].isna().any().any()


def test_trip_total_is_fare_plus_tips_tolls_extras(rides):
    parts = rides["fare"] + rides["tips"] + rides["tolls"] + rides["extras"]
    np.testing.assert_allclose(rides["trip_total"], parts, atol=0.005)
    assert (rides["tips"] >= 0).all() and (rides["tolls"] >= 0).all() and (rides["extras"] >= 0).all()
    # Some rides do carry each component, so the identity is not trivially fare == total.
    assert (rides["tips"] > 0).any() and (rides["extras"] > 0).any()


def test_areas_are_chicago_community_areas(rides):
    for column in ("pickup_community_area", "dropoff_community_area"):
        assert rides[column].between(1, N_AREAS).all(), column
    # Not stuck in one place: many areas occur, and most rides leave their pickup area.
    assert rides["pickup_community_area"].nunique() > 40
    assert (rides["pickup_community_area"] != rides["dropoff_community_area"]).mean() > 0.5


def test_values_are_physically_plausible(rides):
    assert rides["trip_seconds"].between(60, 3 * 3600).all()
    assert (rides["trip_miles"] >= 0.1).all() and (rides["trip_miles"] <= 60).all()
    assert (rides["fare"] >= FLAG_PULL).all()
    steps = (rides["fare"] - FLAG_PULL) / INCREMENT
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)  # the meter clicks in $0.20


def test_generated_rides_pass_the_real_data_cleaning_rules(rides):
    _, report = clean_trips(rides, source="generated")
    assert report.rows_read == len(rides)
    assert report.rows_kept >= 0.97 * len(rides), report.dropped


def test_window_puts_every_start_inside_it():
    start = datetime(2025, 3, 14, 18, 0)
    window = Window(start, start + timedelta(minutes=5))
    frame = generate_rides(3_000, seed=5, window=window)
    starts = frame["trip_start_timestamp"]
    assert (starts >= pd.Timestamp(window.start)).all()
    assert (starts < pd.Timestamp(window.end)).all()
    # Spread over the window, not piled on one instant.
    assert starts.nunique() > 200
    assert starts.max() - starts.min() > pd.Timedelta(minutes=4)


def test_recent_window_ends_at_the_given_time():
    end = datetime(2025, 6, 1, 12, 0)
    window = recent_window(15, end)
    assert window.end == end
    assert window.start == end - timedelta(minutes=15)


def test_without_window_starts_span_a_year_and_every_hour(rides):
    starts = rides["trip_start_timestamp"]
    assert starts.max() - starts.min() > pd.Timedelta(days=300)
    assert starts.dt.hour.nunique() == 24
    assert starts.dt.day_of_week.nunique() == 7


def test_expected_rides_scales_with_minutes():
    at = datetime(2025, 3, 14, 19, 0)
    five, ten, sixty = expected_rides(at, 5), expected_rides(at, 10), expected_rides(at, 60)
    assert five >= 1
    assert abs(ten - 2 * five) <= 1
    assert abs(sixty - 12 * five) <= 12
    assert sixty > ten > five


def test_expected_rides_friday_evening_is_busier_than_tuesday_night():
    friday_evening = datetime(2025, 3, 14, 19, 0)  # a Friday
    tuesday_night = datetime(2025, 3, 11, 4, 0)  # a Tuesday
    assert friday_evening.weekday() == 4 and tuesday_night.weekday() == 1
    assert expected_rides(friday_evening, 5) > 3 * expected_rides(tuesday_night, 5)


def test_expected_rides_is_chicago_scale():
    # ~27 million trips a year is ~260 per average 5 minutes; a busy slot is within a few times that.
    total_week = sum(expected_rides(datetime(2025, 3, 10) + timedelta(hours=h), 60) for h in range(168))
    assert 27_000_000 / 52 * 0.8 < total_week < 27_000_000 / 52 * 1.2


def test_zero_rides_gives_an_empty_frame_with_the_columns():
    frame = generate_rides(0, seed=1)
    assert frame.empty
    assert tuple(frame.columns) == GENERATED_COLUMNS


def test_negative_ride_count_raises():
    with pytest.raises(ValueError, match="must be >= 0"):
        generate_rides(-1, seed=1)
