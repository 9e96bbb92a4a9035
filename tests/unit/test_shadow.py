"""A challenger that raises while a batch is predicted: the batch's own rows are unaffected and the failure
is returned to be recorded. (Real versions that would raise are refused when loaded, see
tests/integration/test_lifecycle.py; this is the guard for whatever still raises at predict.)"""

from __future__ import annotations

import numpy as np
import pandas as pd

from worker.batch import shadow_frame, shadow_step
from worker.model.registry import LoadedModel, Shadow, shadowed
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import Window


class Raises:
    def predict(self, rides: pd.DataFrame) -> np.ndarray:
        raise MemoryError("out of memory while predicting")


class Halves:
    def predict(self, rides: pd.DataFrame) -> np.ndarray:
        return np.full(len(rides), 0.5)


RIDES = generated_chunk("b", 1, 0, 50, Window(pd.Timestamp("2026-12-02 10:00"), pd.Timestamp("2026-12-02 10:05")))


def test_a_challenger_that_raises_gives_no_rows_and_says_why() -> None:
    frame, error, _ = shadow_frame(RIDES, Shadow("7", LoadedModel(Raises(), "m", "7")))
    assert frame is None and error == "challenger v7 failed to predict: MemoryError: out of memory while predicting"


def test_a_challenger_that_cannot_load_gives_its_error_and_one_that_works_its_rows() -> None:
    assert shadow_frame(RIDES, Shadow("7", None, "challenger v7 could not be loaded: X")) == (
        None,
        "challenger v7 could not be loaded: X",
        0.0,
    )
    frame, error, _ = shadow_frame(RIDES, Shadow("8", LoadedModel(Halves(), "m", "8")))
    assert error is None and list(frame["trip_id"]) == list(RIDES["trip_id"])
    assert set(frame["model_version"]) == {"8"} and set(frame["predicted_duration"]) == {0.5}
    assert shadow_frame(RIDES, None) == (None, None, 0.0)


class Counts:
    """Predicts each ride's place in what it was given, and remembers how many it was given."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def predict(self, rides: pd.DataFrame) -> np.ndarray:
        self.asked.append(len(rides))
        return np.arange(len(rides), dtype=float)


def test_a_chunk_above_the_sample_has_every_kth_ride_scored_and_the_same_ones_on_a_retry() -> None:
    model = Counts()
    challenger = Shadow("8", LoadedModel(model, "m", "8"))
    first, error, _ = shadow_frame(RIDES, challenger, sample_rows=12)  # 50 rides: every 5th, 10 of them
    again, _, _ = shadow_frame(RIDES, challenger, sample_rows=12)
    assert error is None and model.asked == [10, 10]
    assert list(first["trip_id"]) == list(RIDES["trip_id"]) and set(first["model_version"]) == {"8"}
    scored = first["predicted_duration"].notna().to_numpy()
    assert np.flatnonzero(scored).tolist() == list(range(0, 50, 5))
    assert first["predicted_duration"][scored].tolist() == list(range(10))  # each its own prediction
    pd.testing.assert_frame_equal(first, again)


def test_a_chunk_within_the_sample_has_every_ride_scored() -> None:
    model = Counts()
    frame, _, _ = shadow_frame(RIDES, Shadow("8", LoadedModel(model, "m", "8")), sample_rows=50)
    assert model.asked == [50] and frame["predicted_duration"].notna().all()
    assert [shadow_step(n, 10_000) for n in (1, 10_000, 10_001, 50_000, 50_001)] == [1, 1, 2, 5, 6]


def test_the_challenger_tried_is_another_version_than_production():
    """One definition for every reader that shadow-scores, compares or judges (runtime, policy,
    status, `models --compare`, lifecycle-check): an alias on production's own version is no trial."""
    assert shadowed("3", "2") == "3"
    assert shadowed("2", "2") is None
    assert shadowed(None, "2") is None
    assert shadowed("3", None) is None
