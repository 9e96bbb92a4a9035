"""The rows a chunk stores: prediction_frame holds exactly the stored columns, in their order, with
each ride's own values beside its prediction (one batch id, or one per ride for a run of slots); the
staged rows carry each ride's outcome and shadow prediction beside it, and refuse any other rides'."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from worker.batch import prediction_frame
from worker.model.registry import LoadedModel
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import RIDE_COLUMNS, Window
from worker.store.writes import PREDICTION_COLUMNS, STAGED_COLUMNS, staged_frame

RIDES = generated_chunk("b", 1, 0, 40, Window(pd.Timestamp("2026-12-02 10:00"), pd.Timestamp("2026-12-02 10:05")))
MODEL = LoadedModel(None, "chicago-taxi-duration", "3")


def test_the_frame_is_the_stored_columns_with_each_rides_values_and_its_rounded_prediction() -> None:
    minutes = np.linspace(1.23456, 40.98765, len(RIDES))
    frame = prediction_frame(RIDES, minutes, MODEL, "adhoc-1")
    assert tuple(frame.columns) == PREDICTION_COLUMNS
    pd.testing.assert_frame_equal(frame[["trip_id", *RIDE_COLUMNS]], RIDES[["trip_id", *RIDE_COLUMNS]])
    assert frame["predicted_duration"].tolist() == np.round(minutes, 3).tolist()
    assert set(frame["model_name"]) == {"chicago-taxi-duration"} and set(frame["model_version"]) == {"3"}
    assert set(frame["batch_id"]) == {"adhoc-1"}


def test_a_run_of_slots_gives_each_ride_its_own_batch() -> None:
    batches = np.array([f"sched-{i % 3}" for i in range(len(RIDES))])
    frame = prediction_frame(RIDES, np.ones(len(RIDES)), MODEL, batches)
    assert frame["batch_id"].tolist() == batches.tolist()


def test_rides_with_any_index_get_their_predictions_by_position() -> None:
    """A scored file's valid rides keep their line numbers as index (some lines were dropped)."""
    kept = RIDES.iloc[::-2]
    kept = kept.set_axis(range(100, 100 + 2 * len(kept), 2))
    minutes = np.arange(len(kept), dtype=float)
    frame = prediction_frame(kept, minutes, MODEL, "adhoc-1")
    assert frame["trip_id"].tolist() == kept["trip_id"].tolist()
    assert frame["fare"].tolist() == kept["fare"].tolist()
    assert frame["predicted_duration"].tolist() == minutes.tolist()
    outcomes = pd.DataFrame({"trip_id": kept["trip_id"], "actual_duration": minutes / 2}).assign(
        observed_at=kept["trip_start_timestamp"], source="file", known_at=pd.Timestamp("2026-12-02 17:00", tz="UTC")
    )
    staged = staged_frame(frame, outcomes, None)
    assert staged["trip_id"].tolist() == kept["trip_id"].tolist()
    assert staged["actual_duration"].tolist() == (minutes / 2).tolist()


def test_the_staged_rows_carry_each_rides_outcome_and_shadow_beside_it_known_at_as_utc_wall_time() -> None:
    predictions = prediction_frame(RIDES, np.arange(len(RIDES), dtype=float), MODEL, "adhoc-1")
    known = pd.Series(pd.date_range("2026-12-02 16:00", periods=len(RIDES), freq="min", tz="UTC"))
    outcomes = pd.DataFrame(
        {
            "trip_id": RIDES["trip_id"],
            "actual_duration": np.arange(len(RIDES)) / 2,
            "observed_at": RIDES["trip_start_timestamp"],
            "source": "generated",
            "known_at": known.dt.tz_convert("America/Chicago").array,
        }
    )
    shadow = pd.DataFrame({"trip_id": RIDES["trip_id"], "model_version": "4", "predicted_duration": 1.5})
    staged = staged_frame(predictions, outcomes, shadow)
    assert tuple(staged.columns) == STAGED_COLUMNS
    assert staged["actual_duration"].tolist() == (np.arange(len(RIDES)) / 2).tolist()
    assert staged["known_at"].tolist() == known.dt.tz_localize(None).tolist()  # the same instants, in UTC
    assert set(staged["shadow_version"]) == {"4"} and set(staged["shadow_duration"]) == {1.5}
    assert tuple(staged_frame(predictions, None, None).columns) == PREDICTION_COLUMNS


def test_outcomes_or_shadow_predictions_of_other_rides_or_in_another_order_are_refused() -> None:
    predictions = prediction_frame(RIDES, np.ones(len(RIDES)), MODEL, "adhoc-1")
    reversed_ids = RIDES["trip_id"][::-1].to_numpy()
    shadow = pd.DataFrame({"trip_id": reversed_ids, "model_version": "4", "predicted_duration": 1.0})
    outcomes = pd.DataFrame(
        {
            "trip_id": reversed_ids,
            "actual_duration": 1.0,
            "observed_at": RIDES["trip_start_timestamp"].to_numpy(),
            "source": "file",
            "known_at": pd.Timestamp("2026-12-02 17:00", tz="UTC"),
        }
    )
    for given in (
        {"shadow": shadow},
        {"shadow": shadow.head(3)},
        {"outcomes": outcomes},
        {"outcomes": outcomes.tail(3)},
    ):
        with pytest.raises(ValueError, match="must be the chunk's rides, in the same order"):
            staged_frame(predictions, given.get("outcomes"), given.get("shadow"))
