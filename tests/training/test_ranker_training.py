"""What the ranker's training shows it (queries with the time since the last event hidden) and which
weights it keeps (the epochs' average, the best epoch, or retrieval order)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from recsys.context import UNKNOWN_GAP_FEATURE
from recsys.features import DENSE_FEATURES, FeatureScaler
from training.config import RankerConfig
from training.ranker import DCNRanker, GapHider, RankingQueries, train_ranker

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


def _queries(n: int = 300, group: int = 6, dim: int = 4, items: int = 50
             ) -> tuple[RankingQueries, np.ndarray]:
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(n, group, len(DENSE_FEATURES))).astype(np.float32)
    dense[:, 0, 0] += 1.0  # the positive is a little more similar: something to learn
    candidates = rng.integers(0, items, size=(n, group))
    users = rng.normal(size=(n, dim)).astype(np.float32)
    return RankingQueries(dense, candidates, users), rng.normal(size=(items, dim)).astype(np.float32)


SMALL = RankerConfig(hidden=8, batch_size=64, epochs=3, average_from_epoch=None)


def _weights(model: DCNRanker) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _trained(config: RankerConfig, **kwargs: object) -> dict[str, torch.Tensor]:
    queries, items = _queries()
    model, _ = train_ranker(queries, items, config, **kwargs)  # type: ignore[arg-type]
    return _weights(model)


def test_the_averaged_weights_are_the_mean_of_the_epochs_from_the_chosen_one() -> None:
    after = {n: _trained(replace(SMALL, epochs=n)) for n in (2, 3)}  # the last epoch's weights
    averaged = _trained(replace(SMALL, average_from_epoch=2))
    for name, value in averaged.items():
        expected = (after[2][name] + after[3][name]) / 2 if name != "prior_scale" else after[3][name]
        assert torch.allclose(value, expected, atol=1e-6), name
    assert not torch.allclose(averaged["head.weight"], after[3]["head.weight"])


@pytest.mark.parametrize("start", [0, 4])
def test_an_average_from_no_epoch_of_the_run_is_refused(start: int) -> None:
    with pytest.raises(ValueError, match=rf"average_from_epoch must be an epoch from 1 to 3 .*got {start}"):
        _trained(replace(SMALL, average_from_epoch=start))


def test_the_average_is_kept_only_where_it_beats_retrieval_order_on_validation() -> None:
    logged: dict[str, float] = {}

    def untrained_wins(model: DCNRanker, scaler: FeatureScaler) -> float:
        return float(model.head.weight.abs().sum() == 0)  # 1 for retrieval order only

    def trained_wins(model: DCNRanker, scaler: FeatureScaler) -> float:
        return 1.0 - untrained_wins(model, scaler)

    config = replace(SMALL, average_from_epoch=1)
    kept = _trained(config, validate=untrained_wins,
                    on_epoch_end=lambda epoch, stats: logged.update(stats))
    assert torch.count_nonzero(kept["head.weight"]) == 0
    assert logged["kept_retrieval_order"] == 1.0
    assert torch.equal(_trained(config, validate=trained_wins)["head.weight"],
                       _trained(config)["head.weight"])


def test_without_averaging_the_best_epoch_on_validation_is_kept() -> None:
    calls = iter([0.1, 0.2, 0.5, 0.3])  # untrained, then epochs 1-3: the second epoch is best
    logged: dict[str, float] = {}
    kept = _trained(SMALL, validate=lambda model, scaler: next(calls),
                    on_epoch_end=lambda epoch, stats: logged.update(stats))
    assert logged["best_epoch"] == 2.0
    second = _trained(replace(SMALL, epochs=2))
    assert all(torch.equal(kept[name], second[name]) for name in kept)
