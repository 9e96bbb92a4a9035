"""The Chicago taxi meter, as it ran in 2013-2014.

A Chicago meter charges either distance or waiting time, never both at once:
above the crossover speed (PER_MINUTE / PER_MILE = 11.1 mph) each 1/9 mile
costs $0.20, below it each 36 seconds does ("drop-rate switching"). This is
why fare and miles together pin down the trip's duration, and why the
generator must reproduce it rather than price rides linearly.
"""

from __future__ import annotations

import numpy as np

FLAG_PULL = 3.25
PER_MILE = 1.80
PER_MINUTE = 0.20 / 0.6  # $0.20 per 36 seconds
INCREMENT = 0.20


def meter_fare(miles_moving: np.ndarray, minutes_waiting: np.ndarray, rate_factor: float = 1.0) -> np.ndarray:
    """Fare for the distance driven above, and the minutes spent below, the crossover speed.

    `rate_factor` scales the flag pull and both rates (a fare increase of 25 % is 1.25); the meter
    still clicks in $0.20 steps."""
    charge = rate_factor * (PER_MILE * np.maximum(miles_moving, 0.0) + PER_MINUTE * np.maximum(minutes_waiting, 0.0))
    # The meter clicks in whole $0.20 steps; the epsilon keeps exact multiples exact.
    steps = np.floor(charge / INCREMENT + 1e-9)
    return np.round(rate_factor * FLAG_PULL + INCREMENT * steps, 2)
