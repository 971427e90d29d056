"""Business rules after ranking: seen/excluded removal, category filters, MMR diversity and caps."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.features import ItemCatalog
from recsys.pipeline.reranking import (
    diversify,
    filter_candidates,
    in_sorted,
    primary_genre,
    rerank,
)
from recsys.pipeline.retrieval import Candidates
from tests.support.bundle_factory import GENRES, make_catalog

N_ITEMS = 40


@pytest.fixture(scope="module")
def catalog() -> ItemCatalog:
    return make_catalog(N_ITEMS, seed=3)


def candidates_for(rows: np.ndarray) -> Candidates:
    """Candidates over `rows` in the given order, proposed by two sources alternately."""
    rows = np.asarray(rows, dtype=np.int64)
    mask = np.stack([np.arange(len(rows)) % 2 == 0, np.arange(len(rows)) % 2 == 1], axis=1)
    similarity = np.linspace(1.0, 0.0, len(rows), dtype=np.float32)
    return Candidates(rows, similarity, ("ann", "popular"), mask, ("item2item",))


def genre(name: str) -> np.ndarray:
    return np.asarray([GENRES.index(name)], dtype=np.int64)


# ---- filter_candidates --------------------------------------------------------------------

def test_filter_drops_excluded_rows_and_keeps_order_and_sources(catalog: ItemCatalog) -> None:
    original = candidates_for(np.arange(1, N_ITEMS + 1)[::-1])
    excluded = np.asarray([3, 17, 40], dtype=np.int64)
    kept = filter_candidates(original, excluded, catalog, None, None)
    assert not np.isin(kept.items, excluded).any()
    assert len(kept.items) == N_ITEMS - 3
    positions = [int(np.flatnonzero(original.items == row)[0]) for row in kept.items]
    assert positions == sorted(positions)  # retrieval order preserved
    for new, old in enumerate(positions):
        assert kept.sources_of(new) == original.sources_of(old)
        assert kept.similarity[new] == original.similarity[old]
    assert kept.failed == ("item2item",)


def test_membership_in_a_sorted_set_is_np_isin() -> None:
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 300):
        sorted_set = np.unique(rng.integers(1, 2_000, size)).astype(np.int64)
        values = rng.integers(0, 2_100, 1_100).astype(np.int64)  # below, inside and past it
        np.testing.assert_array_equal(in_sorted(values, sorted_set), np.isin(values, sorted_set))
    assert in_sorted(np.zeros(0, dtype=np.int64), np.array([1, 2])).shape == (0,)


def test_filter_include_genres_keeps_only_items_with_one_of_them(catalog: ItemCatalog) -> None:
    original = candidates_for(np.arange(1, N_ITEMS + 1))
    include = np.asarray([GENRES.index("comedy"), GENRES.index("horror")], dtype=np.int64)
    kept = filter_candidates(original, np.zeros(0, np.int64), catalog, include, None)
    has_one = catalog.genres[:, include].any(axis=1)
    assert 0 < len(kept.items) < N_ITEMS
    assert has_one[kept.items].all()
    dropped = np.setdiff1d(original.items, kept.items)
    assert not has_one[dropped].any()


def test_filter_exclude_genres_drops_items_with_any_of_them(catalog: ItemCatalog) -> None:
    original = candidates_for(np.arange(1, N_ITEMS + 1))
    kept = filter_candidates(original, np.zeros(0, np.int64), catalog, None, genre("drama"))
    has_drama = catalog.genres[:, GENRES.index("drama")] > 0
    assert 0 < len(kept.items) < N_ITEMS
    assert not has_drama[kept.items].any()
    assert has_drama[np.setdiff1d(original.items, kept.items)].all()


def test_filter_combines_exclusions_include_and_exclude(catalog: ItemCatalog) -> None:
    original = candidates_for(np.arange(1, N_ITEMS + 1))
    excluded = np.arange(1, 6, dtype=np.int64)
    kept = filter_candidates(original, excluded, catalog, genre("action"), genre("comedy"))
    genres = catalog.genres[kept.items]
    assert not np.isin(kept.items, excluded).any()
    assert (genres[:, GENRES.index("action")] > 0).all()
    assert (genres[:, GENRES.index("comedy")] == 0).all()


def test_filter_with_no_rules_keeps_everything(catalog: ItemCatalog) -> None:
    original = candidates_for(np.arange(1, N_ITEMS + 1))
    empty = np.zeros(0, np.int64)
    kept = filter_candidates(original, empty, catalog, empty, empty)
    np.testing.assert_array_equal(kept.items, original.items)


# ---- diversify ----------------------------------------------------------------------------

def clustered(n_clusters: int = 4, per_cluster: int = 6, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Unit vectors in tight clusters; cluster 0 holds the highest scores, so score order alone
    fills the top-k with near-duplicates. Returns (scores, vectors, categories)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(n_clusters, 8, dtype=np.float32)
    vectors = np.repeat(centres, per_cluster, axis=0)
    vectors += rng.normal(0, 0.05, vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    scores = (1.0 - 0.2 * cluster + rng.uniform(0, 0.05, len(cluster))).astype(np.float32)
    return scores, vectors, cluster.astype(np.int64)


def mean_pairwise_similarity(vectors: np.ndarray) -> float:
    sims = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), k=1)
    return float(sims[upper].mean())


def test_diversity_zero_keeps_score_order() -> None:
    scores, vectors, categories = clustered()
    order = diversify(scores, vectors, categories, 10, 0.0, 0)
    np.testing.assert_array_equal(order, np.argsort(-scores, kind="stable")[:10])


def test_diversity_reduces_similarity_within_the_top_k() -> None:
    scores, vectors, categories = clustered()
    plain = diversify(scores, vectors, categories, 6, 0.0, 0)
    diverse = diversify(scores, vectors, categories, 6, 0.5, 0)
    assert len(diverse) == 6 and len(set(diverse.tolist())) == 6
    assert diverse[0] == plain[0]  # the best item still leads
    assert mean_pairwise_similarity(vectors[diverse]) < mean_pairwise_similarity(vectors[plain]) - 0.2
    assert len(set(categories[diverse].tolist())) > len(set(categories[plain].tolist()))


def test_max_per_category_caps_each_category() -> None:
    scores, vectors, categories = clustered()
    order = diversify(scores, vectors, categories, 8, 0.0, 2)
    assert len(order) == 8
    counts = np.bincount(categories[order])
    assert counts.max() == 2
    kept_scores = scores[order]
    assert (np.diff(kept_scores) <= 0).all()  # without diversity the cap keeps score order


def test_items_without_a_genre_are_not_capped(catalog: ItemCatalog) -> None:
    rows = np.arange(1, 11, dtype=np.int64)
    categories = primary_genre(catalog, rows)
    assert (categories >= 0).all()
    categories[:5] = -1  # as primary_genre reports an item with no genre
    scores = np.linspace(1.0, 0.1, 10).astype(np.float32)
    vectors = np.eye(10, dtype=np.float32)
    order = diversify(scores, vectors, categories, 10, 0.0, 1)
    assert set(range(5)) <= set(order.tolist())


def test_primary_genre_is_first_genre_or_minus_one(catalog: ItemCatalog) -> None:
    rows = np.arange(0, N_ITEMS + 1, dtype=np.int64)
    first = primary_genre(catalog, rows)
    assert first[0] == -1  # the padding row has no genre
    for row in rows[1:]:
        assert first[row] == int(np.flatnonzero(catalog.genres[row])[0])


@pytest.mark.parametrize("diversity, cap", [(0.0, 0), (0.3, 0), (0.0, 3)])
def test_k_larger_than_candidates_returns_each_candidate_once(diversity: float, cap: int) -> None:
    scores = np.asarray([0.3, 0.9, 0.5, 0.1], dtype=np.float32)
    vectors = np.eye(4, dtype=np.float32)
    order = diversify(scores, vectors, np.arange(4, dtype=np.int64), 50, diversity, cap)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert order[0] == 1


@pytest.mark.parametrize("diversity, cap", [(0.0, 0), (0.4, 0), (0.0, 1), (0.4, 2)])
def test_rerank_of_catalogue_rows_equals_diversify_on_their_vectors_and_genres(
        catalog: ItemCatalog, diversity: float, cap: int) -> None:
    rng = np.random.default_rng(3)
    rows = rng.permutation(np.arange(1, N_ITEMS + 1))[:12].astype(np.int64)
    vectors = rng.standard_normal((N_ITEMS + 1, 4)).astype(np.float32)
    scores = rng.random(len(rows)).astype(np.float32)
    expected = diversify(scores, vectors[rows], primary_genre(catalog, rows), 6, diversity, cap)
    np.testing.assert_array_equal(rerank(scores, rows, vectors, catalog, 6, diversity, cap),
                                  expected)


def test_no_candidates_gives_an_empty_order() -> None:
    order = diversify(np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                      np.zeros(0, np.int64), 10, 0.5, 2)
    assert order.shape == (0,) and order.dtype == np.int64


def test_equal_scores_with_diversity_pick_distinct_items() -> None:
    scores = np.full(5, 0.7, dtype=np.float32)
    vectors = np.eye(5, dtype=np.float32)
    order = diversify(scores, vectors, np.zeros(5, dtype=np.int64), 3, 0.5, 0)
    assert len(set(order.tolist())) == 3
