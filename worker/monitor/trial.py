"""How well the monitor works, measured on simulated days of Chicago's real per-slot volumes.

For each world (calibrated, and changed by the knobs), every 5-minute slot of the simulated days
is generated as a scheduled batch would be (same generator, windows and volumes; its own seeds),
scored by the production version, and put through the very drift functions the
monitor runs on real batches; clock hours are tested as the monitor's hour windows are. Live
MAE is computed on the same rides against their true durations. No database or broker is
involved: this measures the statistics, `tests/integration/test_monitoring.py` the plumbing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from worker.monitor.drift import dataset_drift, reference_for_window
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import RIDE_COLUMNS, Window, World, expected_rides

SLOT_MINUTES = 5


@dataclass
class WorldResult:
    world: World
    slots: int = 0
    slots_flagged: int = 0
    hours: int = 0
    hours_flagged: int = 0
    hours_prediction_drift: int = 0
    rides: int = 0
    mae: float = 0.0
    column_flags: dict[str, int] = field(default_factory=dict)

    @property
    def slot_share(self) -> float:
        return self.slots_flagged / self.slots if self.slots else 0.0

    @property
    def hour_share(self) -> float:
        return self.hours_flagged / self.hours if self.hours else 0.0


def simulate(
    predict: Callable[[pd.DataFrame], np.ndarray],
    reference: pd.DataFrame,
    world: World,
    start: datetime,
    days: float,
    seed: int = 0,
) -> WorldResult:
    result = WorldResult(world)
    hours: dict[datetime, list[pd.DataFrame]] = {}
    errors = []
    for k in range(int(days * 24 * 60 / SLOT_MINUTES)):
        window_start = start + timedelta(minutes=SLOT_MINUTES * k)
        window_end = window_start + timedelta(minutes=SLOT_MINUTES)
        rides = generated_chunk(
            f"trial-{seed}-{k}",
            seed * 1_000_003 + k,
            0,
            expected_rides(window_start, SLOT_MINUTES),
            Window(window_start, window_end),
            world,
        )
        rides["predicted_duration"] = predict(rides[list(RIDE_COLUMNS)])
        rides["actual_duration"] = rides["trip_seconds"] / 60.0
        errors.append(rides["predicted_duration"].to_numpy() - rides["actual_duration"].to_numpy())
        compared, _ = reference_for_window(reference, window_start, window_end)
        found = dataset_drift(compared, rides)
        result.slots += 1
        result.slots_flagged += found.dataset_drift
        hours.setdefault(window_start.replace(minute=0), []).append(rides)
    for hour, parts in hours.items():
        compared, _ = reference_for_window(reference, hour, hour + timedelta(hours=1))
        found = dataset_drift(compared, pd.concat(parts, ignore_index=True))
        result.hours += 1
        result.hours_flagged += found.dataset_drift
        for column in found.columns:
            if column.drifted:
                result.column_flags[column.column] = result.column_flags.get(column.column, 0) + 1
                if column.column == "predicted_duration":
                    result.hours_prediction_drift += 1
    all_errors = np.concatenate(errors)
    result.rides = len(all_errors)
    result.mae = float(np.abs(all_errors).mean())
    return result


def monitoring_cost(
    predict: Callable[[pd.DataFrame], np.ndarray], reference: pd.DataFrame, rides: int = 2000, repeat: int = 5
) -> float:
    """Median seconds to summarise and drift-test one batch of `rides` (the monitor's computation)."""
    end = datetime(2026, 11, 20, 17, 0)
    frame = generated_chunk("cost", 1, 0, rides, Window(end - timedelta(minutes=5), end))
    frame["predicted_duration"] = predict(frame[list(RIDE_COLUMNS)])
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        compared, _ = reference_for_window(reference, end - timedelta(minutes=5), end)
        dataset_drift(compared, frame)
        times.append(time.perf_counter() - started)
    return float(np.median(times))
