"""Which world do observed rides come from? The generator's two knobs, estimated from what was seen.

After a tariff change or a change in traffic, the service has observed only a few hours of the
new world, while a model must serve every hour of the week. The calibrated generator knows how
Chicago's demand, routes and speeds vary through the week; what changes in such events is how
fast cabs move (`speed_factor`) and what the meter charges (`fare_factor`). Both are read off the
observed rides against rides generated in a known world, like for like:

1. speed: the median of log(minutes) is compared within bins of recorded miles and hour of day
   (the same distance at the same hour); every speed is multiplied by the factor, so every
   duration is divided by it;
2. fare: with rides generated at the estimated speeds, the median of log(fare) is compared within
   bins of recorded miles and minutes; the factor multiplies the flag pull and both rates. (Against
   calibrated rides this would be biased: slower traffic changes which rides share a bin, through
   the under-recorded miles; at the right speeds it is not.)

Comparing like with like, not whole distributions, keeps the estimate within about 1 % from
2,000 observed rides (checked on generated worlds in tests/unit/test_world_fit.py); a 1 % error in
the fare factor costs a retrained model about 5 % in MAE, since the fare is its strongest clue. It
assumes the change is one of speeds or meter rates; a change of another kind shows as a retrained
version that does not beat production on held-out rides (worker/lifecycle/retraining.py checks).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from worker.rides.generator import FACTOR_RANGE, World, generate_rides

REFERENCE_RIDES = 300_000  # generated rides per comparison: ~0.5 s, enough for 600 bins of 30+
MIN_PER_BIN = 30
MILES_BINS = 25
HOUR_BINS = 24
MINUTES_BINS = 25


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


def _bin_keys(columns: list[np.ndarray], edges: list[np.ndarray]) -> np.ndarray:
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for values, cuts in zip(columns, edges, strict=True):
        key = key * (len(cuts) + 1) + np.searchsorted(cuts, values)
    return key


def _median_shift(
    reference: list[np.ndarray], reference_y: np.ndarray, observed: list[np.ndarray], observed_y: np.ndarray, bins
) -> float:
    """Median over observed rides of (y − the reference's median y in the ride's bin); bins with
    fewer than MIN_PER_BIN reference rides are left out."""
    edges = [_edges(values, n) for values, n in zip(reference, bins, strict=True)]
    reference_keys = _bin_keys(reference, edges)
    medians = pd.Series(reference_y).groupby(reference_keys).median()
    counts = pd.Series(reference_keys).value_counts()
    medians = medians[medians.index.isin(counts[counts >= MIN_PER_BIN].index)]
    expected = pd.Series(_bin_keys(observed, edges)).map(medians).to_numpy(dtype=float)
    shift = observed_y - expected
    shift = shift[np.isfinite(shift)]
    if shift.size == 0:
        raise ValueError("the observed rides share no bins with the generated ones")
    return float(np.median(shift))


def _log_miles(frame: pd.DataFrame) -> np.ndarray:
    return np.log(np.maximum(np.asarray(frame["trip_miles"], dtype=float), 0.1))


def _log_minutes(minutes) -> np.ndarray:
    return np.log(np.maximum(np.asarray(minutes, dtype=float), 1.0))


def _hour(frame: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(frame["trip_start_timestamp"]).dt.hour.to_numpy()


def estimate_world(observed: pd.DataFrame, seed: int = 0) -> World:
    """The world the observed rides (RIDE_COLUMNS + `actual_duration`, minutes) most likely came from."""
    observed = observed[(observed["actual_duration"] > 0) & (observed["fare"] > 0)]
    if observed.empty:
        raise ValueError("no observed rides to estimate a world from")
    low, high = FACTOR_RANGE
    minutes = _log_minutes(observed["actual_duration"])
    calibrated = generate_rides(REFERENCE_RIDES, [seed, 1])
    shift = _median_shift(
        [_log_miles(calibrated), _hour(calibrated)],
        _log_minutes(calibrated["trip_seconds"] / 60.0),
        [_log_miles(observed), _hour(observed)],
        minutes,
        (MILES_BINS, HOUR_BINS),
    )
    speed = float(np.clip(np.exp(-shift), low, high))
    moved = generate_rides(REFERENCE_RIDES, [seed, 2], world=World(speed_factor=speed))
    shift = _median_shift(
        [_log_miles(moved), _log_minutes(moved["trip_seconds"] / 60.0)],
        np.log(moved["fare"].to_numpy(dtype=float)),
        [_log_miles(observed), minutes],
        np.log(observed["fare"].to_numpy(dtype=float)),
        (MILES_BINS, MINUTES_BINS),
    )
    fare = float(np.clip(np.exp(shift), low, high))
    return World(speed_factor=round(speed, 3), fare_factor=round(fare, 3))
