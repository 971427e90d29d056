"""POST /similar_items: an item's nearest neighbours in the champion's item index."""
from __future__ import annotations

from typing import Any

from recsys.errors import NotFoundError
from recsys.features import PAD
from recsys.pipeline.resolver import RequestResolver


class SimilarItems:
    def __init__(self, resolver: RequestResolver) -> None:
        self.resolver = resolver

    async def find_similar(self, item_id: str, k: int) -> dict[str, Any]:
        """The k items nearest `item_id` by item vector (itself left out), best first;
        NotFoundError when the champion's catalogue lacks it."""
        slot = self.resolver.champion
        row = slot.item_rows.get(item_id)
        if row is None:
            raise NotFoundError("item_id", f"unknown item id {item_id!r}")
        vectors = slot.embedding.item_vectors
        scores, ids = slot.embedding.index.search(vectors[row][None, :], k + 1)
        keep = (ids[0] > PAD) & (ids[0] != row)
        catalog = slot.catalog
        items = [{"item_id": str(catalog.item_ids[i]), "title": str(catalog.titles[i]),
                  "score": round(float(s), 6), "rank": n + 1}
                 for n, (i, s) in enumerate(zip(ids[0][keep][:k], scores[0][keep][:k]))]
        return {"item_id": item_id, "items": items, "model_versions": slot.versions}
