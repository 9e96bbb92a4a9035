"""A batch, as plain functions: plan chunks, generate or take rides, predict, write.

Everything that decides *what* a batch contains is a function of its id,
seed, chunk index, time window and world (worker/rides/batch_rides.py), so any
retry or redelivery recomputes the very same rows (same trip ids) and the
ledger in worker/store/writes.py keeps the second write out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from worker.model.registry import LoadedModel, Shadow
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import CALIBRATED, RIDE_COLUMNS, Window, World
from worker.settings import get_settings
from worker.store.monitoring import known_at
from worker.store.writes import ChunkWrite, write_batches, write_chunk

log = logging.getLogger(__name__)


@dataclass
class ChunkResult:
    write: ChunkWrite
    model_name: str
    model_version: str
    rows: int
    timings: dict[str, float] = field(default_factory=dict)
    shadow_version: str | None = None
    shadow_error: str | None = None

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
            "shadow_version": self.shadow_version,
            "shadow_error": self.shadow_error,
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
        """The stored plan; `chunk_size` (the worker's CHUNK_SIZE) only for batches recorded before
        the chunk size was stored, so a changed setting never changes a batch in flight."""
        rides = int(row["rides_requested"])
        chunk_size = int(row.get("chunk_size") or chunk_size)
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


def prediction_frame(
    rides: pd.DataFrame, minutes: np.ndarray, model: LoadedModel, batch_id: str | np.ndarray
) -> pd.DataFrame:
    """PREDICTION_COLUMNS, built in one go from the columns kept: copying every ride column, adding
    four and selecting took twice as long (1.5 against 0.8 ms for 1,000 rides)."""
    return pd.DataFrame(
        {
            **{name: rides[name].array for name in ("trip_id", *RIDE_COLUMNS)},
            "predicted_duration": np.round(minutes, 3),
            "model_name": model.name,
            "model_version": model.version,
            "batch_id": batch_id,
        }
    )


def outcome_frame(rides: pd.DataFrame, now: datetime | None = None) -> pd.DataFrame:
    """What actually happened to made-up rides: their true duration, known (observed) once the
    trip has ended, so that "what was known at time T" stays honest. `now` (UTC) is when the
    outcome arrives; a simulation of past days passes its own clock."""
    seconds = rides["trip_seconds"].to_numpy(dtype="int64")
    observed = pd.to_datetime(rides["trip_start_timestamp"]).to_numpy() + seconds.astype("timedelta64[s]")
    return pd.DataFrame(
        {
            "trip_id": rides["trip_id"].to_numpy(),
            "actual_duration": seconds / 60.0,
            "observed_at": observed,
            "source": "generated",
            # Kept as a time-zone-aware column (never an array of objects: that costs seconds per 100,000).
            "known_at": known_at(pd.Series(observed), now).array,
        }
    )


def shadow_step(rides: int, sample_rows: int) -> int:
    """Every how many rides the challenger scores one: 1 up to `sample_rows`, then just enough that
    at most that many are scored, spread evenly over the chunk."""
    return max(1, -(-rides // sample_rows))


def shadow_frame(
    rides: pd.DataFrame, shadow: Shadow | None, sample_rows: int | None = None
) -> tuple[pd.DataFrame | None, str | None, float]:
    """The challenger's predictions of these rides, or why there are none. A challenger that cannot
    load or predict never fails the batch: its error is returned to be recorded on the batch.

    Above `sample_rows` (SHADOW_SAMPLE_ROWS) rides, only every k-th ride is scored (the same ones on
    every retry); the others get no prediction (NaN) and no shadow row. The paired comparison needs
    hundreds of rides, not a big batch's every one, each of which cost as much again to predict and to
    store as production's own: shadow-scoring all of a 100,000-ride batch added 53-60 % to it."""
    if shadow is None:
        return None, None, 0.0
    if shadow.model is None:
        return None, shadow.error or f"challenger v{shadow.version} unavailable", 0.0
    started = time.perf_counter()
    step = shadow_step(len(rides), sample_rows or get_settings().SHADOW_SAMPLE_ROWS)
    try:
        minutes = predict_minutes(shadow.model, rides.iloc[::step] if step > 1 else rides)
    except Exception as exc:  # any failure of the challenger is the challenger's, never the batch's
        log.warning("challenger v%s failed to predict: %s: %s", shadow.version, type(exc).__name__, exc)
        return None, f"challenger v{shadow.version} failed to predict: {type(exc).__name__}: {exc}", 0.0
    durations = np.full(len(rides), np.nan)
    durations[::step] = np.round(minutes, 3)
    frame = pd.DataFrame(
        {
            "trip_id": rides["trip_id"].to_numpy(),
            "model_version": shadow.version,
            "predicted_duration": durations,
        }
    )
    return frame, None, time.perf_counter() - started


def scored(
    model: LoadedModel, rides: pd.DataFrame, shadow: Shadow | None, timings: dict
) -> tuple[np.ndarray, pd.DataFrame | None, str | None]:
    """Production's minutes and the challenger's shadow predictions (or why there are none), timed."""
    started = time.perf_counter()
    minutes = predict_minutes(model, rides)
    timings["predict"] = time.perf_counter() - started
    shadowed, shadow_error, shadow_seconds = shadow_frame(rides, shadow)
    if shadow is not None:
        timings["shadow"] = shadow_seconds
    return minutes, shadowed, shadow_error


def predict_and_write(
    engine: Engine,
    model: LoadedModel,
    batch_id: str,
    chunk_index: int,
    rides: pd.DataFrame,
    timings: dict,
    ids_are_new: bool = False,
    shadow: Shadow | None = None,
    now: datetime | None = None,
) -> ChunkResult:
    minutes, shadowed, shadow_error = scored(model, rides, shadow, timings)
    started = time.perf_counter()
    written = write_chunk(
        engine,
        batch_id,
        chunk_index,
        prediction_frame(rides, minutes, model, batch_id),
        ids_are_new,
        outcome_frame(rides, now) if "trip_seconds" in rides else None,
        shadow=shadowed,
        shadow_error=shadow_error,
    )
    timings["write"] = time.perf_counter() - started
    return ChunkResult(
        written,
        model.name,
        model.version,
        len(rides),
        timings,
        shadow_version=shadow.version if shadow else None,
        shadow_error=shadow_error,
    )


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
    shadow: Shadow | None = None,
    now: datetime | None = None,
    written_at: datetime | None = None,
) -> ChunkResult:
    """`written_at`: the batch's recorded first start, which its trip ids carry (see trip_ids)."""
    started = time.perf_counter()
    frame = generated_chunk(batch_id, seed, chunk_index, rides, window, world, written_at)
    timings = {"generate": time.perf_counter() - started}
    return predict_and_write(
        engine, model, batch_id, chunk_index, frame, timings, ids_are_new=True, shadow=shadow, now=now
    )


@dataclass(frozen=True)
class SlotRun:
    """One batch of a run of slots scored together: its id, its stored plan (one chunk) and its
    recorded first start, which its trip ids carry."""

    batch_id: str
    plan: Plan
    written_at: datetime


def run_generated_batches(
    engine: Engine,
    model: LoadedModel,
    runs: list[SlotRun],
    shadow: Shadow | None = None,
    now: datetime | None = None,
) -> list[ChunkResult]:
    """Several one-chunk generated batches (a backfill's run of slots), each exactly the rides its own
    run_batch would generate, scored by one model call and written in one transaction (write_batches).

    A slot of 260 rides cost 53 ms on its own, most of it fixed costs paid per call: the forest's
    predict (13 ms whatever the rows), a transaction of ten statements, pandas' frames. Paid once
    per run of slots instead, an hour of slots costs about what one slot did."""
    started = time.perf_counter()
    frames = [
        generated_chunk(run.batch_id, run.plan.seed, 0, run.plan.rides, run.plan.window, run.plan.world, run.written_at)
        for run in runs
    ]
    rides = pd.concat(frames, ignore_index=True)
    batch_ids = np.repeat(np.array([run.batch_id for run in runs], dtype=object), [len(frame) for frame in frames])
    timings = {"generate": time.perf_counter() - started}
    minutes, shadowed, shadow_error = scored(model, rides, shadow, timings)
    started = time.perf_counter()
    written = write_batches(
        engine,
        prediction_frame(rides, minutes, model, batch_ids),
        outcome_frame(rides, now),
        shadow=shadowed,
        shadow_error=shadow_error,
    )
    timings["write"] = time.perf_counter() - started
    sizes = {run.batch_id: len(frame) for run, frame in zip(runs, frames, strict=True)}
    return [
        ChunkResult(
            write,
            model.name,
            model.version,
            sizes[write.batch_id],
            timings,
            shadow_version=shadow.version if shadow else None,
            shadow_error=shadow_error,
        )
        for write in written
    ]


def parse_window(start: str, end: str) -> Window:
    return Window(datetime.fromisoformat(start), datetime.fromisoformat(end))
