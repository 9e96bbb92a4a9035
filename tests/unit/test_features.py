"""Feature engineering inside the model pipeline: right values for good rows, finite values for bad ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor

from worker.model.features import FEATURE_NAMES, MISSING, build_features, feature_pipeline
from worker.rides.generator import RIDE_COLUMNS, generate_rides
from worker.rides.geography import DISTANCE_MATRIX

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def ride(**changes) -> dict:
    base = {
        "pickup_community_area": 8,
        "dropoff_community_area": 32,
        "trip_start_timestamp": pd.Timestamp("2013-06-07 18:30:00"),  # a Friday
        "fare": 9.45,
        "trip_total": 12.45,
        "trip_miles": 2.0,
    }
    return {**base, **changes}


def features(*rows: dict) -> np.ndarray:
    return build_features(pd.DataFrame(list(rows)))


def test_known_row_gives_known_features():
    row = features(ride())[0]
    centroid = DISTANCE_MATRIX[7, 31]
    expected = {
        "pickup_area": 8,
        "dropoff_area": 32,
        "same_area": 0,
        "airport": 0,
        "centroid_miles": centroid,
        "trip_miles": 2.0,
        "recorded_to_centroid": 2.0 / centroid,
        "fare": 9.45,
        "meter_minutes": (9.45 - 3.25 - 1.80 * 2.0) / (0.20 / 0.6),  # 7.8 minutes
        "fare_per_mile": 9.45 / 2.0,
        "extras_and_tips": 3.0,
        "hour": 18.5,
        "hour_sin": np.sin(2 * np.pi * 18.5 / 24),
        "hour_cos": np.cos(2 * np.pi * 18.5 / 24),
        "day_of_week": 4,
    }
    assert set(expected) == set(FEATURE_NAMES)
    for name, value in expected.items():
        assert row[COL[name]] == pytest.approx(value), name
    assert row[COL["meter_minutes"]] == pytest.approx(7.8)


def test_shape_and_order():
    matrix = features(ride(), ride(), ride())
    assert matrix.shape == (3, len(FEATURE_NAMES))
    assert matrix.dtype == np.float64


def test_same_area_and_airport_flags():
    rows = features(
        ride(pickup_community_area=6, dropoff_community_area=6),
        ride(pickup_community_area=76),
        ride(dropoff_community_area=56),
    )
    assert rows[0, COL["same_area"]] == 1 and rows[0, COL["centroid_miles"]] == 0
    assert rows[0, COL["recorded_to_centroid"]] == MISSING  # no ratio to a zero distance
    assert list(rows[:, COL["airport"]]) == [0, 1, 1]


@pytest.mark.parametrize("bad_area", [None, np.nan, 0, 78, 99, -5, 7.5, "abc", ""])
def test_missing_unknown_or_out_of_range_areas_become_missing(bad_area):
    rows = features(ride(pickup_community_area=bad_area), ride(dropoff_community_area=bad_area))
    assert np.isfinite(rows).all()
    assert rows[0, COL["pickup_area"]] == MISSING and rows[0, COL["dropoff_area"]] == 32
    assert rows[1, COL["pickup_area"]] == 8 and rows[1, COL["dropoff_area"]] == MISSING
    for r in rows:
        assert r[COL["centroid_miles"]] == MISSING
        assert r[COL["recorded_to_centroid"]] == MISSING
        assert r[COL["same_area"]] == 0
        # The rest of the ride still counts.
        assert r[COL["trip_miles"]] == 2.0 and r[COL["fare"]] == 9.45 and r[COL["hour"]] == 18.5


def test_area_ids_given_as_text_or_float_are_understood():
    numeric = features(ride())[0]
    for pickup, dropoff in (("8", "32"), (8.0, 32.0)):
        np.testing.assert_array_equal(
            features(ride(pickup_community_area=pickup, dropoff_community_area=dropoff))[0], numeric
        )


def test_missing_trip_total_column():
    frame = pd.DataFrame([ride(), ride(fare=20.0)]).drop(columns=["trip_total"])
    matrix = build_features(frame)
    assert np.isfinite(matrix).all()
    assert (matrix[:, COL["extras_and_tips"]] == MISSING).all()
    assert list(matrix[:, COL["fare"]]) == [9.45, 20.0]


@pytest.mark.parametrize("column", ["fare", "trip_total", "trip_miles", "trip_start_timestamp"])
def test_nan_values_give_finite_features(column):
    matrix = features(ride(**{column: None}), ride(**{column: np.nan}), ride())
    assert np.isfinite(matrix).all()
    np.testing.assert_array_equal(matrix[2], features(ride())[0])  # the good row is unaffected


def test_nan_everywhere_gives_finite_features():
    row = {column: np.nan for column in RIDE_COLUMNS}
    matrix = features(row, ride())
    assert np.isfinite(matrix).all()
    flags = {COL["same_area"], COL["airport"]}
    for i, name in enumerate(FEATURE_NAMES):
        assert matrix[0, i] == (0.0 if i in flags else MISSING), name


def test_zero_miles_and_unparseable_values():
    rows = features(ride(trip_miles=0.0), ride(fare="nine dollars"), ride(trip_start_timestamp="not a time"))
    assert np.isfinite(rows).all()
    assert rows[0, COL["fare_per_mile"]] == MISSING
    assert rows[1, COL["fare"]] == MISSING
    assert rows[2, COL["hour"]] == MISSING and rows[2, COL["day_of_week"]] == MISSING


def test_timestamps_as_text_are_parsed():
    as_text = features(ride(trip_start_timestamp="2013-06-07T18:30:00"))[0]
    np.testing.assert_array_equal(as_text, features(ride())[0])


def test_input_frame_is_not_modified():
    frame = pd.DataFrame([ride(pickup_community_area=99), ride()])
    before = frame.copy()
    build_features(frame)
    pd.testing.assert_frame_equal(frame, before)


def test_pipeline_predicts_for_bad_rows_it_never_saw():
    train = generate_rides(3_000, seed=2)
    pipeline = feature_pipeline(RandomForestRegressor(n_estimators=5, max_depth=6, random_state=0))
    pipeline.fit(train[list(RIDE_COLUMNS)], train["trip_seconds"] / 60.0)
    bad = pd.DataFrame(
        [ride(), ride(pickup_community_area=np.nan), ride(dropoff_community_area=99), ride(fare=np.nan)]
    ).drop(columns=["trip_total"])
    predicted = pipeline.predict(bad)
    assert predicted.shape == (4,)
    assert np.isfinite(predicted).all() and (predicted > 0).all()
