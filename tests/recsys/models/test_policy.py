"""The ranking policy (recsys/models/policy.py): a path per history length, kept in the bundle."""
from __future__ import annotations

import numpy as np

from recsys.models.policy import PATHS, RankingPolicy, item_to_item_vector


def test_each_history_length_takes_its_path() -> None:
    policy = RankingPolicy(short_history=2, use_ranker=True)
    assert [policy.path_for(n) for n in (0, 1, 2, 3, 50)] == [
        "popularity", "item_to_item", "item_to_item", "ranker", "ranker"]
    lost = RankingPolicy(short_history=0, use_ranker=False, retrieval_until=3)
    assert [lost.path_for(n) for n in (0, 1, 50)] == ["popularity", "retrieval", "retrieval"]
    short = RankingPolicy(short_history=1, use_ranker=True, retrieval_until=5)
    assert [short.path_for(n) for n in (0, 1, 2, 5, 6, 50)] == [
        "popularity", "item_to_item", "retrieval", "retrieval", "ranker", "ranker"]
    assert {p for n in range(7) for p in (policy.path_for(n), lost.path_for(n),
                                          short.path_for(n))} == set(PATHS)
    # the fewest events that reach the last path (what a new model set is warmed with)
    assert [p.events_to_rank for p in (policy, lost, short)] == [3, 1, 6]
    assert [p.path_for(p.events_to_rank) for p in (policy, lost, short)] == [
        "ranker", "retrieval", "ranker"]


def test_the_policy_round_trips_through_bundle_metadata_and_old_bundles_rank_everyone() -> None:
    policy = RankingPolicy(short_history=3, use_ranker=False)
    assert RankingPolicy.from_metadata({"ranking_policy": policy.to_metadata()}) == policy
    assert RankingPolicy.from_metadata({}) == RankingPolicy(short_history=0, use_ranker=True)
    # bundles written before retrieval_until existed rank every history past item-to-item
    assert RankingPolicy.from_metadata(
        {"ranking_policy": {"short_history": 2, "use_ranker": True}}).retrieval_until == 0
    assert "retrieval order" in policy.describe() and "1-3 events" in policy.describe()
    assert "the ranker" in RankingPolicy().describe()
    assert RankingPolicy(short_history=1, retrieval_until=5).describe() == (
        "popularity for new users, item-to-item for 1 event, retrieval order for 2-5 events, "
        "the ranker above")


def test_the_ranker_depth_is_the_policys_at_most_the_services_and_old_bundles_have_none() -> None:
    deep = RankingPolicy(ranked_candidates=150)
    assert [deep.depth(most) for most in (200, 150, 100)] == [150, 150, 100]
    assert RankingPolicy().depth(200) == 200  # none chosen: as many as the service allows
    assert RankingPolicy.from_metadata({"ranking_policy": deep.to_metadata()}) == deep
    assert RankingPolicy.from_metadata(
        {"ranking_policy": {"short_history": 2, "use_ranker": True}}).ranked_candidates is None
    assert deep.describe() == \
        "popularity for new users, the ranker above (on the first 150 candidates)"


def test_the_item_to_item_vector_scores_items_by_mean_similarity_to_the_history() -> None:
    vectors = np.array([[0, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    query = item_to_item_vector(vectors, np.array([1, 2]))
    assert query.dtype == np.float32
    np.testing.assert_allclose(vectors @ query, (vectors @ vectors[1] + vectors @ vectors[2]) / 2)
