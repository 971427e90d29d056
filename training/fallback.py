"""Fallback ranker: scikit-learn gradient-boosted trees over the shared dense ranking features.

It takes the same ranker input matrix as the main ranker and keeps only the dense block (the
two-tower similarity, popularity, category affinity, context...), so it stays cheap and robust.
HistGradientBoosting would train faster, but skl2onnx 1.20 cannot convert it with onnx 1.23
(boolean attribute lists in TreeEnsembleClassifier), so the classic GradientBoostingClassifier it is.
"""
from __future__ import annotations

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import Pipeline

from recsys.features import DENSE_FEATURES
from training.config import FallbackConfig


def train_fallback(inputs: np.ndarray, config: FallbackConfig) -> Pipeline:
    """Pointwise classifier on inputs [Q, G, F] with the positive in column 0 of each group."""
    rng = np.random.default_rng(config.seed)
    q, g, f = inputs.shape
    x = inputs.reshape(q * g, f)
    y = np.zeros((q, g), dtype=np.int64)
    y[:, 0] = 1
    y = y.reshape(-1)
    if len(x) > config.max_rows:
        keep = rng.choice(len(x), size=config.max_rows, replace=False)
        x, y = x[keep], y[keep]
    dense = ColumnTransformer([("dense", "passthrough", list(range(len(DENSE_FEATURES))))],
                              remainder="drop")
    trees = GradientBoostingClassifier(
        n_estimators=config.n_estimators, max_depth=config.max_depth,
        learning_rate=config.learning_rate, subsample=config.subsample, random_state=config.seed,
    )
    return Pipeline([("select", dense), ("trees", trees)]).fit(x, y)


def fallback_scores(model: Pipeline, inputs: np.ndarray) -> np.ndarray:
    """[N] probability that each row is the user's next item, for inputs [N, F]."""
    return model.predict_proba(inputs)[:, 1].astype(np.float32)
