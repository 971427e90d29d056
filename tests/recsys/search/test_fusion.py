from __future__ import annotations

import numpy as np
import pytest

from recsys.search.fusion import (
    FusionRule,
    Ranked,
    by_similarity,
    personal_list,
    reciprocal_rank_fusion,
)

POPULARITY = np.asarray([0, 1, 2, 3, 4, 5, 6], dtype=np.float32)


def rows(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def test_scores_are_sums_of_weight_over_k_plus_rank() -> None:
    fused = reciprocal_rank_fusion({"a": rows(1, 2), "b": rows(2, 3)}, k=10,
                                   popularity=POPULARITY, weights=[1.0, 0.5])
    scores = dict(zip(fused.rows.tolist(), fused.scores.tolist()))
    assert scores[2] == pytest.approx(1 / 12 + 0.5 / 11)
    assert scores[1] == pytest.approx(1 / 11)
    assert scores[3] == pytest.approx(0.5 / 12)
    assert fused.rows.tolist() == [2, 1, 3]


def test_each_item_appears_once_with_the_lists_that_held_it() -> None:
    fused = FusionRule(5).fuse({"bm25": rows(4, 5), "vector": rows(5, 6)}, POPULARITY)
    assert sorted(fused.rows.tolist()) == [4, 5, 6]
    assert fused.found_by(int(np.flatnonzero(fused.rows == 5)[0])) == ["bm25", "vector"]
    assert fused.found_by(int(np.flatnonzero(fused.rows == 6)[0])) == ["vector"]


def test_ties_go_to_the_more_popular_item() -> None:
    fused = FusionRule(5).fuse({"a": rows(1), "b": rows(3)}, POPULARITY)
    assert fused.rows.tolist() == [3, 1]


def test_a_weight_of_zero_keeps_a_list_from_ordering() -> None:
    rule = FusionRule(5, {"vector": 0.0})
    fused = rule.fuse({"bm25": rows(1, 2), "vector": rows(2, 1)}, POPULARITY)
    assert fused.rows.tolist() == [1, 2]


def test_small_k_lets_the_top_of_one_list_win() -> None:
    popularity = np.arange(10, dtype=np.float32)
    lists = {"a": rows(1, 2, 3, 4, 5), "b": rows(6, 7, 8, 9, 5)}  # 5: last in both
    assert FusionRule(1).fuse(lists, popularity).rows[0] == 6  # a tie of tops: popularity
    assert FusionRule(100).fuse(lists, popularity).rows[0] == 5  # agreement wins


def test_nothing_to_fuse() -> None:
    fused = FusionRule().fuse({"bm25": rows()}, POPULARITY)
    assert fused.rows.size == 0 and fused.found.shape == (0, 1)


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        FusionRule(0)
    with pytest.raises(ValueError):
        FusionRule(5, {"vector": -1.0})


def test_the_personal_list_orders_every_candidate_by_taste() -> None:
    vectors = np.zeros((7, 2), dtype=np.float32)
    vectors[1], vectors[2], vectors[5] = [0.1, 0.0], [1.0, 0.0], [0.0, 0.5]
    user = np.asarray([1.0, 1.0], dtype=np.float32)  # similarities: 0.1, 1.0, 0.5
    lists = {"bm25": Ranked(rows(1, 2), np.ones(2, np.float32)),
             "vector": Ranked(rows(2, 5), np.ones(2, np.float32))}
    assert personal_list(lists, vectors, user).rows.tolist() == [2, 5, 1]
    assert by_similarity(rows(1, 5), vectors, user).rows.tolist() == [5, 1]
