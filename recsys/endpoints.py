"""The smaller endpoints (similar items, CTR-style ranking, events) over the pipeline's slots."""
from __future__ import annotations

from typing import Any

import numpy as np

from recsys.errors import CacheError
from recsys.features import PAD, Context, user_ranker_inputs
from recsys.pipeline import Recommender
from recsys.request import InvalidRequestError


class Endpoints:
    """The smaller endpoints (similar items, CTR-style ranking, events) over the same slots."""

    def __init__(self, recommender: Recommender) -> None:
        self.r = recommender

    async def similar_items(self, item_id: str, k: int) -> dict[str, Any]:
        slot = self.r.slots["champion"]
        row = slot.item_rows.get(item_id)
        if row is None:
            raise InvalidRequestError("item_id", f"unknown item id {item_id!r}", status=404)
        vectors = slot.embedding.item_vectors
        scores, ids = slot.embedding.index.search(vectors[row][None, :], k + 1)
        keep = (ids[0] > PAD) & (ids[0] != row)
        catalog = slot.embedding.catalog
        items = [{"item_id": str(catalog.item_ids[i]), "title": str(catalog.titles[i]),
                  "score": round(float(s), 6), "rank": n + 1}
                 for n, (i, s) in enumerate(zip(ids[0][keep][:k], scores[0][keep][:k]))]
        return {"item_id": item_id, "items": items, "model_versions": slot.versions}

    async def rank(self, user_id: str, item_ids: tuple[str, ...], context: Context) -> dict[str, Any]:
        variant, slot = self.r.slot_for(user_id)
        rows = self.r.rows(slot, item_ids, "item_ids")
        reasons: list[str] = []
        history, attributes, _ = await self.r.user_state(slot, user_id, rows[:0], reasons)
        user = await self.r.resilient_user_vector(slot, history, attributes, reasons)
        features = user_ranker_inputs(user, history, rows, slot.embedding.item_vectors,
                                      slot.embedding.catalog, context, slot.scaler)
        similarity = (slot.embedding.item_vectors[rows] @ user).astype(np.float32)
        outcome = await slot.ranker.rank(features, similarity)
        if outcome.reason:
            reasons.append(outcome.reason)
        return {"user_id": user_id, "variant": variant, "model_versions": slot.versions,
                "scores": [{"item_id": i, "score": round(float(s), 6)}
                           for i, s in zip(item_ids, outcome.scores)],
                "ranker": outcome.ranker, "degraded": bool(reasons), "degraded_reasons": reasons}

    async def record_event(self, user_id: str, item_id: str, event_type: str,
                           timestamp: float) -> dict[str, Any]:
        slot = self.r.slots["champion"]
        self.r.rows(slot, (item_id,), "item_id")
        if self.r.history is None:
            raise CacheError("no history store configured")
        kept = await self.r.history.append(user_id, item_id, event_type, timestamp)
        invalidated = True
        if self.r.cache is not None:
            try:
                await self.r.cache.bump_user_generation(user_id)
            except CacheError:
                invalidated = False  # this worker's L1 was cleared; other workers' entries expire
        return {"user_id": user_id, "events_kept": kept, "cache_invalidated": invalidated}
