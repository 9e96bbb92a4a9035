"""Which training set recovers best after the world changed? Measured on simulated hours, no services.

`python -m worker retrain-check` plays what the service sees: a production model trained on the
calibrated generator, then from a given hour on a changed world (fares × 1.25, speeds × 0.7), of
which the service has observed the first hours at Chicago's per-slot volumes, outcomes included.
Each candidate training set (worker/lifecycle/retraining.py's designs, plus an oracle trained on
the true new world for scale) is trained on those observed rides and scored on the next, unseen
hour and on the 24 hours after it (every hour of the day, most of them never observed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from worker.lifecycle.retraining import GENERATED_RIDES, training_set
from worker.model.training import DEFAULT_FOREST, TARGET, ForestParams, fit_pipeline
from worker.rides.generator import RIDE_COLUMNS, Window, World, expected_rides, generate_rides

SLOT_MINUTES = 5
CHANGE_AT = datetime(2025, 3, 11, 17, 0)  # a Tuesday, as the evening peak starts


@dataclass(frozen=True)
class DesignScore:
    world: World
    design: str
    observed_rides: int
    estimated: World | None
    next_hour_mae: float
    next_day_mae: float
    fit_seconds: float


def slots(start: datetime, hours: float, world: World, seed: int) -> pd.DataFrame:
    """Every 5-minute slot's rides from `start` on, at Chicago's volume, with their true minutes."""
    parts = []
    for k in range(int(hours * 60 / SLOT_MINUTES)):
        begin = start + timedelta(minutes=SLOT_MINUTES * k)
        window = Window(begin, begin + timedelta(minutes=SLOT_MINUTES))
        parts.append(generate_rides(expected_rides(begin, SLOT_MINUTES), [seed, k], window=window, world=world))
    frame = pd.concat(parts, ignore_index=True)
    frame[TARGET] = frame["trip_seconds"] / 60.0
    frame["actual_duration"] = frame[TARGET]
    return frame


def _mae(model, frame: pd.DataFrame) -> float:
    return float(np.mean(np.abs(model.predict(frame[list(RIDE_COLUMNS)]) - frame[TARGET].to_numpy())))


def compare_designs(
    worlds: tuple[World, ...] = (World(fare_factor=1.25), World(speed_factor=0.7)),
    observed_hours: float = 3.0,
    params: ForestParams = DEFAULT_FOREST,
    seed: int = 0,
) -> tuple[dict[str, float], list[DesignScore]]:
    """Production's MAE before the change (calibrated next day) and after it, and each design's scores."""
    calibrated = generate_rides(200_000, [seed, 42])
    calibrated[TARGET] = calibrated["trip_seconds"] / 60.0
    production = fit_pipeline(calibrated, params, seed)
    after = CHANGE_AT + timedelta(hours=observed_hours)
    baseline = {"calibrated_day": _mae(production, slots(after + timedelta(hours=1), 24, World(), seed + 3))}
    scores = []
    for world in worlds:
        observed = slots(CHANGE_AT, observed_hours, world, seed + 1)
        next_hour = slots(after, 1, world, seed + 2)
        next_day = slots(after + timedelta(hours=1), 24, world, seed + 3)
        baseline[f"production_next_day {world}"] = _mae(production, next_day)
        designs = {name: training_set(observed, name, seed) for name in ("observed", "calibrated", "world")}
        oracle = generate_rides(GENERATED_RIDES + len(observed), [seed, 9], world=world)
        oracle[TARGET] = oracle["trip_seconds"] / 60.0
        designs["oracle (true world)"] = (oracle[[*RIDE_COLUMNS, TARGET]], world, len(oracle))
        for name, (frame, estimated, _) in designs.items():
            started = time.perf_counter()
            model = fit_pipeline(frame, params, seed)
            scores.append(
                DesignScore(
                    world,
                    name,
                    len(observed),
                    estimated if name == "world" else None,
                    _mae(model, next_hour),
                    _mae(model, next_day),
                    time.perf_counter() - started,
                )
            )
    return baseline, scores
