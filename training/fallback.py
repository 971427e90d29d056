"""Fallback ranker: a scikit-learn logistic regression over the same ranker input matrix.

Chosen by measurement on MovieLens 100K validation HR@10 (same candidates, same features):
logistic regression on all features 0.197, on the dense block only 0.184, gradient-boosted trees
on the dense block 0.150 (the DCN ranker: 0.204). It is one matrix product in ONNX, so it stays
cheap when the main ranker is the thing failing.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from training.config import FallbackConfig


def train_fallback(inputs: np.ndarray, config: FallbackConfig) -> LogisticRegression:
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
    model = LogisticRegression(C=config.inverse_regularization, max_iter=config.max_iter)
    return model.fit(x, y)


def fallback_scores(model: LogisticRegression, inputs: np.ndarray) -> np.ndarray:
    """[N] probability that each row is the user's next item, for inputs [N, F]."""
    return model.predict_proba(inputs)[:, 1].astype(np.float32)
