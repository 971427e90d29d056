"""Offline evaluation (training/evaluate.py) against metrics computed by hand on tiny matrices."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from training.evaluate import (
    EvalSet,
    candidate_recall,
    evaluate_scorer,
    format_table,
    make_eval_set,
    mask_known,
    mean_gain_interval,
    metrics_by_group,
    paired_gain,
    ranking_metrics,
    rerank_scorer,
    target_ranks,
    tied_to_history,
)
from training.sequences import UserSequences

NEG = -np.inf

# Rows 0-5 of a 5-item catalogue (row 0 is padding and never ranked).
SCORES = np.array([
    [9.0, 0.9, 0.8, 0.7, 0.1, 0.5],  # user a: target 3, knows 1 -> 0.8 beats it -> rank 1
    [0.0, 0.2, 0.6, 0.6, 0.1, 0.0],  # user b: target 3, tied with row 2 -> the tie counts -> rank 1
    [0.0, 0.3, 0.2, 0.1, 0.9, 0.4],  # user c: target 4, knows 5 -> rank 0
])
RANKS = np.array([1, 1, 0])


def _seqs(users: list[str], rows: list[list[int]]) -> UserSequences:
    return UserSequences(users, [np.array(r, dtype=np.int64) for r in rows],
                         [np.arange(len(r), dtype=np.int64) * 10 for r in rows])


@pytest.fixture
def eval_set() -> EvalSet:
    history = _seqs(["a", "b", "c", "d", "e"], [[1], [5, 5], [5], [2, 3], []])
    held_out = _seqs(["a", "b", "c", "d", "e"], [[3], [3], [4], [], [1]])
    return make_eval_set(history, held_out)


def _fixed(positions: np.ndarray) -> np.ndarray:
    return SCORES[positions]


def test_make_eval_set_keeps_users_with_a_held_out_event_and_a_history(eval_set: EvalSet) -> None:
    assert eval_set.user_ids == ["a", "b", "c"]  # d has nothing held out, e has no history
    np.testing.assert_array_equal(eval_set.targets, [3, 3, 4])
    np.testing.assert_array_equal(eval_set.known[1], [5])  # duplicates collapse
    np.testing.assert_array_equal(eval_set.timestamps, [0, 0, 0])
    assert eval_set.histories.user_ids == ["a", "b", "c"]


def test_mask_known_hides_padding_and_known_items_without_changing_the_input() -> None:
    masked = mask_known(SCORES, [np.array([1]), np.array([], dtype=np.int64), np.array([5, 2])])
    assert masked[0, 0] == NEG and masked[0, 1] == NEG and masked[0, 2] == 0.8
    assert masked[2, 5] == NEG and masked[2, 2] == NEG
    assert np.isfinite(masked[1, 1:]).all()
    assert SCORES[0, 1] == 0.9


def test_target_ranks_count_ties_against_the_target() -> None:
    masked = mask_known(SCORES, [np.array([1]), np.array([5]), np.array([5])])
    np.testing.assert_array_equal(target_ranks(masked, np.array([3, 3, 4])), RANKS)


def test_ranking_metrics_by_hand() -> None:
    metrics = ranking_metrics(RANKS, (1, 2))
    assert metrics["hr@1"] == pytest.approx(1 / 3)
    assert metrics["hr@2"] == pytest.approx(1.0)
    assert metrics["ndcg@1"] == pytest.approx(1 / 3)
    assert metrics["ndcg@2"] == pytest.approx((2 / math.log2(3) + 1) / 3)
    assert metrics["recall@1"] == metrics["hr@1"] and metrics["recall@2"] == metrics["hr@2"]


def test_evaluate_scorer_masks_known_items_across_batches(eval_set: EvalSet) -> None:
    metrics = evaluate_scorer(_fixed, eval_set, (1, 2), batch_size=2)
    assert metrics == pytest.approx(ranking_metrics(RANKS, (1, 2)))
    # without masking, user a's known row 1 (0.9) would push the target to rank 2 and out of hr@2
    assert metrics["hr@2"] == 1.0


def test_candidate_recall_is_the_hit_rate_at_the_candidate_set_size(eval_set: EvalSet) -> None:
    assert candidate_recall(_fixed, eval_set, 1) == pytest.approx(1 / 3)
    assert candidate_recall(_fixed, eval_set, 2) == 1.0


def test_rerank_puts_candidates_first_in_rerank_order_and_keeps_retrieval_order_below() -> None:
    # one user, 8 items; retrieval prefers lower rows; row 2 is known
    retrieval = np.array([[0.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    eval_set = make_eval_set(_seqs(["a"], [[2]]), _seqs(["a"], [[4]]))
    seen: list[np.ndarray] = []

    def rerank(positions: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        seen.append(candidates.copy())
        return candidates.astype(np.float64)  # the reranker prefers higher rows

    scorer = rerank_scorer(lambda p: retrieval[p], rerank, eval_set, candidates=3)
    scores = scorer(np.array([0]))
    assert sorted(seen[0][0].tolist()) == [1, 3, 4]  # retrieval's top 3 once row 2 is masked
    order = np.argsort(-scores[0], kind="stable")
    np.testing.assert_array_equal(order[:7], [4, 3, 1, 5, 6, 7, 8])
    assert scores[0, 0] == NEG and scores[0, 2] == NEG
    # the target (row 4) is retrieval's rank 2 but the reranker's rank 0
    assert evaluate_scorer(scorer, eval_set, (1,))["hr@1"] == 1.0
    assert evaluate_scorer(lambda p: retrieval[p], eval_set, (1,))["hr@1"] == 0.0


def test_rerank_leaves_masked_candidates_masked_when_too_few_items_remain() -> None:
    retrieval = np.array([[0.0, 0.9, 0.8, 0.7, 0.6]])
    eval_set = make_eval_set(_seqs(["a"], [[1, 2, 3]]), _seqs(["a"], [[4]]))
    scorer = rerank_scorer(lambda p: retrieval[p], lambda p, c: -c.astype(np.float64), eval_set,
                           candidates=3)
    scores = scorer(np.array([0]))
    assert np.isfinite(scores[0]).sum() == 1  # only row 4 is neither padding nor known
    assert np.argmax(scores[0]) == 4


def test_format_table_has_one_row_per_model() -> None:
    table = format_table({"pipeline": {"hr@10": 0.25}, "popularity": {}}, ("hr@10", "ndcg@10"))
    lines = table.splitlines()
    assert lines[0] == "| model | hr@10 | ndcg@10 |"
    assert lines[2] == "| pipeline | 0.2500 | nan |"
    assert lines[3].startswith("| popularity | nan")


def test_tied_users_are_those_whose_held_out_event_shares_the_last_history_second() -> None:
    def seqs(times: list[list[int]]) -> UserSequences:
        return UserSequences(["a", "b", "c"], [np.arange(1, len(t) + 1) for t in times],
                             [np.array(t, dtype=np.int64) for t in times])

    eval_set = make_eval_set(seqs([[1, 5], [1, 5], [7]]), seqs([[5], [6], [7]]))
    tied = tied_to_history(eval_set)
    assert tied.tolist() == [True, False, True]

    groups = metrics_by_group({"m": np.array([0, 20, 3])}, {"tied": tied, "untied": ~tied,
                                                           "none": np.zeros(3, dtype=bool)}, (10,))
    assert set(groups) == {"tied", "untied"}  # an empty group is left out
    assert groups["tied"]["users"]["n"] == 2 and groups["tied"]["m"]["hr@10"] == 1.0
    assert groups["untied"]["m"]["hr@10"] == 0.0


def test_the_service_ranks_as_many_candidates_as_training_evaluates_the_ranker_on() -> None:
    """The policy (ranker or retrieval order) and the README's pipeline figures are chosen and
    measured on the retrieval's top EvalConfig.candidates; serving more would serve the ranker
    on lists it was not measured on."""
    from recsys.settings import ServingSettings
    from training.config import EvalConfig
    assert ServingSettings.model_fields["ranked_candidates"].default == EvalConfig().candidates


def test_the_paired_bootstrap_holds_its_memory_to_batches() -> None:
    """BCa's jackknife is an [n, n - 1] array when done at once: 7.1 GB at 20,000 users. In
    batches it stays small, and the interval is the one the unbatched call gives."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    small = (rng.random(943) < 0.22).astype(float) - (rng.random(943) < 0.2).astype(float)
    whole = bootstrap((small,), np.mean, n_resamples=2000, confidence_level=0.95,
                      random_state=0, method="BCa").confidence_interval
    batched = mean_gain_interval(small)
    assert (batched["low"], batched["high"]) == (whole.low, whole.high)
    assert batched["gain"] == small.mean()
    large = (rng.random(20_000) < 0.22).astype(float) - (rng.random(20_000) < 0.2).astype(float)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        result = mean_gain_interval(large, resamples=200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6, f"{peak / 1e6:.0f} MB"
    assert result["low"] < large.mean() < result["high"]


def test_a_gain_that_is_all_zero_is_not_significant() -> None:
    ranks = np.array([0, 5, 20, 3])
    assert paired_gain(ranks, ranks)["hr@10"] == {"gain": 0.0, "low": 0.0, "high": 0.0,
                                                   "significant": 0.0}
