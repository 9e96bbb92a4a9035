"""The rides of a batch, as a function of its id, recorded start, seed, chunk and window alone.

So any retry or redelivery of a batch regenerates the very same rides with the very same trip
ids, and the monitor's trial can generate exactly what a scheduled batch would.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from worker.rides.generator import CALIBRATED, Window, World, generate_rides


def seed_for(batch_id: str) -> int:
    """A stable 63-bit seed from a batch id, so a batch without an explicit seed is still reproducible."""
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big") >> 1


# A trip id's 74 free bits after the time: the batch's mark, the chunk index, the ride's place.
MARK_BITS, CHUNK_BITS, PLACE_BITS = 30, 20, 24
MAX_CHUNKS = 1 << CHUNK_BITS  # chunks a batch may have


def batch_mark(batch_id: str) -> int:
    """30 bits of the batch id's SHA-256, so batches started in the same millisecond differ."""
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:4], "big") >> 2


def id_millis(at: datetime) -> int:
    """Milliseconds since the epoch; a naive time is UTC (SQLite returns the stored UTC start naive)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def trip_ids(batch_id: str, chunk_index: int, n: int, written_at: datetime | None = None) -> np.ndarray:
    """`n` time-ordered ids (32 hex digits, UUIDv7's layout) for the rides of a chunk: the batch's
    first start in milliseconds, then 30 bits of its id's hash, the chunk index and the ride's place.

    Recomputed from (batch id, its recorded start, chunk) alone, so every retry or redelivery of a
    batch writes the very same ids. The leading time makes the primary key's inserts append-only:
    random ids put each insert on a random page of an index that outgrows memory as history grows
    (a 100,000-row write slowed about 2x on 90 days of history). Two batches started in the same
    millisecond differ in the hash (30 bits); within a batch, chunk and place make every id unique.
    """
    if not 0 <= chunk_index < 1 << CHUNK_BITS:
        raise ValueError(f"chunk index {chunk_index} is outside the {CHUNK_BITS} bits a trip id gives it")
    if not 0 <= n <= 1 << PLACE_BITS:
        raise ValueError(f"{n:,} rides in one chunk: a trip id numbers at most {1 << PLACE_BITS:,}")
    high, low = id_halves(batch_id, chunk_index, written_at if written_at is not None else datetime.now(UTC))
    raw = np.empty((n, 2), dtype=">u8")
    raw[:, 0] = high
    raw[:, 1] = np.uint64(low) + np.arange(n, dtype=np.uint64)
    return np.frombuffer(raw.tobytes().hex().encode(), dtype="S32").astype(str)


def id_halves(batch_id: str, chunk_index: int, written_at: datetime) -> tuple[int, int]:
    """The two 64-bit halves of a chunk's first trip id; the ride's place is added to the second.
    One definition for the ids a worker writes and the history the benchmark makes in SQL."""
    mark = batch_mark(batch_id)
    high = (id_millis(written_at) << 16) | (0x7 << 12) | (mark >> 18)  # version 7
    low = (0b10 << 62) | ((mark & 0x3FFFF) << 44) | (chunk_index << PLACE_BITS)  # RFC 4122 variant
    return high, low


def generated_chunk(
    batch_id: str,
    seed: int,
    chunk_index: int,
    n: int,
    window: Window,
    world: World = CALIBRATED,
    written_at: datetime | None = None,
) -> pd.DataFrame:
    """`written_at` is the batch's recorded first start (batch_runs.started_at); without it, now,
    for rides that are never written twice (trials, simulations)."""
    rides = generate_rides(n, [seed, chunk_index], window=window, world=world)
    rides.insert(0, "trip_id", trip_ids(batch_id, chunk_index, n, written_at))
    return rides
