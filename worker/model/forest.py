"""The project's pipeline predicted tree by tree, without scikit-learn's per-call machinery.

A served version is only ever the project's pipeline exactly (`trust.check_pipeline`:
`build_features`, then a fitted RandomForestRegressor). Its `predict` spent, on a 1,000-ride
batch, almost as long outside the trees as in them: the pipeline's and the forest's input checks,
and joblib dispatching each of the 30 trees as a task and adding its part under a lock (7.5–9.1 ms
against 4.2–4.8 ms tree by tree, medians of 60; on 100,000 rides the trees are all of it). Here each
tree is asked directly, through its public `predict(X, check_input=False)`, and the parts are added
in the forest's own order and dtype, so the minutes are the very numbers `Pipeline.predict` gives
(tests/unit/test_forest.py compares them bit for bit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from worker.model.features import build_features

# What a fitted tree reads (sklearn.tree._tree.DTYPE); the forest's own input check converts to it.
TREE_DTYPE = np.float32


class TreeByTree:
    """A checked pipeline (see trust.check_pipeline) as the workers predict with it."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.forest = pipeline.named_steps["forest"]

    def predict(self, rides: pd.DataFrame) -> np.ndarray:
        """Each ride's predicted minutes (float64), as `pipeline.predict(rides)` gives them."""
        features = np.ascontiguousarray(build_features(rides), dtype=TREE_DTYPE)
        if features.shape[1] != self.forest.n_features_in_:
            # Unchecked input reaches compiled code: a wrong width must never get that far.
            raise ValueError(
                f"the forest reads {self.forest.n_features_in_} features, the rides give {features.shape[1]}"
            )
        total = np.zeros(len(features), dtype=np.float64)
        for tree in self.forest.estimators_:
            total += tree.predict(features, check_input=False)
        total /= len(self.forest.estimators_)
        return total
