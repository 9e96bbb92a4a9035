"""The community-area table: complete, and where the real sample says the areas are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from worker.rides.geography import (
    AIRPORT_AREAS,
    AREA_IDS,
    AREA_NAMES,
    COMMUNITY_AREAS,
    DISTANCE_MATRIX,
    LATITUDE,
    LONGITUDE,
    N_AREAS,
    centroid_distance_miles,
    haversine_miles,
)

MAX_CENTROID_OFFSET_MILES = 1.5


def test_all_77_areas_present_once():
    assert N_AREAS == 77
    assert sorted(AREA_IDS.tolist()) == list(range(1, 78))
    assert list(AREA_IDS) == list(range(1, 78))  # row i is area i + 1, which the matrices rely on
    assert len(set(AREA_NAMES.values())) == 77
    assert AREA_NAMES[32] == "Loop" and AREA_NAMES[76] == "O'Hare" and AREA_NAMES[8] == "Near North Side"


def test_centroids_lie_in_chicago():
    assert (LATITUDE > 41.64).all() and (LATITUDE < 42.03).all()
    assert (LONGITUDE > -87.95).all() and (LONGITUDE < -87.52).all()


def test_airports():
    assert set(AIRPORT_AREAS) == {76, 56}


def test_haversine_known_distance():
    # One degree of latitude is ~69 miles everywhere.
    assert haversine_miles(41.0, -87.6, 42.0, -87.6) == pytest.approx(69.1, abs=0.1)
    # Loop to O'Hare: 0.100 deg north (6.9 mi) and 0.276 deg west (14.2 mi at 41.9 N), ~15.8 miles.
    assert centroid_distance_miles([32], [76])[0] == pytest.approx(15.8, abs=0.3)


def test_distance_matrix_is_a_metric_on_the_areas():
    assert DISTANCE_MATRIX.shape == (77, 77)
    np.testing.assert_allclose(np.diag(DISTANCE_MATRIX), 0.0, atol=1e-9)
    np.testing.assert_allclose(DISTANCE_MATRIX, DISTANCE_MATRIX.T, atol=1e-9)
    off_diagonal = DISTANCE_MATRIX[~np.eye(77, dtype=bool)]
    assert (off_diagonal > 0.2).all()  # no two areas share a centroid
    assert off_diagonal.max() < 30  # Chicago is ~25 miles end to end
    pickup, dropoff = np.array([1, 32, 76]), np.array([77, 8, 56])
    np.testing.assert_allclose(centroid_distance_miles(pickup, dropoff), DISTANCE_MATRIX[pickup - 1, dropoff - 1])


def _sample_centroids(path) -> pd.DataFrame:
    """The most common (census tract or area) centroid the real sample records for each area."""
    raw = pd.read_csv(path)
    sides = []
    for side in ("pickup", "dropoff"):
        columns = [f"{side}_community_area", f"{side}_centroid_latitude", f"{side}_centroid_longitude"]
        part = raw[columns].dropna()
        part.columns = ["area", "lat", "lon"]
        sides.append(part)
    points = pd.concat(sides)
    counts = points.groupby(["area", "lat", "lon"]).size().reset_index(name="n")
    return counts.sort_values("n", ascending=False).drop_duplicates("area").sort_values("area")


def test_centroids_match_the_real_sample(real_sample_path):
    sample = _sample_centroids(real_sample_path)
    assert len(sample) >= 60  # the sample covers most areas, so this checks most of the table
    index = sample["area"].astype(int).to_numpy() - 1
    offsets = haversine_miles(sample["lat"].to_numpy(), sample["lon"].to_numpy(), LATITUDE[index], LONGITUDE[index])
    far = {
        int(area): round(float(miles), 2)
        for area, miles in zip(sample["area"], offsets, strict=True)
        if miles > MAX_CENTROID_OFFSET_MILES
    }
    assert not far, f"areas whose centroid is far from the sample's: {far}"
    assert np.median(offsets) < 0.5


def test_a_swapped_centroid_would_be_caught(real_sample_path):
    """The check above bites: exchanging two neighbouring areas' centroids moves them > 1.5 miles."""
    sample = _sample_centroids(real_sample_path).set_index("area")
    loop, lincoln_park = COMMUNITY_AREAS[31], COMMUNITY_AREAS[6]
    assert (loop[0], lincoln_park[0]) == (32, 7)
    lat, lon = sample.loc[32.0, "lat"], sample.loc[32.0, "lon"]
    assert haversine_miles(lat, lon, lincoln_park[2], lincoln_park[3]) > MAX_CENTROID_OFFSET_MILES
