"""A big chunk's challenger scores an even sample of its rides (SHADOW_SAMPLE_ROWS): each of those gets
one shadow row, in the chunk's own transaction, and the other rides none, on PostgreSQL (the staged
move) and on SQLite (row inserts) alike."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from tests.support import start_one_chunk_batch
from worker.batch import outcome_frame, prediction_frame, shadow_frame
from worker.model.registry import LoadedModel, Shadow
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import Window
from worker.store.database import build_engine, migrate
from worker.store.writes import write_chunk

pytestmark = pytest.mark.integration


class Minutes:
    def predict(self, rides: pd.DataFrame) -> np.ndarray:
        return np.full(len(rides), 7.25)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_only_the_rides_the_challenger_scored_get_a_shadow_row(fresh_pg_url, tmp_path, dialect) -> None:
    url = fresh_pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'shadow.db'}"
    if dialect == "sqlite":
        migrate(url)
    engine = build_engine(url)
    end = datetime(2026, 5, 4, 12, 0)
    rides = generated_chunk("sampled", seed=3, chunk_index=0, n=50, window=Window(end - timedelta(minutes=5), end))
    production = LoadedModel(Minutes(), "trips-test", "1")
    shadowed, error, _ = shadow_frame(rides, Shadow("2", LoadedModel(Minutes(), "trips-test", "2")), sample_rows=10)
    assert error is None
    start_one_chunk_batch(engine, "sampled", len(rides))
    written = write_chunk(
        engine,
        "sampled",
        0,
        prediction_frame(rides, np.full(len(rides), 9.5), production, "sampled"),
        ids_are_new=True,
        outcomes=outcome_frame(rides),
        shadow=shadowed,
    )
    assert written.rows_written == 50 and written.batch_finished
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT trip_id, model_version, predicted_duration, batch_id FROM shadow_predictions")
        ).all()
        stored = conn.execute(
            text("SELECT (SELECT count(*) FROM ride_predictions), (SELECT count(*) FROM ride_outcomes)")
        )
        assert tuple(stored.one()) == (50, 50)
    # Every fifth ride, from the first: ten rows, each the challenger's, none for the other forty.
    expected = {str(trip_id).replace("-", "") for trip_id in rides["trip_id"].iloc[::5]}
    assert {str(row.trip_id).replace("-", "") for row in rows} == expected and len(rows) == 10
    assert {(row.model_version, row.predicted_duration, row.batch_id) for row in rows} == {("2", 7.25, "sampled")}
    engine.dispose()
