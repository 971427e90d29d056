"""Training runs with the configured torch thread count, whatever the caller's count is."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.config import EvalConfig, FallbackConfig, RankerConfig, TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.steps import prepare_data, train_embedding, train_rankers
from training.threads import torch_threads


@pytest.fixture
def two_ambient_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_count_is_set_inside_and_restored_after(two_ambient_threads: None) -> None:
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_the_count_is_restored_when_the_block_raises(two_ambient_threads: None) -> None:
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_a_count_below_one_is_refused_by_value() -> None:
    with pytest.raises(ValueError, match="threads=0"), torch_threads(0):
        pass


def test_both_training_steps_run_with_the_configured_count(
    two_ambient_threads: None, tmp_path: Path,
) -> None:
    tower = TwoTowerConfig(dim=8, hidden=16, epochs=1, history_len=4, threads=1)
    ranker = replace(RankerConfig(), epochs=1, hidden=8, threads=1)
    data = prepare_data(generate_synthetic(SyntheticConfig(n_users=60, n_items=80)), tower)
    seen: list[int] = []

    def log(metrics: dict[str, float], step: int) -> None:
        seen.append(torch.get_num_threads())

    embedding = train_embedding(data, tower, tmp_path / "embedding", log=log)
    tower_calls = len(seen)
    train_rankers(data, embedding, ranker, FallbackConfig(max_iter=50), tmp_path / "ranker",
                  tmp_path / "fallback", EvalConfig(candidates=20), log=log)
    assert tower_calls > 0 and len(seen) > tower_calls
    assert set(seen) == {1}
    assert torch.get_num_threads() == 2
