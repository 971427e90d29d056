"""POST /similar_items: an item's nearest neighbours among the champion's items (its neighbour
table, else its index searched: recsys/models/neighbours.py)."""
from __future__ import annotations

from typing import Any

import numpy as np

from recsys.errors import NotFoundError
from recsys.features import PAD
from recsys.pipeline.resolver import RequestResolver


class SimilarItems:
    def __init__(self, resolver: RequestResolver) -> None:
        self.resolver = resolver

    async def find_similar(self, item_id: str, k: int) -> dict[str, Any]:
        """The k items nearest `item_id` by item vector (itself left out), best first, each
        scored by its inner product with the item; NotFoundError when the champion's catalogue
        lacks it."""
        slot = self.resolver.champion
        row = slot.item_rows.get(item_id)
        if row is None:
            raise NotFoundError("item_id", f"unknown item id {item_id!r}")
        vectors, catalog = slot.embedding.item_vectors, slot.catalog
        found = slot.neighbours.of(np.asarray([row], dtype=np.int64), k)[0]
        found = found[found > PAD]
        scores = vectors[found] @ vectors[row]
        best = np.argsort(-scores, kind="stable")
        items = [{"item_id": str(catalog.item_ids[i]), "title": str(catalog.titles[i]),
                  "score": round(float(s), 6), "rank": n + 1}
                 for n, (i, s) in enumerate(zip(found[best], scores[best]))]
        return {"item_id": item_id, "items": items, "model_versions": slot.versions}
