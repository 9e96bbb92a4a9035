"""A batch, as plain functions: plan chunks, generate or take rides, predict, write.

Everything that decides *what* a batch contains is a function of its id,
seed, chunk index, time window and world (worker/rides/batch_rides.py), so any
retry or redelivery recomputes the very same rows (same trip ids) and the
ledger in worker/store/writes.py keeps the second write out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from worker.model.registry import LoadedModel
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import CALIBRATED, RIDE_COLUMNS, Window, World
from worker.store.writes import PREDICTION_COLUMNS, ChunkWrite, write_chunk


@dataclass
class ChunkResult:
    write: ChunkWrite
    model_name: str
    model_version: str
    rows: int
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "batch_id": self.write.batch_id,
            "chunk_index": self.write.chunk_index,
            "rows": self.rows,
            "rows_written": self.write.rows_written,
            "duplicate": self.write.duplicate,
            "batch_finished": self.write.batch_finished,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class Plan:
    """What a generated batch contains, as its first delivery stored it in batch_runs."""

    rides: int
    seed: int
    window: Window
    world: World
    sizes: list[int]

    @classmethod
    def of(cls, row: dict, chunk_size: int) -> Plan:
        rides = int(row["rides_requested"])
        return cls(
            rides=rides,
            seed=int(row["seed"]),
            window=Window(row["window_start"], row["window_end"]),
            world=World(float(row["speed_factor"]), float(row["fare_factor"])),
            sizes=chunk_sizes(rides, chunk_size),
        )


def chunk_sizes(rides: int, chunk_size: int) -> list[int]:
    full, rest = divmod(rides, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def predict_minutes(model: LoadedModel, rides: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.model.predict(rides[list(RIDE_COLUMNS)]), dtype=float)


def prediction_frame(rides: pd.DataFrame, minutes: np.ndarray, model: LoadedModel, batch_id: str) -> pd.DataFrame:
    frame = rides.copy()
    frame["predicted_duration"] = np.round(minutes, 3)
    frame["model_name"] = model.name
    frame["model_version"] = model.version
    frame["batch_id"] = batch_id
    return frame[list(PREDICTION_COLUMNS)]


def outcome_frame(rides: pd.DataFrame) -> pd.DataFrame:
    """What actually happened to made-up rides: their true duration, known (observed) once the
    trip has ended, so that "what was known at time T" stays honest."""
    seconds = rides["trip_seconds"].to_numpy(dtype="int64")
    return pd.DataFrame(
        {
            "trip_id": rides["trip_id"].to_numpy(),
            "actual_duration": seconds / 60.0,
            "observed_at": pd.to_datetime(rides["trip_start_timestamp"]) + pd.to_timedelta(seconds, unit="s"),
            "source": "generated",
        }
    )


def predict_and_write(
    engine: Engine,
    model: LoadedModel,
    batch_id: str,
    chunk_index: int,
    rides: pd.DataFrame,
    timings: dict,
    ids_are_new: bool = False,
) -> ChunkResult:
    started = time.perf_counter()
    minutes = predict_minutes(model, rides)
    timings["predict"] = time.perf_counter() - started
    started = time.perf_counter()
    written = write_chunk(
        engine,
        batch_id,
        chunk_index,
        prediction_frame(rides, minutes, model, batch_id),
        ids_are_new,
        outcome_frame(rides) if "trip_seconds" in rides else None,
    )
    timings["write"] = time.perf_counter() - started
    return ChunkResult(written, model.name, model.version, len(rides), timings)


def run_generated_chunk(
    engine: Engine,
    model: LoadedModel,
    *,
    batch_id: str,
    chunk_index: int,
    rides: int,
    seed: int,
    window: Window,
    world: World = CALIBRATED,
) -> ChunkResult:
    started = time.perf_counter()
    frame = generated_chunk(batch_id, seed, chunk_index, rides, window, world)
    timings = {"generate": time.perf_counter() - started}
    return predict_and_write(engine, model, batch_id, chunk_index, frame, timings, ids_are_new=True)


def parse_window(start: str, end: str) -> Window:
    return Window(datetime.fromisoformat(start), datetime.fromisoformat(end))
