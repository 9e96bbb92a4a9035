"""The world estimate that retraining builds on: from a few hours of observed rides, the generator's
speed and fare factors within about 1 %, whichever of them changed (and neither, when none did)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from worker.rides.generator import Window, World, expected_rides, generate_rides
from worker.rides.world_fit import estimate_world


def observed(world: World, hours: float, seed: int, start: datetime = datetime(2025, 3, 11, 17, 0)) -> pd.DataFrame:
    parts = []
    for k in range(int(hours * 12)):
        begin = start + timedelta(minutes=5 * k)
        rides = generate_rides(
            expected_rides(begin, 5), [seed, k], window=Window(begin, begin + timedelta(minutes=5)), world=world
        )
        parts.append(rides)
    frame = pd.concat(parts, ignore_index=True)
    frame["actual_duration"] = frame["trip_seconds"] / 60.0
    return frame


@pytest.mark.parametrize(
    "world",
    [World(), World(fare_factor=1.25), World(speed_factor=0.7), World(speed_factor=0.8, fare_factor=1.1)],
    ids=["calibrated", "fares+25%", "traffic-30%", "both"],
)
def test_the_world_of_three_observed_hours_is_found_within_one_percent(world: World) -> None:
    found = estimate_world(observed(world, 3, seed=1))
    assert found.speed_factor == pytest.approx(world.speed_factor, rel=0.01), found
    assert found.fare_factor == pytest.approx(world.fare_factor, rel=0.01), found


def test_two_thousand_night_rides_are_enough_for_two_percent() -> None:
    world = World(fare_factor=1.25)
    rides = observed(world, 12, seed=2, start=datetime(2025, 3, 12, 22, 0)).sample(2000, random_state=0)
    found = estimate_world(rides)
    assert found.fare_factor == pytest.approx(1.25, rel=0.02) and found.speed_factor == pytest.approx(1.0, rel=0.02)


def test_no_observed_rides_is_an_error_that_says_so() -> None:
    empty = observed(World(), 1, seed=3).iloc[:0]
    with pytest.raises(ValueError, match="no observed rides"):
        estimate_world(empty)
