"""The rides of a batch, as a function of its id, seed, chunk and window alone.

So any retry or redelivery of a batch regenerates the very same rides with the very same trip
ids, and the monitor's trial can generate exactly what a scheduled batch would.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from worker.rides.generator import CALIBRATED, Window, World, generate_rides


def seed_for(batch_id: str) -> int:
    """A stable 63-bit seed from a batch id, so a batch without an explicit seed is still reproducible."""
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big") >> 1


def trip_ids(batch_id: str, chunk_index: int, n: int) -> np.ndarray:
    """`n` UUID-4-shaped ids (32 hex digits) drawn from (batch id, chunk): the same on every
    retry of this batch, different in another batch even if it reuses the seed."""
    raw = np.random.default_rng([seed_for(batch_id), chunk_index, 0x1D]).integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    return np.frombuffer(raw.tobytes().hex().encode(), dtype="S32").astype(str)


def generated_chunk(
    batch_id: str, seed: int, chunk_index: int, n: int, window: Window, world: World = CALIBRATED
) -> pd.DataFrame:
    rides = generate_rides(n, [seed, chunk_index], window=window, world=world)
    rides.insert(0, "trip_id", trip_ids(batch_id, chunk_index, n))
    return rides
