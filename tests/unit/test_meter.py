"""The 2013-2014 Chicago meter: $3.25 flag pull, $1.80 a mile, $0.20 per 36 s waiting, $0.20 clicks.

Expected fares below are worked out by hand from those rates: the charge is
$1.80 x miles + $0.20 x (seconds waiting / 36), rounded DOWN to whole $0.20
clicks, plus the flag pull.
"""

from __future__ import annotations

import numpy as np
import pytest

from worker.rides.meter import FLAG_PULL, INCREMENT, PER_MILE, PER_MINUTE, meter_fare


def fare(miles: float, minutes: float) -> float:
    return float(meter_fare(np.array([miles]), np.array([minutes]))[0])


def test_rates_are_chicago_2013():
    assert FLAG_PULL == 3.25
    assert PER_MILE == 1.80
    assert round(PER_MINUTE * 0.6, 12) == 0.20  # $0.20 per 36 seconds
    assert INCREMENT == 0.20
    # Crossover speed at which distance and time cost the same: 11.1 mph.
    crossover_mph = PER_MINUTE * 60 / PER_MILE
    assert 11.10 < crossover_mph < 11.12


def test_zero_distance_and_time_is_the_flag_pull():
    assert fare(0.0, 0.0) == 3.25


@pytest.mark.parametrize(
    ("miles", "minutes", "expected"),
    [
        (1 / 9, 0.0, 3.45),  # one 1/9-mile click
        (0.1, 0.0, 3.25),  # 0.18 is less than a click: no charge yet
        (1.0, 0.0, 5.05),  # 9 clicks = $1.80
        (2.5, 0.0, 7.65),  # 22.5 clicks -> 22 = $4.40
        (10.0, 0.0, 21.25),  # 90 clicks = $18.00
        (0.0, 0.6, 3.45),  # 36 s waiting = one click
        (0.0, 35 / 60, 3.25),  # 35 s is not yet a click
        (0.0, 10.0, 6.45),  # 600 s / 36 = 16.7 -> 16 clicks = $3.20
        (1.0, 3.0, 6.05),  # $1.80 + 5 waiting clicks ($1.00) = $2.80 = 14 clicks
        (3.2, 7.5, 11.45),  # $5.76 + $2.50 = $8.26 -> 41 clicks = $8.20
    ],
)
def test_known_fares(miles, minutes, expected):
    assert fare(miles, minutes) == pytest.approx(expected, abs=1e-9)


def test_fares_move_in_whole_twenty_cent_steps():
    rng = np.random.default_rng(0)
    miles, minutes = rng.uniform(0, 30, 10_000), rng.uniform(0, 60, 10_000)
    fares = meter_fare(miles, minutes)
    steps = (fares - FLAG_PULL) / INCREMENT
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    assert (fares >= FLAG_PULL).all()
    # Never more than the unrounded charge, never a whole click less.
    exact = FLAG_PULL + PER_MILE * miles + PER_MINUTE * minutes
    assert (fares <= exact + 1e-9).all()
    assert (fares > exact - INCREMENT).all()


def test_fare_grows_with_distance_and_with_waiting():
    grid = np.linspace(0, 20, 401)
    assert (np.diff(meter_fare(grid, np.zeros_like(grid))) >= 0).all()
    assert (np.diff(meter_fare(np.zeros_like(grid), grid)) >= 0).all()
    assert fare(5.0, 10.0) > fare(5.0, 0.0) > fare(0.0, 0.0)


def test_negative_inputs_charge_nothing():
    assert fare(-3.0, -5.0) == 3.25
    assert fare(-3.0, 0.6) == 3.45


def test_vectorised_over_arrays():
    result = meter_fare(np.array([0.0, 1.0, 2.5]), np.array([0.0, 0.0, 0.0]))
    assert result.shape == (3,)
    np.testing.assert_allclose(result, [3.25, 5.05, 7.65])
