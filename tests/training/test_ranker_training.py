"""What the ranker's training shows it: queries with the time since the last event hidden."""
from __future__ import annotations

import numpy as np
import torch

from recsys.context import UNKNOWN_GAP_FEATURE
from recsys.features import DENSE_FEATURES, FeatureScaler
from training.ranker import GapHider

HOURS = DENSE_FEATURES.index("hours_since_last_event")


def _batch(queries: int = 400, group: int = 5, width: int = len(DENSE_FEATURES) + 8) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).normal(size=(queries, group, width))
                            .astype(np.float32))


def _scaler() -> FeatureScaler:
    mean = np.zeros(len(DENSE_FEATURES), dtype=np.float32)
    std = np.ones(len(DENSE_FEATURES), dtype=np.float32)
    mean[HOURS], std[HOURS] = 0.25, 1.1
    return FeatureScaler(mean, std)


def test_a_hidden_gap_reads_as_the_unknown_one_scaled_and_nothing_else_moves() -> None:
    batch = _batch()
    shown = GapHider(_scaler(), share=1.0, seed=0)(batch)
    expected = np.float32((UNKNOWN_GAP_FEATURE - 0.25) / np.float32(1.1))
    assert torch.allclose(shown[:, :, HOURS], torch.tensor(expected))
    others = [c for c in range(batch.shape[-1]) if c != HOURS]
    assert torch.equal(shown[:, :, others], batch[:, :, others])
    assert not torch.equal(batch[:, :, HOURS], shown[:, :, HOURS])  # the input is left alone


def test_the_share_hides_whole_queries_and_none_at_zero() -> None:
    batch = _batch()
    assert GapHider(_scaler(), share=0.0, seed=0)(batch) is batch
    shown = GapHider(_scaler(), share=0.5, seed=0)(batch)
    hidden = (shown[:, :, HOURS] != batch[:, :, HOURS])
    assert torch.equal(hidden.all(dim=1), hidden.any(dim=1))  # all a query's candidates, or none
    assert 0.4 < hidden.all(dim=1).float().mean() < 0.6


def test_each_batch_draws_anew_and_the_same_seed_draws_the_same() -> None:
    batch = _batch()
    first, again = GapHider(_scaler(), 0.5, seed=3), GapHider(_scaler(), 0.5, seed=3)
    a, b = first(batch), first(batch)
    assert not torch.equal(a, b)
    assert torch.equal(again(batch), a)
