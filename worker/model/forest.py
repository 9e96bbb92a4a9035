"""The project's pipeline predicted tree by tree, without scikit-learn's per-call machinery.

A served version is only ever the project's pipeline exactly (`trust.check_pipeline`:
`build_features`, then a fitted RandomForestRegressor). Its `predict` spent, on a 1,000-ride
batch, almost as long outside the trees as in them: the pipeline's and the forest's input checks,
and joblib dispatching each of the 30 trees as a task and adding its part under a lock (7.5–9.1 ms
against 4.2–4.8 ms tree by tree, medians of 60; on 100,000 rides the trees are all of it). Here each
tree is asked directly, through its public `predict(X, check_input=False)`, and the parts are added
in float64 in the trees' order, as the forest adds them in one job (training saves every version
with `n_jobs=1`; with more jobs the forest adds them in whatever order its threads finish, which can
move the last bit). The minutes are then the very numbers `Pipeline.predict` gives, and the input
it refuses is refused too (tests/unit/test_forest.py compares them bit for bit).
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
        self.forest = pipeline.named_steps["forest"]  # its feature step is build_features, checked at load

    def predict(self, rides: pd.DataFrame) -> np.ndarray:
        """Each ride's predicted minutes (float64), as `pipeline.predict(rides)` gives them."""
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
            features = np.ascontiguousarray(build_features(rides), dtype=TREE_DTYPE)
        if features.shape[1] != self.forest.n_features_in_:
            # Unchecked input reaches compiled code: a wrong width must never get that far.
            raise ValueError(
                f"the forest reads {self.forest.n_features_in_} features, the rides give {features.shape[1]}"
            )
        if not np.isfinite(features).all():
            # build_features leaves only finite float64 values; the forest's own check refuses those
            # beyond float32 (e.g. a fare of 1e39) with this message, so a chunk holding one fails alike.
            raise ValueError("Input X contains infinity or a value too large for dtype('float32').")
        total = np.zeros(len(features), dtype=np.float64)
        for tree in self.forest.estimators_:
            total += tree.predict(features, check_input=False)
        total /= len(self.forest.estimators_)
        return total
