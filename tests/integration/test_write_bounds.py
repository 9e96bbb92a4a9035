"""How long one chunk's write may hold or wait for the ledger key, on the machine's PostgreSQL.

A worker whose host freezes keeps its transaction open while its kernel still answers TCP, so
nothing at the network level ends it. These tests stand a sleeping client in for the frozen one
(to the server the two look the same) and check the bounds that write_chunk sets itself:
lock_timeout for a delivery waiting on the key, idle_in_transaction_session_timeout for a holder
that stopped talking. Both fail as OperationalError, which the tasks retry (worker.tasks.TRANSIENT).
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timedelta

import numpy as np
import psycopg2
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.support import start_one_chunk_batch
from worker.batch import generated_chunk
from worker.rides.generator import Window
from worker.store.database import build_engine
from worker.store.writes import PREDICTION_COLUMNS, write_chunk
from worker.tasks import TRANSIENT

pytestmark = pytest.mark.integration

RIDES = 500


def _frame(batch_id: str):
    end = datetime(2026, 5, 4, 12, 0)
    frame = generated_chunk(batch_id, seed=3, chunk_index=0, n=RIDES, window=Window(end - timedelta(minutes=5), end))
    frame["predicted_duration"] = np.full(RIDES, 9.5)
    frame["model_name"] = "bounds-test"
    frame["model_version"] = "1"
    frame["batch_id"] = batch_id
    return frame[list(PREDICTION_COLUMNS)]


def _count(engine, batch_id: str) -> tuple[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM ride_predictions WHERE batch_id = :b"), {"b": batch_id}).scalar()
        ledger = conn.execute(text("SELECT count(*) FROM batch_chunks WHERE batch_id = :b"), {"b": batch_id}).scalar()
    return rows, ledger


def test_a_delivery_waiting_on_a_held_ledger_key_fails_after_lock_timeout_then_writes(fresh_pg_url) -> None:
    engine = build_engine(fresh_pg_url)
    batch_id = "bounds-lock"
    start_one_chunk_batch(engine, batch_id, RIDES)
    url = make_url(fresh_pg_url)
    holder = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    try:
        with holder.cursor() as cur:  # another delivery's open transaction owns the key
            cur.execute(
                "INSERT INTO batch_chunks (batch_id, chunk_index, rows_written, model_version) VALUES (%s, 0, 0, '1')",
                (batch_id,),
            )
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            write_chunk(engine, batch_id, 0, _frame(batch_id), ids_are_new=True, statement_timeout=30, lock_timeout=1)
        waited = time.monotonic() - started
        assert isinstance(raised.value, TRANSIENT)  # the task retries it with backoff
        assert isinstance(raised.value.orig, psycopg2.errors.LockNotAvailable)
        assert 1.0 <= waited < 10, waited
        holder.rollback()  # the other delivery died: its key is free again
    finally:
        holder.close()

    written = write_chunk(engine, batch_id, 0, _frame(batch_id), ids_are_new=True)
    assert (written.rows_written, written.duplicate) == (RIDES, False)
    assert _count(engine, batch_id) == (RIDES, 1)
    with engine.connect() as conn:
        host = conn.execute(text("SELECT hostname FROM batch_chunks WHERE batch_id = :b"), {"b": batch_id}).scalar()
    assert host == socket.gethostname()
    engine.dispose()


def test_a_holder_that_stops_talking_loses_the_key_after_the_statement_timeout(fresh_pg_url) -> None:
    """The first writer claims the key and then stops for 6 s (a frozen host); with a 1 s timeout
    the server ends its session, a second delivery writes the chunk while the first still sleeps,
    and the first, woken, fails instead of writing it again."""
    batch_id = "bounds-idle"
    frozen, other = build_engine(fresh_pg_url), build_engine(fresh_pg_url)
    start_one_chunk_batch(other, batch_id, RIDES)
    claimed = threading.Event()

    @event.listens_for(frozen, "after_cursor_execute")
    def _freeze_after_claim(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().startswith("INSERT INTO batch_chunks"):
            claimed.set()
            time.sleep(6)

    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            outcome["result"] = write_chunk(frozen, batch_id, 0, _frame(batch_id), True, statement_timeout=1)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    assert claimed.wait(30)
    started = time.monotonic()
    second = write_chunk(other, batch_id, 0, _frame(batch_id), ids_are_new=True, statement_timeout=30, lock_timeout=5)
    waited = time.monotonic() - started
    assert thread.is_alive(), "the second delivery had to wait for the frozen one to wake"
    assert (second.rows_written, second.duplicate) == (RIDES, False)
    assert waited < 4, waited
    thread.join(30)
    assert isinstance(outcome.get("error"), TRANSIENT), outcome
    assert _count(other, batch_id) == (RIDES, 1)
    frozen.dispose()
    other.dispose()
