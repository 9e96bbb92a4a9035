"""Trip ids: recomputed from the batch alone, unique, and ordered by when the batch was written."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from worker.rides.batch_rides import CHUNK_BITS, PLACE_BITS, trip_ids

AT = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def test_a_redelivery_recomputes_the_same_ids():
    assert list(trip_ids("b", 2, 1000, AT)) == list(trip_ids("b", 2, 1000, AT))


def test_ids_are_valid_uuids_of_version_7_that_carry_the_batchs_start():
    for value in trip_ids("b", 0, 100, AT):
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert int(value[:12], 16) == int(AT.timestamp() * 1000)


def test_a_naive_start_is_read_as_utc():
    """SQLite hands the stored UTC start back without a zone: the same instant, the same ids."""
    assert list(trip_ids("b", 0, 10, AT.replace(tzinfo=None))) == list(trip_ids("b", 0, 10, AT))


def test_ids_sort_by_batch_start_then_chunk_then_ride():
    """What makes the primary key's inserts append-only (random v4 ids failed this)."""
    earlier = list(trip_ids("z-batch", 0, 500, AT)) + list(trip_ids("z-batch", 1, 500, AT))
    later = list(trip_ids("a-batch", 0, 500, AT + timedelta(milliseconds=1)))
    written = earlier + later
    assert written == sorted(written)
    assert len(set(written)) == len(written)


def test_batches_started_in_the_same_millisecond_never_share_an_id():
    ids = np.concatenate([trip_ids(f"slot-{k}", c, 2000, AT) for k in range(50) for c in range(3)])
    assert len(np.unique(ids)) == len(ids)


def test_a_chunk_beyond_what_an_id_can_number_is_refused_by_name():
    with pytest.raises(ValueError, match="chunk index"):
        trip_ids("b", 1 << CHUNK_BITS, 1, AT)
    with pytest.raises(ValueError, match="rides in one chunk"):
        trip_ids("b", 0, (1 << PLACE_BITS) + 1, AT)
