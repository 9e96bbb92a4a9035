"""Realistic Chicago taxi rides, generated in bulk from the calibration tables.

Every step is a numpy operation over the whole batch (loops run over the 77
areas at most, never over rides), and the same seed always gives the same
rides, so a retried or redelivered batch writes exactly what the first try
would have written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, cached_property
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from worker.rides.calibration import load_calibration
from worker.rides.geography import DISTANCE_MATRIX, N_AREAS
from worker.rides.meter import meter_fare

CHICAGO = ZoneInfo("America/Chicago")

RIDE_COLUMNS = (
    "pickup_community_area",
    "dropoff_community_area",
    "trip_start_timestamp",
    "fare",
    "trip_total",
    "trip_miles",
)
GENERATED_COLUMNS = (*RIDE_COLUMNS, "trip_seconds", "payment_type", "tips", "tolls", "extras")

# Not in the calibration sample (it has no extras or tolls), so these are stated
# assumptions: Chicago charges $1 for each extra passenger and cabs rarely pay tolls.
EXTRAS_SHARE = 0.12
EXTRAS_VALUES = np.array([1.0, 2.0, 3.0])
EXTRAS_WEIGHTS = np.array([0.75, 0.2, 0.05])
TOLLS_SHARE = 0.002
TOLLS_VALUE = 2.0

# Prior weight that lets areas and pairs the sample never saw still occur.
AREA_PRIOR_COUNT = 0.5
OD_GRAVITY_WEIGHT = 2.0
OD_GRAVITY_MILES = 4.0

# Chicago's taxis made about 27 million trips in 2013 (order of magnitude from
# the city's portal), i.e. ~260 in an average 5-minute slot.
ANNUAL_TRIPS = 27_000_000


@dataclass(frozen=True)
class RideModel:
    """The calibration tables turned into the arrays the sampler draws from."""

    params: dict[str, Any]

    @cached_property
    def pickup_p(self) -> np.ndarray:
        counts = np.asarray(self.params["pickup_counts"], dtype=float) + AREA_PRIOR_COUNT
        return counts / counts.sum()

    @cached_property
    def od_cumulative(self) -> np.ndarray:
        """Row p-1: cumulative distribution of the dropoff area given pickup area p."""
        counts = np.zeros((N_AREAS, N_AREAS))
        for p, d, n in self.params["od_counts"]:
            counts[p - 1, d - 1] = n
        dropoff_share = counts.sum(axis=0) + AREA_PRIOR_COUNT
        gravity = dropoff_share[None, :] * np.exp(-DISTANCE_MATRIX / OD_GRAVITY_MILES)
        gravity *= OD_GRAVITY_WEIGHT / gravity.sum(axis=1, keepdims=True)
        probs = counts + gravity
        probs /= probs.sum(axis=1, keepdims=True)
        cumulative = np.cumsum(probs, axis=1)
        cumulative[:, -1] = 1.0
        return cumulative

    @cached_property
    def hour_of_week_p(self) -> np.ndarray:
        counts = np.asarray(self.params["hour_of_week_counts"], dtype=float) + AREA_PRIOR_COUNT
        return counts / counts.sum()

    def quantile_sampler(self, key: str, u: np.ndarray) -> np.ndarray:
        levels = np.asarray(self.params["quantile_levels"])
        return np.interp(u, levels, np.asarray(self.params[key]))


# The knobs `dispatch` and `backfill` take, so that monitoring can be shown a world that changed.
FACTOR_RANGE = (0.2, 5.0)


@dataclass(frozen=True)
class World:
    """How the city differs from the calibrated one: every speed x speed_factor (0.7 = a
    traffic jam), every meter rate x fare_factor (1.25 = a 25 % fare increase)."""

    speed_factor: float = 1.0
    fare_factor: float = 1.0

    def __post_init__(self) -> None:
        low, high = FACTOR_RANGE
        for name in ("speed_factor", "fare_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")


CALIBRATED = World()


@dataclass(frozen=True)
class Window:
    """Trips start uniformly in [start, end), both Chicago-local naive datetimes."""

    start: datetime
    end: datetime


@cache
def ride_model() -> RideModel:
    """One per process: its sampling tables are built on first use and kept."""
    return RideModel(load_calibration())


def chicago_now() -> datetime:
    return datetime.now(CHICAGO).replace(tzinfo=None)


def recent_window(minutes: float, end: datetime | None = None) -> Window:
    end = end or chicago_now()
    return Window(end - timedelta(minutes=minutes), end)


def expected_rides(at: datetime, minutes: float, model: RideModel | None = None) -> int:
    """How many rides Chicago's taxis start in `minutes` at this hour of the week."""
    model = model or ride_model()
    share = model.hour_of_week_p[at.weekday() * 24 + at.hour]
    per_minute = ANNUAL_TRIPS / (365 * 24 * 60) * share * 168
    return max(1, round(per_minute * minutes))


def _start_times(rng: np.random.Generator, n: int, model: RideModel, window: Window | None) -> np.ndarray:
    if window is not None:
        span = (window.end - window.start).total_seconds()
        offsets = rng.uniform(0.0, span, n)
        return np.datetime64(window.start, "s") + offsets.astype("timedelta64[s]")
    # No window (training data): a year of starts shaped by the hour-of-week demand.
    hour_of_week = rng.choice(168, size=n, p=model.hour_of_week_p)
    week = rng.integers(0, 52, n)
    monday = np.datetime64("2025-01-06T00:00:00", "s")  # a Monday
    seconds = week * 7 * 86400 + hour_of_week * 3600 + rng.integers(0, 3600, n)
    return monday + seconds.astype("timedelta64[s]")


def _dropoffs(rng: np.random.Generator, pickup_idx: np.ndarray, model: RideModel) -> np.ndarray:
    u = rng.random(pickup_idx.size)
    dropoff_idx = np.empty_like(pickup_idx)
    cumulative = model.od_cumulative
    for area in np.unique(pickup_idx):
        rows = pickup_idx == area
        dropoff_idx[rows] = np.searchsorted(cumulative[area], u[rows], side="right")
    return np.minimum(dropoff_idx, N_AREAS - 1)


def generate_rides(
    n: int,
    seed: int | list[int],
    window: Window | None = None,
    model: RideModel | None = None,
    world: World = CALIBRATED,
) -> pd.DataFrame:
    """`n` rides drawn with `seed`; starts in `window` if given, else across a year.

    `world` changes the city the rides come from (slower traffic, dearer meters) without
    changing the random draws, so the same seed gives the same trips in another world."""
    if n < 0:
        raise ValueError(f"ride count must be >= 0, got {n}")
    model = model or ride_model()
    params = model.params
    rng = np.random.default_rng(seed)

    starts = _start_times(rng, n, model, window)
    hours = (starts.astype("datetime64[h]").astype(np.int64) % 24).astype(np.int64)

    pickup_idx = rng.choice(N_AREAS, size=n, p=model.pickup_p)
    dropoff_idx = _dropoffs(rng, pickup_idx, model)

    # True distance: centroid distance times a circuity factor, or a short hop inside one area.
    straight = DISTANCE_MATRIX[pickup_idx, dropoff_idx]
    same = pickup_idx == dropoff_idx
    slope, intercept, sigma = params["circuity_log_ratio"]
    log_ratio = intercept + slope * np.log(np.maximum(straight, 0.1)) + sigma * rng.standard_normal(n)
    mu, sd = params["intra_area_log_miles"]
    intra = np.exp(mu + sd * rng.standard_normal(n))
    miles = np.clip(np.where(same, intra, straight * np.exp(log_ratio)), 0.1, 60.0)

    # Duration: speed depends on the hour and grows with distance (longer trips use expressways).
    log_speed = (
        np.asarray(params["speed_hour_intercepts"])[hours]
        + params["speed_log_miles_slope"] * np.log(miles)
        + params["speed_sigma"] * rng.standard_normal(n)
    )
    speed = np.clip(np.exp(log_speed) * world.speed_factor, 0.5, 60.0)
    minutes = np.clip(miles / speed * 60.0, 1.0, 180.0)

    # Meter: a speed-dependent share of the minutes is crawled and charged as time.
    m_slope, m_intercept, m_sigma = params["waiting_logit_vs_log_speed"]
    logit = m_intercept + m_slope * np.log(speed) + m_sigma * rng.standard_normal(n)
    waiting_minutes = minutes / (1.0 + np.exp(-logit))
    crawled_miles = np.minimum(params["crawl_speed_mph"] / 60.0 * waiting_minutes, miles)
    fare = meter_fare(miles - crawled_miles, waiting_minutes, world.fare_factor)

    # Recorded distance: some meters record a small fraction of the true miles (seen in the real data).
    under = rng.random(n) < params["under_recorded_share"]
    kept = model.quantile_sampler("under_recorded_kept_quantiles", rng.random(n))
    recorded_miles = np.maximum(np.round(np.where(under, miles * kept, miles), 1), 0.1)

    kinds = list(params["payment_share"])
    shares = np.asarray([params["payment_share"][k] for k in kinds])
    payment_idx = rng.choice(len(kinds), size=n, p=shares / shares.sum())
    tipped_share = np.asarray([params["tipped_share_by_payment"].get(k, 0.0) for k in kinds])[payment_idx]
    tip_pct = model.quantile_sampler("card_tip_pct_quantiles", rng.random(n))
    tips = np.where(rng.random(n) < tipped_share, np.round(fare * tip_pct, 2), 0.0)
    extras = np.where(rng.random(n) < EXTRAS_SHARE, rng.choice(EXTRAS_VALUES, size=n, p=EXTRAS_WEIGHTS), 0.0)
    tolls = np.where(rng.random(n) < TOLLS_SHARE, TOLLS_VALUE, 0.0)

    return pd.DataFrame(
        {
            "pickup_community_area": pickup_idx + 1,
            "dropoff_community_area": dropoff_idx + 1,
            "trip_start_timestamp": starts,
            "fare": fare,
            "trip_total": np.round(fare + tips + tolls + extras, 2),
            "trip_miles": recorded_miles,
            "trip_seconds": np.round(minutes * 60.0).astype(np.int64),
            "payment_type": np.asarray(kinds, dtype=object)[payment_idx],
            "tips": tips,
            "tolls": tolls,
            "extras": extras,
        }
    )
