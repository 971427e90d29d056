"""A model slot: everything one model alias (champion, challenger) needs to serve a request."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from recsys.bundles import EmbeddingBundle
from recsys.features import FeatureScaler
from recsys.ranking import RankerChain
from recsys.request import RecommendRequest
from recsys.retrieval import Retriever

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
UserTower = Callable[[IntArray, IntArray], Awaitable[FloatArray]]  # [1,H],[1,A] -> [1,D]
RESULT_KEYS_KEPT = 10_000


@dataclass
class ModelSlot:
    """Everything one model alias (champion, challenger) needs to serve a request."""

    alias: str
    versions: dict[str, str]
    embedding: EmbeddingBundle
    scaler: FeatureScaler
    user_tower: UserTower
    retriever: Retriever
    ranker: RankerChain
    item_rows: dict[str, int] = field(default_factory=dict)
    genre_index: dict[str, int] = field(default_factory=dict)
    user_rows: dict[str, int] = field(default_factory=dict)
    # request -> its result cache key: a repeat (every cache hit) skips hashing the request.
    result_keys: LRUCache[RecommendRequest, str] = field(
        default_factory=lambda: LRUCache(maxsize=RESULT_KEYS_KEPT))

    def __post_init__(self) -> None:
        self.item_rows = self.embedding.catalog.index_lookup()
        self.genre_index = {g: i for i, g in enumerate(self.embedding.catalog.genre_vocab)}
        users = self.embedding.users
        self.user_rows = {} if users is None else {u: i for i, u in enumerate(users.user_ids)}
