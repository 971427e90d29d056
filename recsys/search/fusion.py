"""Merging ranked lists: weighted reciprocal rank fusion (Cormack, Clarke and Buettcher,
SIGIR 2009, with a weight per list).

An item's fused score is the sum, over the lists that hold it, of w / (k + its rank there),
ranks counted from 1 and w the list's weight. The lists' own scores (BM25, inner products) are
never compared, so no list needs calibrating against another; k damps the weight of the very
first ranks (large k: the lists count alike down to deep ranks; small k: the top of each list
dominates), and a list of weight w counts as w lists that agree. k and the weights are chosen on
validation queries (training/search_eval.py), never by hand. Each item appears once; ties go to
the more popular item, then the lower catalogue row.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Ranked:
    """One retriever's answer: catalogue rows, best first, with its own scores."""

    rows: IntArray
    scores: FloatArray

    @classmethod
    def empty(cls) -> Ranked:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


@dataclass(frozen=True)
class Fused:
    rows: IntArray  # [N] best first, each once
    scores: FloatArray  # [N] fused scores
    names: tuple[str, ...]  # [L] the lists fused
    found: BoolArray  # [N, L] which lists held each item

    def found_by(self, position: int) -> list[str]:
        return [n for n, hit in zip(self.names, self.found[position]) if hit]


@dataclass(frozen=True)
class FusionRule:
    """k and the weight of each list by name (a list not named weighs 1)."""

    k: float = 60.0
    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k <= 0 or any(w < 0 for w in self.weights.values()):
            raise ValueError(f"fusion needs k > 0 and weights >= 0, got k={self.k}, "
                             f"weights={dict(self.weights)}")

    def fuse(self, lists: Mapping[str, IntArray], popularity: FloatArray) -> Fused:
        """Fuse `lists` (name -> rows best first); `popularity` [n+1] breaks ties."""
        return reciprocal_rank_fusion(lists, self.k, popularity,
                                      [self.weights.get(name, 1.0) for name in lists])


def reciprocal_rank_fusion(lists: Mapping[str, IntArray], k: float, popularity: FloatArray,
                           weights: list[float] | None = None) -> Fused:
    """Fuse `lists` (name -> rows best first) with one weight per list (default 1 each);
    `popularity` [n+1] breaks ties."""
    names = tuple(lists)
    if not any(len(rows) for rows in lists.values()):
        return Fused(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), names,
                     np.zeros((0, len(names)), dtype=bool))
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in lists.values()])
    which = np.repeat(np.arange(len(names)), [len(r) for r in lists.values()])
    ranks = np.concatenate([np.arange(1, len(r) + 1) for r in lists.values()])
    items, inverse = np.unique(rows, return_inverse=True)
    scores = np.zeros(len(items), dtype=np.float64)
    weight = np.repeat(np.asarray(weights if weights is not None else [1.0] * len(names),
                                  dtype=np.float64), [len(r) for r in lists.values()])
    np.add.at(scores, inverse, weight / (k + ranks))
    found = np.zeros((len(items), len(names)), dtype=bool)
    found[inverse, which] = True
    order = np.lexsort((items, -popularity[items], -scores))
    return Fused(items[order], scores[order].astype(np.float32), names, found[order])


def personal_list(lists: Mapping[str, Ranked], item_vectors: FloatArray,
                  user: FloatArray) -> Ranked:
    """Every row the `lists` hold, ordered by the user's taste: the personalised list."""
    rows = [ranked.rows for ranked in lists.values()]
    union = np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)
    return by_similarity(union, item_vectors, user)


def by_similarity(rows: IntArray, item_vectors: FloatArray, user: FloatArray) -> Ranked:
    """`rows` ordered by their inner product with the user vector [D], highest first."""
    similarity = (item_vectors[rows] @ user).astype(np.float32)
    order = np.argsort(-similarity, kind="stable")
    return Ranked(rows[order], similarity[order])
