"""Business rules after retrieval and ranking: seen/excluded removal, category filters, diversity."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys.features import ItemCatalog
from recsys.pipeline.retrieval import Candidates

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def filter_candidates(candidates: Candidates, exclude: IntArray, catalog: ItemCatalog,
                      include_genres: IntArray | None, exclude_genres: IntArray | None) -> Candidates:
    """Drop excluded rows, items without any of include_genres, items with any of exclude_genres.

    `exclude` is sorted and unique (what np.union1d and np.unique return). Genre arguments are
    column indices into catalog.genres; None means no filter.
    """
    keep = ~in_sorted(candidates.items, exclude)
    if include_genres is not None and include_genres.size:
        keep &= catalog.genres[candidates.items][:, include_genres].any(axis=1)
    if exclude_genres is not None and exclude_genres.size:
        keep &= ~catalog.genres[candidates.items][:, exclude_genres].any(axis=1)
    return candidates.select(keep)


def in_sorted(values: IntArray, sorted_set: IntArray) -> npt.NDArray[np.bool_]:
    """np.isin(values, sorted_set) for a sorted, unique `sorted_set`: one binary search per value.
    For 1,100 candidates and 300 seen rows, 37 µs against np.isin's 171 µs (which sorts both)."""
    if sorted_set.size == 0:
        return np.zeros(len(values), dtype=bool)
    where = np.searchsorted(sorted_set, values)
    where[where == sorted_set.size] = 0
    return sorted_set[where] == values


def primary_genre(catalog: ItemCatalog, items: IntArray) -> IntArray:
    """Index of each item's first genre, -1 when it has none."""
    genres = catalog.genres[items] > 0
    return np.where(genres.any(axis=1), genres.argmax(axis=1), -1).astype(np.int64)


def top_k(scores: FloatArray, k: int) -> IntArray:
    """Positions of the k highest scores, best first; ties keep their order."""
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)


def rerank(scores: FloatArray, items: IntArray, item_vectors: FloatArray, catalog: ItemCatalog,
           k: int, diversity: float, max_per_category: int) -> IntArray:
    """diversify for catalogue rows `items`: their vectors and categories are gathered only when
    diversity or the category cap is on (by default both are off: a top-k by score)."""
    if diversity == 0.0 and max_per_category == 0:
        return top_k(scores, k)
    return diversify(scores, item_vectors[items], primary_genre(catalog, items), k, diversity,
                     max_per_category)


def diversify(scores: FloatArray, vectors: FloatArray, categories: IntArray, k: int,
              diversity: float, max_per_category: int) -> IntArray:
    """Positions of the k items to show, in order.

    diversity=0 and max_per_category=0 keep score order. Otherwise maximal marginal relevance:
    each pick maximises (1-λ)·relevance − λ·max cosine to the items already picked (relevance is
    the score min-max scaled to [0, 1]); and at most max_per_category items share a category.
    """
    n = len(scores)
    k = min(k, n)
    if n == 0 or (diversity == 0.0 and max_per_category == 0):
        return top_k(scores, k)
    span = float(scores.max() - scores.min())
    relevance = (scores - scores.min()) / span if span > 0 else np.ones(n, dtype=np.float32)
    redundancy = np.zeros(n, dtype=np.float32)
    available = np.ones(n, dtype=bool)
    counts: dict[int, int] = {}
    picked: list[int] = []
    while len(picked) < k and available.any():
        value = np.where(available, (1 - diversity) * relevance - diversity * redundancy, -np.inf)
        best = int(np.argmax(value))
        available[best] = False
        category = int(categories[best])
        if max_per_category and category >= 0 and counts.get(category, 0) >= max_per_category:
            continue
        counts[category] = counts.get(category, 0) + 1
        picked.append(best)
        if diversity > 0:
            redundancy = np.maximum(redundancy, vectors @ vectors[best])
    return np.asarray(picked, dtype=np.int64)
