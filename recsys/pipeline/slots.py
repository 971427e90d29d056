"""A model slot: one model alias (champion, challenger), its models and the facts that belong to
them, so that a challenger of another shape (history length, catalogue) serves unchanged."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from recsys.errors import UnknownIdError
from recsys.features import FeatureScaler, ItemCatalog
from recsys.models.bundles import EmbeddingBundle
from recsys.models.neighbours import ItemNeighbours
from recsys.models.policy import RankingPolicy
from recsys.pipeline.fallbacks import popularity_candidates
from recsys.pipeline.ranking import RankerChain
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.retrieval import Candidates, Retriever
from recsys.pipeline.towers import UserTower
from recsys.search.engine import SearchEngine

IntArray = npt.NDArray[np.int64]
RESULT_KEYS_KEPT = 10_000
UNKNOWN_SHOWN = 5  # unknown ids named in an error message


@dataclass
class ModelSlot:
    """Everything one model alias needs to serve a request."""

    alias: str
    versions: dict[str, str]  # kind -> BentoML tag
    embedding: EmbeddingBundle
    scaler: FeatureScaler  # the ranker's feature standardisation
    user_tower: UserTower
    tower_timeout_s: float
    retriever: Retriever
    ranker: RankerChain
    # which path a user's list takes by their number of events (recsys/models/policy.py)
    policy: RankingPolicy = field(default_factory=RankingPolicy)
    # /search over this slot's catalogue, built with it (None: RECSYS_SEARCH=false)
    search: SearchEngine | None = None
    item_rows: dict[str, int] = field(init=False)
    genre_index: dict[str, int] = field(init=False)
    user_rows: dict[str, int] = field(init=False)
    # the most popular items, scored by popularity: the cold-start list, built once per slot
    popular: Candidates = field(init=False)
    # request -> its result cache key: a repeat (every cache hit) skips hashing the request.
    result_keys: LRUCache[RecommendRequest, str] = field(
        init=False, default_factory=lambda: LRUCache(maxsize=RESULT_KEYS_KEPT))

    def __post_init__(self) -> None:
        self.item_rows = self.catalog.index_lookup()
        self.genre_index = {g: i for i, g in enumerate(self.catalog.genre_vocab)}
        users = self.embedding.users
        self.user_rows = {} if users is None else {u: i for i, u in enumerate(users.user_ids)}
        self.popular = popularity_candidates(self.catalog)

    @property
    def catalog(self) -> ItemCatalog:
        return self.embedding.catalog

    @property
    def neighbours(self) -> ItemNeighbours:
        """Each item's nearest other items (/similar_items; item-to-item retrieval shares it)."""
        return self.embedding.neighbours

    @property
    def history_len(self) -> int:
        """Items of history this slot's user tower reads (its own, not the champion's)."""
        return self.embedding.history_len

    def most_active_users(self, count: int) -> list[str]:
        """Known users (of the training snapshot) by how many items they have seen, most first."""
        users = self.embedding.users
        return [] if users is None or count <= 0 else users.most_active(count)

    def rows_of(self, item_ids: tuple[str, ...], field_name: str) -> IntArray:
        """Catalogue rows of `item_ids`, in order; UnknownIdError names the request field and
        the first unknown ids."""
        if not item_ids:  # most requests: no recent or excluded items
            return np.zeros(0, dtype=np.int64)
        unknown = [i for i in item_ids if i not in self.item_rows]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:UNKNOWN_SHOWN])
            more = " and more" if len(unknown) > UNKNOWN_SHOWN else ""
            raise UnknownIdError(field_name, f"unknown item id(s) {shown}{more}")
        return np.fromiter((self.item_rows[i] for i in item_ids), dtype=np.int64,
                           count=len(item_ids))

    def genres_of(self, names: tuple[str, ...], field_name: str) -> IntArray | None:
        """Genre columns of category `names`; None when there are none (no filter)."""
        if not names:
            return None
        unknown = [n for n in names if n not in self.genre_index]
        if unknown:
            raise UnknownIdError(field_name, f"unknown categor(ies) {unknown}; known: "
                                 f"{sorted(self.genre_index)}")
        return np.asarray([self.genre_index[n] for n in names], dtype=np.int64)
