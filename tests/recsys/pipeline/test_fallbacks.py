"""Stand-ins for failed stages: the mean-of-items user vector and popular candidates, and what
they cost on a 1M-item catalogue (the degraded path is the overload path)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from recsys.features import ItemCatalog, encode_history
from recsys.pipeline.fallbacks import (
    COLD_START_ITEMS,
    FALLBACK_CANDIDATES,
    fallback_user_vector,
    popularity_candidates,
)

DIM = 8


def catalog_of(n_items: int, seed: int = 0) -> tuple[ItemCatalog, np.ndarray]:
    """A catalogue of `n_items` with random popularity, and unit item vectors [n+1, DIM]."""
    rng = np.random.default_rng(seed)
    popularity = rng.integers(0, 10_000, n_items + 1).astype(np.float32)
    popularity[0] = 0.0
    catalog = ItemCatalog(
        item_ids=np.array([""] + [f"i{n}" for n in range(1, n_items + 1)], dtype=np.str_),
        titles=np.full(n_items + 1, "t", dtype=np.str_), genre_vocab=("a", "b"),
        genres=np.zeros((n_items + 1, 2), np.float32),
        title_tokens=np.zeros((n_items + 1, 1), np.int64), popularity=popularity,
        novelty=np.zeros(n_items + 1, np.float32))
    vectors = rng.standard_normal((n_items + 1, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[0] = 0.0
    return catalog, vectors


def test_popular_rows_are_by_popularity_without_the_padding_row() -> None:
    catalog, _ = catalog_of(500)
    rows = catalog.popular_rows

    assert len(rows) == 500 and 0 not in rows
    assert np.all(np.diff(catalog.popularity[rows]) <= 0)
    assert catalog.popular_rows is rows  # sorted once per catalogue
    with pytest.raises(ValueError, match="read-only"):
        rows[0] = 1


def test_a_user_without_history_gets_the_mean_of_the_most_popular_items() -> None:
    catalog, vectors = catalog_of(500)
    vector = fallback_user_vector(catalog, vectors, encode_history([], 10))

    mean = vectors[catalog.popular_rows[:COLD_START_ITEMS]].mean(axis=0)
    np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), rtol=1e-5)


def test_a_user_with_history_gets_the_mean_of_their_items() -> None:
    catalog, vectors = catalog_of(500)
    vector = fallback_user_vector(catalog, vectors, encode_history([7, 9], 10))

    mean = vectors[[7, 9]].mean(axis=0)
    np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), rtol=1e-5)


def test_popularity_candidates_come_in_popularity_order() -> None:
    catalog, vectors = catalog_of(5000)
    user = vectors[3]
    candidates = popularity_candidates(catalog)
    scored = candidates.scored_by(vectors, user)

    assert candidates.items.tolist() == catalog.popular_rows[:FALLBACK_CANDIDATES].tolist()
    shares = catalog.popularity[candidates.items] / catalog.popularity.sum()
    np.testing.assert_allclose(candidates.similarity, shares, rtol=1e-6)
    assert (np.diff(candidates.similarity) <= 0).all()  # the cold-start order, best first
    assert scored.items is candidates.items
    np.testing.assert_allclose(scored.similarity, vectors[candidates.items] @ user, rtol=1e-6)
    assert scored.source_names == ("popular",) and scored.source_mask.all()


def test_new_users_get_the_served_counts_order_not_the_ranking_features() -> None:
    catalog, _ = catalog_of(300)
    rng = np.random.default_rng(1)
    served = rng.integers(0, 10_000, 301).astype(np.float32)
    served[0] = 0.0
    catalog = dataclasses.replace(catalog, served_counts=served)
    candidates = popularity_candidates(catalog)

    expected = np.argsort(-served[1:], kind="stable") + 1
    assert candidates.items.tolist() == expected[:FALLBACK_CANDIDATES].tolist()
    assert candidates.items.tolist() != (np.argsort(-catalog.popularity[1:], kind="stable")
                                         + 1)[:FALLBACK_CANDIDATES].tolist()
    np.testing.assert_allclose(candidates.similarity, served[candidates.items] / served.sum(),
                               rtol=1e-6)


def test_the_degraded_path_at_1m_items_does_not_sort_the_catalogue() -> None:
    """Both fallbacks read a prefix of the order sorted once: per request they cost what 1,000
    items cost, not a sort of 1M (which took ~0.1 s a call, against a 0.15 s budget)."""
    catalog, vectors = catalog_of(1_000_000)
    started = time.perf_counter()
    order = catalog.popular_rows  # the one sort, done when the slot is built
    sort_s = time.perf_counter() - started
    history = encode_history([], 20)

    started = time.perf_counter()
    for _ in range(20):
        user = fallback_user_vector(catalog, vectors, history)
        candidates = popularity_candidates(catalog).scored_by(vectors, user)
    per_request_s = (time.perf_counter() - started) / 20

    assert np.shares_memory(candidates.items, order)  # a view of the sorted order, no copy
    assert catalog.popular_rows is order
    print(f"\n1M items: the one sort {sort_s * 1000:.1f} ms, the degraded path "
          f"{per_request_s * 1000:.2f} ms a request")
    assert per_request_s < sort_s / 5, (per_request_s, sort_s)
