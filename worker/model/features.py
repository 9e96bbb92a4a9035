"""Feature engineering that travels inside the model's scikit-learn Pipeline.

Keeping it in the Pipeline means the registry model takes the raw ride
columns, so the batch, the file scorer and anyone calling the registry
model directly all compute the same features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from worker.rides.geography import AIRPORT_AREAS, DISTANCE_MATRIX, N_AREAS
from worker.rides.meter import FLAG_PULL, PER_MILE, PER_MINUTE

MISSING = -1.0

FEATURE_NAMES = (
    "pickup_area",
    "dropoff_area",
    "same_area",
    "airport",
    "centroid_miles",
    "trip_miles",
    "recorded_to_centroid",
    "fare",
    "meter_minutes",
    "fare_per_mile",
    "extras_and_tips",
    "hour",
    "hour_sin",
    "hour_cos",
    "day_of_week",
)


def _area(values: pd.Series) -> np.ndarray:
    """Area ids as floats with MISSING for absent, non-numeric or out-of-range values."""
    area = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    valid = (area >= 1) & (area <= N_AREAS) & (area == np.round(area))
    return np.where(valid, area, np.nan)


def build_features(rides: pd.DataFrame) -> np.ndarray:
    """Raw ride columns -> the model's feature matrix (columns in FEATURE_NAMES order)."""
    pickup = _area(rides["pickup_community_area"])
    dropoff = _area(rides["dropoff_community_area"])
    known = ~np.isnan(pickup) & ~np.isnan(dropoff)
    centroid = np.full(len(rides), np.nan)
    centroid[known] = DISTANCE_MATRIX[pickup[known].astype(int) - 1, dropoff[known].astype(int) - 1]

    miles = pd.to_numeric(rides["trip_miles"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    fare = pd.to_numeric(rides["fare"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if "trip_total" in rides:
        total = pd.to_numeric(rides["trip_total"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    else:
        total = np.full(len(rides), np.nan)
    start = pd.to_datetime(rides["trip_start_timestamp"], errors="coerce")
    hour = (start.dt.hour + start.dt.minute / 60.0).to_numpy(dtype=float, na_value=np.nan)
    day = start.dt.day_of_week.to_numpy(dtype=float, na_value=np.nan)

    with np.errstate(divide="ignore", invalid="ignore"):
        # Minutes the fare would buy if every cent above the recorded distance were waiting time.
        meter_minutes = (fare - FLAG_PULL - PER_MILE * miles) / PER_MINUTE
        fare_per_mile = np.where(miles > 0, fare / miles, np.nan)
        recorded_to_centroid = np.where(centroid > 0.2, miles / centroid, np.nan)
    airport = np.isin(pickup, AIRPORT_AREAS) | np.isin(dropoff, AIRPORT_AREAS)

    matrix = np.column_stack(
        [
            pickup,
            dropoff,
            (pickup == dropoff).astype(float),
            airport.astype(float),
            centroid,
            miles,
            recorded_to_centroid,
            fare,
            meter_minutes,
            fare_per_mile,
            total - fare,
            hour,
            np.sin(2 * np.pi * hour / 24),
            np.cos(2 * np.pi * hour / 24),
            day,
        ]
    )
    return np.where(np.isfinite(matrix), matrix, MISSING)


def feature_step() -> FunctionTransformer:
    """The pipeline's first step, exactly as training builds it; loading compares a version's with it."""
    return FunctionTransformer(build_features)


def feature_pipeline(forest) -> Pipeline:
    return Pipeline([("features", feature_step()), ("forest", forest)])
