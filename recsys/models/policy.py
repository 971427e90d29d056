"""Which path a user's list takes, by how many events the user has: chosen on validation when the
model set was trained, recorded in the ranker bundle, followed by serving and by the offline
evaluation alike.

Paths, by the user's number of events n:
- "popularity": n = 0, the most popular items (a new user);
- "item_to_item": 1 <= n <= short_history, the items nearest the mean of the user's item
  vectors, in that order (with one or two events the two-tower's user vector and the ranker
  trail plain item-to-item similarity on held-out events; validation says how far that holds);
- "retrieval": the user tower's candidates in retrieval order, for short_history < n <=
  retrieval_until (histories too short for the ranker to beat that order on validation), or
  for every n > short_history when the ranker did not beat it on validation at all (use_ranker
  is False): the ranker is not run;
- "ranker": the user tower's candidates ordered by the ranker: the first `ranked_candidates`
  of them in retrieval order (the depth that scored best on validation; scoring fewer
  candidates also costs less), never more than the service's RECSYS_RANKED_CANDIDATES.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

PATHS = ("popularity", "item_to_item", "retrieval", "ranker")
METADATA_KEY = "ranking_policy"


@dataclass(frozen=True)
class RankingPolicy:
    short_history: int = 0
    use_ranker: bool = True
    retrieval_until: int = 0
    ranked_candidates: int | None = None  # None: as many as the service allows

    def depth(self, most: int) -> int:
        """Candidates the ranker scores where the service allows at most `most`."""
        return most if self.ranked_candidates is None else min(most, self.ranked_candidates)

    def path_for(self, events: int) -> str:
        if events == 0:
            return "popularity"
        if events <= self.short_history:
            return "item_to_item"
        if not self.use_ranker or events <= self.retrieval_until:
            return "retrieval"
        return "ranker"

    @property
    def events_to_rank(self) -> int:
        """The fewest events that take a user down the policy's last path."""
        return max(self.short_history, self.retrieval_until if self.use_ranker else 0) + 1

    def describe(self) -> str:
        parts = ["popularity for new users"]
        if self.short_history:
            parts.append(f"item-to-item for {_events(1, self.short_history)}")
        if not self.use_ranker:
            parts.append("retrieval order above (the ranker lost on validation)")
            return ", ".join(parts)
        if self.retrieval_until > self.short_history:
            parts.append("retrieval order for "
                         f"{_events(self.short_history + 1, self.retrieval_until)}")
        parts.append("the ranker above" if self.ranked_candidates is None else
                     f"the ranker above (on the first {self.ranked_candidates} candidates)")
        return ", ".join(parts)

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> RankingPolicy:
        """The policy a ranker bundle records; bundles written before it existed rank every
        user with history, as they were served then."""
        recorded = metadata.get(METADATA_KEY) or {}
        depth = recorded.get("ranked_candidates")
        return cls(short_history=int(recorded.get("short_history", 0)),
                   use_ranker=bool(recorded.get("use_ranker", True)),
                   retrieval_until=int(recorded.get("retrieval_until", 0)),
                   ranked_candidates=None if depth is None else int(depth))


def _events(first: int, last: int) -> str:
    """"1 event", "2 events", "1-3 events"."""
    if first == last:
        return f"{first} event" + ("s" if first > 1 else "")
    return f"{first}-{last} events"


def item_to_item_vector(item_vectors: npt.NDArray[np.float32],
                        rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """[D] the mean of the items' vectors: its inner product with an item is the item's mean
    similarity to them, so retrieval by it is item-to-item over the whole history."""
    return np.asarray(item_vectors[rows].mean(axis=0), dtype=np.float32)
