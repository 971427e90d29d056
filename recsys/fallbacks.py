"""Stand-ins for a failed stage: a user vector without the tower, candidates without retrieval."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys.features import PAD, recent_rows
from recsys.retrieval import Candidates
from recsys.slots import ModelSlot

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def fallback_user_vector(slot: ModelSlot, history: IntArray) -> FloatArray:
    """When the user tower fails: the mean vector of the user's recent items, or of the most
    popular items for a user without history, normalised like the tower's output."""
    vectors = slot.embedding.item_vectors
    rows = recent_rows(history)
    if rows.size == 0:
        popularity = slot.embedding.catalog.popularity
        rows = np.argsort(-popularity, kind="stable")[:100]
        rows = rows[rows != PAD]
    mean = vectors[rows].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def popularity_candidates(slot: ModelSlot, user: FloatArray) -> Candidates:
    """Last resort when every retrieval source failed: the most popular items."""
    popularity = slot.embedding.catalog.popularity
    items = np.argsort(-popularity, kind="stable")
    items = items[items != PAD][:1000].astype(np.int64)
    similarity = (slot.embedding.item_vectors[items] @ user).astype(np.float32)
    return Candidates(items, similarity, ("popular",), np.ones((len(items), 1), dtype=bool), ())
