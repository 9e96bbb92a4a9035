"""What a chunk's write says to PostgreSQL, statement by statement. For a 1,000-ride batch the
fixed round trips are about a tenth of the write, so the README counts them; this test holds the count.
Every statement is recorded where it leaves the driver (a psycopg2 cursor class that notes
`execute` and `copy_expert`). The transaction's BEGIN and COMMIT are noted at SQLAlchemy's `begin`
and `commit` events: psycopg2 sends BEGIN itself, with the transaction's first statement, and COMMIT
when SQLAlchemy commits; each is one round trip."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pandas as pd
import psycopg2.extensions
import pytest
from sqlalchemy import event, text

from tests.support import start_one_chunk_batch
from worker.batch import generated_chunk, outcome_frame
from worker.rides.generator import Window
from worker.store.database import build_engine
from worker.store.writes import PREDICTION_COLUMNS, write_chunk

pytestmark = pytest.mark.integration

RIDES = 50


SENT: list[str] = []  # what the recorded engine sent, in order


class RecordingCursor(psycopg2.extensions.cursor):
    """Notes each statement this cursor sends, COPY included (it bypasses SQLAlchemy's events)."""

    def execute(self, query, vars=None):
        SENT.append(" ".join(str(query).split()))
        return super().execute(query, vars)

    def copy_expert(self, sql, file, size=8192):
        SENT.append(" ".join(sql.split()))
        return super().copy_expert(sql, file, size)


@pytest.fixture
def recorded(fresh_pg_url):
    engine = build_engine(fresh_pg_url)

    @event.listens_for(engine, "connect")
    def record(dbapi_connection, _record) -> None:
        dbapi_connection.cursor_factory = RecordingCursor

    @event.listens_for(engine, "begin")
    def begin(_conn) -> None:
        SENT.append("BEGIN")

    @event.listens_for(engine, "commit")
    def commit(_conn) -> None:
        SENT.append("COMMIT")

    yield engine
    engine.dispose()


def _chunk(batch_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    end = datetime(2026, 5, 4, 12, 0)
    rides = generated_chunk(batch_id, seed=3, chunk_index=0, n=RIDES, window=Window(end - timedelta(minutes=5), end))
    frame = rides.assign(predicted_duration=9.5, model_name="trips-test", model_version="1", batch_id=batch_id)
    return frame[list(PREDICTION_COLUMNS)], outcome_frame(rides)


def _write(
    engine, batch_id: str, frame: pd.DataFrame, outcomes: pd.DataFrame, ids_are_new: bool
) -> tuple[int, list[str]]:
    start_one_chunk_batch(engine, batch_id, len(frame))
    SENT.clear()
    written = write_chunk(engine, batch_id, 0, frame, ids_are_new=ids_are_new, outcomes=outcomes)
    assert written.batch_finished
    return written.rows_written, list(SENT)


def _began_with(sent: list[str], expected: list[str]) -> list[str]:
    """Each statement cut to its expected beginning (the rest names columns and parameters)."""
    cut = [statement[: len(start)] for statement, start in zip(sent, expected, strict=False)]
    assert len(sent) == len(expected), (cut, sent[len(expected) :])
    return cut


# The pool's liveness check on checkout, BEGIN, the time bounds, the staging table, the COPY, the
# ledger claim, one move per table, the batch's count (which also finishes it), COMMIT.
FRESH_IDS = [
    "SELECT 1",
    "BEGIN",
    "SELECT set_config('statement_timeout',",
    "CREATE TEMPORARY TABLE",
    "COPY ride_predictions_staging",
    "INSERT INTO batch_chunks",
    "INSERT INTO ride_predictions",
    "INSERT INTO ride_outcomes",
    "UPDATE batch_runs SET",
    "COMMIT",
]


def test_a_chunk_of_fresh_ids_is_written_in_ten_round_trips(recorded) -> None:
    frame, outcomes = _chunk("trips-fresh")
    rows, sent = _write(recorded, "trips-fresh", frame, outcomes, ids_are_new=True)
    assert rows == RIDES
    assert _began_with(sent, FRESH_IDS) == FRESH_IDS


def test_given_ids_are_recounted_only_when_some_were_stored_already(recorded) -> None:
    """A file's ids are the user's: usually new, so the claim counts them all and nothing more is
    sent; some may be stored already (a file scored twice), and then the ledger row is corrected."""
    frame, outcomes = _chunk("trips-given")
    frame = frame.assign(trip_id=[str(uuid.uuid4()) for _ in range(RIDES)])
    outcomes = outcomes.assign(trip_id=frame["trip_id"].to_numpy())
    rows, sent = _write(recorded, "trips-given", frame, outcomes, ids_are_new=False)
    assert rows == RIDES
    assert _began_with(sent, FRESH_IDS) == FRESH_IDS
    assert _counts(recorded, "trips-given") == (RIDES, RIDES)

    # Half stored already, half new.
    half = RIDES // 2
    again = pd.concat(
        [frame.iloc[:half], frame.iloc[half:].assign(trip_id=[str(uuid.uuid4()) for _ in range(RIDES - half)])]
    )
    again = again.assign(batch_id="trips-again")
    again_outcomes = outcomes.assign(trip_id=again["trip_id"].to_numpy())
    rows, sent = _write(recorded, "trips-again", again, again_outcomes, ids_are_new=False)
    assert rows == RIDES - half
    recount = [*FRESH_IDS[:-2], "UPDATE batch_chunks SET", *FRESH_IDS[-2:]]
    assert _began_with(sent, recount) == recount
    assert _counts(recorded, "trips-again") == (RIDES - half, RIDES - half)


def _counts(engine, batch_id: str) -> tuple[int, int]:
    """The rows the ledger and the batch say were written."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT c.rows_written, b.rows_written FROM batch_chunks c JOIN batch_runs b USING (batch_id) "
                "WHERE batch_id = :id"
            ),
            {"id": batch_id},
        ).one()


def _copied_columns(sent: list[str]) -> set[str]:
    copy = next(statement for statement in sent if statement.startswith("COPY"))
    return {name.strip() for name in copy[copy.index("(") + 1 : copy.index(")")].split(",")}


def test_a_value_every_row_shares_travels_once_and_lands_on_every_row(recorded) -> None:
    """A chunk's batch, model and outcome source are left out of the COPY and written by the moves
    as parameters; a column whose rows differ is copied row by row as before."""
    from worker.store.writes import SHAREABLE

    frame, outcomes = _chunk("trips-shared")
    rows, sent = _write(recorded, "trips-shared", frame, outcomes, ids_are_new=True)
    assert rows == RIDES
    assert _copied_columns(sent) & set(SHAREABLE) == set()
    source = outcomes["source"].iloc[0]
    assert _lineage(recorded, "trips-shared") == [("trips-test", "1", source, RIDES)]

    frame, outcomes = _chunk("trips-mixed")
    frame = frame.assign(model_version=["1", "2"] * (RIDES // 2))
    rows, sent = _write(recorded, "trips-mixed", frame, outcomes, ids_are_new=True)
    assert "model_version" in _copied_columns(sent) and "batch_id" not in _copied_columns(sent)
    assert _lineage(recorded, "trips-mixed") == [
        ("trips-test", "1", source, RIDES // 2),
        ("trips-test", "2", source, RIDES // 2),
    ]


def _lineage(engine, batch_id: str) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                text(
                    "SELECT p.model_name, p.model_version, o.source, count(*) FROM ride_predictions p "
                    "JOIN ride_outcomes o USING (trip_id) WHERE p.batch_id = :b GROUP BY 1, 2, 3 ORDER BY 2"
                ),
                {"b": batch_id},
            )
        ]
