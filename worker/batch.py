"""A batch, as plain functions: plan chunks, generate or take rides, predict, write.

Everything that decides *what* a batch contains is a function of its id,
seed, chunk index and time window, so any retry or redelivery recomputes the
very same rows (same trip ids) and the ledger in storage.write_chunk keeps
the second write out.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from worker.model.registry import LoadedModel
from worker.rides.generator import CALIBRATED, RIDE_COLUMNS, Window, World, generate_rides
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


def seed_for(batch_id: str) -> int:
    """A stable 63-bit seed from a batch id, so a batch without an explicit seed is still reproducible."""
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big") >> 1


def chunk_sizes(rides: int, chunk_size: int) -> list[int]:
    full, rest = divmod(rides, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def trip_ids(batch_id: str, chunk_index: int, n: int) -> np.ndarray:
    """`n` UUID-4-shaped ids (32 hex digits) drawn from (batch id, chunk): the same on every
    retry of this batch, different in another batch even if it reuses the seed."""
    raw = np.random.default_rng([seed_for(batch_id), chunk_index, 0x1D]).integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    return np.frombuffer(raw.tobytes().hex().encode(), dtype="S32").astype(str)


def predict_minutes(model: LoadedModel, rides: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.model.predict(rides[list(RIDE_COLUMNS)]), dtype=float)


def prediction_frame(rides: pd.DataFrame, minutes: np.ndarray, model: LoadedModel, batch_id: str) -> pd.DataFrame:
    frame = rides.copy()
    frame["predicted_duration"] = np.round(minutes, 3)
    frame["model_name"] = model.name
    frame["model_version"] = model.version
    frame["batch_id"] = batch_id
    return frame[list(PREDICTION_COLUMNS)]


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
    written = write_chunk(engine, batch_id, chunk_index, prediction_frame(rides, minutes, model, batch_id), ids_are_new)
    timings["write"] = time.perf_counter() - started
    return ChunkResult(written, model.name, model.version, len(rides), timings)


def generated_chunk(
    batch_id: str, seed: int, chunk_index: int, n: int, window: Window, world: World = CALIBRATED
) -> pd.DataFrame:
    rides = generate_rides(n, [seed, chunk_index], window=window, world=world)
    rides.insert(0, "trip_id", trip_ids(batch_id, chunk_index, n))
    return rides


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
