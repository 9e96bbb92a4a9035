"""The outcome times a write stores are the instants the batch computed, whatever the session's
time zone: `known_at` goes through the staging table as UTC wall time (Arrow formats a zone-aware
column for COPY 25 times slower) and becomes an instant again in the move. A move that forgot the
conversion would shift every `known_at` by the session's offset, here six hours."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pandas as pd
import pytest
from sqlalchemy import event, text

from tests.support import start_one_chunk_batch
from worker.batch import generated_chunk, known_at, outcome_frame
from worker.rides.generator import Window
from worker.store.database import build_engine
from worker.store.writes import PREDICTION_COLUMNS, write_batches, write_chunk

pytestmark = pytest.mark.integration

RIDES = 200
ARRIVED = datetime(2026, 5, 4, 17, 3, 7, 250000, tzinfo=UTC)  # before most trips end: known_at varies by ride


def _chunk(batch_id: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    end = datetime(2026, 5, 4, 12, 0)  # Chicago wall time; 17:00 UTC
    rides = generated_chunk(batch_id, seed=seed, chunk_index=0, n=RIDES, window=Window(end - timedelta(minutes=5), end))
    frame = rides.assign(predicted_duration=9.5, model_name="times-test", model_version="1", batch_id=batch_id)
    return frame[list(PREDICTION_COLUMNS)], outcome_frame(rides, now=ARRIVED)


def _stored(engine, batch_ids: list[str]) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT CAST(o.trip_id AS text) AS trip_id, o.known_at, o.observed_at FROM ride_outcomes o "
                "JOIN ride_predictions p USING (trip_id) WHERE p.batch_id = ANY(:ids)"
            ),
            {"ids": batch_ids},
        ).all()
    return pd.DataFrame(rows, columns=["trip_id", "known_at", "observed_at"]).set_index("trip_id")


def _check(stored: pd.DataFrame, outcomes: pd.DataFrame) -> None:
    expected = outcomes.set_index(outcomes["trip_id"].map(lambda trip_id: str(uuid.UUID(str(trip_id)))))
    assert len(stored) == len(expected) == RIDES
    stored = stored.loc[expected.index]
    assert (pd.to_datetime(stored["known_at"], utc=True) == expected["known_at"]).all()
    assert (pd.to_datetime(stored["observed_at"]) == expected["observed_at"]).all()
    # Both kinds of known_at are in the data: trips that ended after the arrival, and before it.
    assert (expected["known_at"] > ARRIVED).any() and (expected["known_at"] == ARRIVED).any()


def test_outcome_times_are_stored_as_computed_in_a_session_far_from_utc(fresh_pg_url) -> None:
    engine = build_engine(fresh_pg_url)

    @event.listens_for(engine, "connect")
    def chicago_session(dbapi_connection, _record) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'America/Chicago'")

    try:
        frame, outcomes = _chunk("times-one", seed=5)
        assert isinstance(outcomes["known_at"].dtype, pd.DatetimeTZDtype)  # what the batch hands the write
        start_one_chunk_batch(engine, "times-one", RIDES)
        assert write_chunk(engine, "times-one", 0, frame, ids_are_new=True, outcomes=outcomes).rows_written == RIDES
        _check(_stored(engine, ["times-one"]), outcomes)

        # A run of slots stages and moves the same way.
        chunks = [_chunk(f"times-run-{n}", seed=10 + n) for n in range(2)]
        for n in range(2):
            start_one_chunk_batch(engine, f"times-run-{n}", RIDES)
        written = write_batches(
            engine,
            pd.concat([f for f, _ in chunks], ignore_index=True),
            outcomes=pd.concat([o for _, o in chunks], ignore_index=True),
        )
        assert [w.rows_written for w in written] == [RIDES, RIDES]
        for n, (_, outcomes) in enumerate(chunks):
            _check(_stored(engine, [f"times-run-{n}"]), outcomes)
    finally:
        engine.dispose()


def test_known_at_is_the_later_of_the_trip_end_and_the_arrival() -> None:
    ended = pd.Series(pd.to_datetime(["2026-05-04 11:50:00", "2026-05-04 12:20:00"]))  # Chicago: 16:50, 17:20 UTC
    got = known_at(ended, now=ARRIVED)
    assert list(got) == [pd.Timestamp(ARRIVED), pd.Timestamp("2026-05-04 17:20:00", tz="UTC")]
    assert str(got.dt.tz) == "UTC"


def test_the_rolling_window_is_the_same_rides_whatever_the_plan_when_outcomes_share_a_known_at(fresh_pg_url):
    """A backfill or a file of outcomes gives thousands of outcomes one `known_at`. The window of the
    N most recently known is then a choice among ties: it must not be the join's order, or the alert,
    status, the report and the policy judge different rides seconds apart. Ties go by trip id."""
    from worker.store.evidence import recent_errors

    known = datetime(2026, 5, 4, 18, 0, tzinfo=UTC)
    rides = 3000
    ids = sorted(str(uuid.UUID(int=(k * 7919 % rides) << 64 | k)) for k in range(rides))
    with build_engine(fresh_pg_url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ride_predictions (trip_id, trip_start_timestamp, fare, trip_miles, predicted_duration, "
                "model_name, model_version, batch_id) "
                "SELECT id::uuid, '2026-05-04 12:00', 10, 2, 10, 'm', '1', 'b' FROM unnest(CAST(:ids AS text[])) id"
            ),
            {"ids": ids},
        )
        # Each ride's error is its place among the ids: which 1,000 are chosen decides the MAE.
        conn.execute(
            text(
                "INSERT INTO ride_outcomes (trip_id, actual_duration, observed_at, source, known_at) "
                "SELECT id::uuid, 10 + k, '2026-05-04 12:10', 'file', :known "
                "FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS t(id, k)"
            ),
            {"ids": ids, "known": known},
        )
        conn.execute(text("ANALYZE ride_predictions, ride_outcomes"))
    expected = sum(range(rides - 999, rides + 1)) / 1000  # the 1,000 greatest trip ids
    plans = ("", "-c enable_hashjoin=off", "-c enable_hashjoin=off -c enable_mergejoin=off", "-c work_mem=64kB")
    for options in plans:
        engine = build_engine(f"{fresh_pg_url}?options={quote(options)}" if options else fresh_pg_url)
        found = recent_errors(engine, "1", 1000, known + timedelta(minutes=1))
        engine.dispose()
        assert (found["outcomes"], found["mae"]) == (1000, pytest.approx(expected)), options
