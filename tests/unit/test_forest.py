"""The workers' tree-by-tree prediction gives the very numbers the pipeline's own predict gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from worker.model.forest import TreeByTree
from worker.model.training import TARGET, ForestParams, fit_pipeline
from worker.rides.generator import RIDE_COLUMNS, generate_rides


@pytest.fixture(scope="module")
def pipeline():
    train = generate_rides(2_000, seed=3)
    return fit_pipeline(
        train.assign(**{TARGET: train["trip_seconds"] / 60}), ForestParams(n_estimators=7, max_depth=8), 1
    )


def test_generated_rides_get_the_pipelines_own_minutes_bit_for_bit(pipeline):
    rides = generate_rides(3_000, seed=11)[list(RIDE_COLUMNS)]
    expected = pipeline.predict(rides)
    got = TreeByTree(pipeline).predict(rides)
    assert got.dtype == np.float64
    assert np.array_equal(got, expected)


def test_rides_with_missing_and_out_of_range_values_too(pipeline):
    rides = generate_rides(40, seed=12)[list(RIDE_COLUMNS)].astype(object)
    rides.iloc[0, rides.columns.get_loc("pickup_community_area")] = None
    rides.iloc[1, rides.columns.get_loc("dropoff_community_area")] = 99
    rides.iloc[2, rides.columns.get_loc("trip_miles")] = 0.0
    rides.iloc[3, rides.columns.get_loc("fare")] = np.nan
    rides.iloc[4, rides.columns.get_loc("trip_start_timestamp")] = pd.NaT
    rides.iloc[5, rides.columns.get_loc("trip_total")] = None
    assert np.array_equal(TreeByTree(pipeline).predict(rides), pipeline.predict(rides))
    one = rides.iloc[[7]]
    assert np.array_equal(TreeByTree(pipeline).predict(one), pipeline.predict(one))


@pytest.mark.parametrize(("column", "value"), [("fare", 1e39), ("trip_miles", 1e-300)])
def test_a_feature_beyond_float32_is_refused_as_the_pipeline_refuses_it(pipeline, column, value):
    """A fare of 1e39 (or a fare per mile that overflows) passes build_features but not the forest's
    check; tree by tree it would become inf and still get a prediction."""
    rides = generate_rides(5, seed=13)[list(RIDE_COLUMNS)]
    rides[column] = rides[column].astype(float)
    rides.iloc[2, rides.columns.get_loc(column)] = value
    with pytest.raises(ValueError, match="too large for dtype") as expected:
        pipeline.predict(rides)
    with pytest.raises(ValueError, match="too large for dtype") as got:
        TreeByTree(pipeline).predict(rides)
    assert str(got.value).splitlines()[0] == str(expected.value).splitlines()[0]


def test_a_forest_fitted_on_another_width_is_refused_before_the_trees_read(pipeline):
    narrow = pipeline.named_steps["forest"].__class__(n_estimators=2).fit(np.zeros((4, 3)), np.arange(4.0))
    fake = type("Pipeline", (), {"named_steps": {"forest": narrow}})()
    with pytest.raises(ValueError, match="the forest reads 3 features, the rides give 15"):
        TreeByTree(fake).predict(generate_rides(5, seed=1)[list(RIDE_COLUMNS)])
