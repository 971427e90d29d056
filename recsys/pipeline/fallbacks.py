"""Stand-ins for a failed stage: a user vector without the tower, candidates without retrieval.

Both read prefixes of the catalogue's popularity order, sorted once per catalogue: the degraded
path is the overload path, where per-request work hurts most.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys.features import ItemCatalog, recent_rows
from recsys.pipeline.retrieval import Candidates

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
COLD_START_ITEMS = 100  # popular items averaged for a user without history
FALLBACK_CANDIDATES = 1000  # popular items served when every retrieval source failed


def fallback_user_vector(catalog: ItemCatalog, item_vectors: FloatArray,
                         history: IntArray) -> FloatArray:
    """When the user tower fails: the mean vector of the user's recent items (padded history
    [H]), or of the most popular items for a user without history, normalised like the tower's
    output."""
    rows = recent_rows(history)
    if rows.size == 0:
        rows = catalog.popular_rows[:COLD_START_ITEMS]
    mean = item_vectors[rows].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def popularity_candidates(catalog: ItemCatalog) -> Candidates:
    """The most popular items in popularity order, scored by their share of the training
    interactions: a cold-start user's list, and the last resort when every retrieval source
    failed (then scored by the user vector, `Candidates.scored_by`)."""
    items = catalog.popular_rows[:FALLBACK_CANDIDATES]
    counts = catalog.served_popularity[items]
    share = (counts / max(float(catalog.served_popularity.sum()), 1.0)).astype(np.float32)
    return Candidates(items, share, ("popular",), np.ones((len(items), 1), dtype=bool), ())
