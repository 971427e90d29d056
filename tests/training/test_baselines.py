"""Baselines (training/baselines.py) under the same leave-last-out protocol as the models."""
from __future__ import annotations

import numpy as np
import pytest

from training.baselines import (
    EASE_MAX_ITEMS,
    fit_als,
    fit_ease,
    popularity_scorer,
    tuned_als,
    tuned_ease,
)
from training.config import TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.evaluate import evaluate_scorer, make_eval_set
from training.sequences import UserSequences
from training.steps import PreparedData, prepare_data


def test_popularity_scores_every_user_alike_by_training_counts() -> None:
    popularity = np.array([0, 5, 1, 9, 3], dtype=np.float32)
    scores = popularity_scorer(popularity)(np.array([0, 2, 1]))
    assert scores.shape == (3, 5)
    np.testing.assert_array_equal(scores, np.tile(popularity, (3, 1)))


def test_popularity_ranks_the_most_popular_unknown_item_first() -> None:
    popularity = np.array([0, 5, 1, 9, 3], dtype=np.float32)
    history = UserSequences(["a", "b"], [np.array([3]), np.array([1])], [np.array([0])] * 2)
    held_out = UserSequences(["a", "b"], [np.array([1]), np.array([4])], [np.array([1])] * 2)
    metrics = evaluate_scorer(popularity_scorer(popularity), make_eval_set(history, held_out),
                              (1, 2))
    # a knows row 3, so row 1 (5) is first; b knows row 1: row 3 (9) beats the target row 4 (3)
    assert metrics["hr@1"] == 0.5
    assert metrics["hr@2"] == 1.0


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return prepare_data(generate_synthetic(SyntheticConfig(n_users=150, n_items=300)),
                        TwoTowerConfig(dim=16, hidden=32, epochs=1, history_len=8))


def test_als_beats_random_scores_under_the_same_protocol(data: PreparedData) -> None:
    n_rows = data.catalog.size + 1
    als = fit_als(data.test, n_rows, factors=16, regularization=0.1, iterations=5)
    noise = np.random.default_rng(0).random((len(data.test.user_ids), n_rows))
    als_hr = evaluate_scorer(als, data.test, (10,))["hr@10"]
    random_hr = evaluate_scorer(lambda p: noise[p], data.test, (10,))["hr@10"]
    assert als(np.array([0, 1])).shape == (2, n_rows)
    assert als_hr > 2 * random_hr


def test_tuned_als_picks_from_the_grid_and_beats_popularity(data: PreparedData) -> None:
    n_rows = data.catalog.size + 1
    result = tuned_als(data.validation, data.test, n_rows, (8, 16), (0.01, 0.1), iterations=5)
    assert result.factors in (8, 16) and result.regularization in (0.01, 0.1)
    als_hr = evaluate_scorer(result.scorer, data.test, (10,))["hr@10"]
    popular_hr = evaluate_scorer(popularity_scorer(data.catalog.served_popularity), data.test,
                                 (10,))["hr@10"]
    assert als_hr > popular_hr


def test_ease_scores_what_co_occurs_with_the_history_and_never_the_item_itself() -> None:
    # rows 1 and 2 always go together, row 3 is alone; user c knows only row 1
    history = UserSequences(["a", "b", "c"], [np.array([1, 2]), np.array([1, 2, 3]), np.array([1])],
                            [np.array([0])] * 3)
    held_out = UserSequences(["a", "b", "c"], [np.array([3])] * 2 + [np.array([2])],
                             [np.array([1])] * 3)
    scores = fit_ease(make_eval_set(history, held_out), 4, regularization=0.5)(np.array([2]))
    assert scores.shape == (1, 4)
    assert scores[0, 2] > scores[0, 3]  # row 2 co-occurs with row 1, row 3 less so
    assert scores[0, 1] == 0.0  # the diagonal is zero: an item never recommends itself


def test_tuned_ease_picks_from_the_grid_beats_popularity_and_refuses_huge_catalogues(
    data: PreparedData,
) -> None:
    n_rows = data.catalog.size + 1
    result = tuned_ease(data.validation, data.test, n_rows, (10.0, 100.0))
    assert result is not None and result.regularization in (10.0, 100.0)
    ease_hr = evaluate_scorer(result.scorer, data.test, (10,))["hr@10"]
    popular_hr = evaluate_scorer(popularity_scorer(data.catalog.served_popularity), data.test,
                                 (10,))["hr@10"]
    assert ease_hr > popular_hr
    assert tuned_ease(data.validation, data.test, EASE_MAX_ITEMS + 1, (10.0,)) is None
